"""Selective-scan speed: Triton forward+backward vs the PyTorch scans (and mamba_ssm if present).

Shape: batch 16, d_inner 256, d_state 16 + 2 polarized (exact form), seq 1024 and 4096, fp32.
First sweeps the Triton tile sizes at seq 1024 and keeps the fastest, then times every backend at
both lengths and writes ratios. Run on a CUDA machine:

    PYTHONPATH=src python benchmarks/ssm/scan_speed.py --out benchmarks/results/ssm
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch


def make_inputs(bsz, d, seq, n_learned, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=device)
    A_learned = -torch.arange(1, n_learned + 1, device=device, dtype=torch.float32).repeat(d, 1)
    A = torch.cat([torch.zeros(d, 1, device=device), A_learned,
                   torch.full((d, 1), float("-inf"), device=device)], 1)
    n = n_learned + 2
    u, delta, z = r(bsz, d, seq), r(bsz, d, seq) * 0.5 - 2.0, r(bsz, d, seq)
    B, C = r(bsz, n, seq), r(bsz, n, seq)
    D, bias = r(d), r(d) * 0.1
    leaves = [u, delta, B, C, D, z, bias]
    for t in leaves:
        t.requires_grad_()
    return u, delta, A, B, C, D, z, bias


def fwd_bwd(fn, ins, grad):
    u, delta, A, B, C, D, z, bias = ins
    out = fn(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    torch.autograd.grad(out, [u, delta, B, C, D, z, bias], grad)


def fwd_only(fn, ins):
    with torch.no_grad():
        fn(*ins, delta_softplus=True)


def timeit(f, warmup, repeat):
    from anybudget.measure import latency

    t = latency(f, warmup=warmup, repeat=repeat)
    return t.median_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from anybudget.io import results_dir

    ap.add_argument("--out", default=str(results_dir("ssm_scan_speed")))
    ap.add_argument("--seqs", default="1024,4096")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--d-inner", type=int, default=256)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--ref-max-seq", type=int, default=4096, help="skip the sequential loop above this length")
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    from anybudget.io import write_results
    from anybudget.ssm.scan import selective_scan_chunked, selective_scan_ref
    from anybudget.ssm.scan_triton import ScanBlocks, selective_scan_triton

    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda"
    seqs = [int(s) for s in args.seqs.split(",")]
    metrics: dict = {"sweep": [], "by_seq": {}}

    # Tile sweep at the first length: forward configs alone, then backward configs (same tile T
    # as the chosen forward so no state recompute), fastest wins.
    ins = make_inputs(args.batch, args.d_inner, seqs[0], args.d_state, dev)
    grad = torch.randn(args.batch, args.d_inner, seqs[0], device=dev)
    ref_out = selective_scan_chunked(*[t.detach() for t in ins], delta_softplus=True)
    best_f, best_b = ScanBlocks.fwd, ScanBlocks.bwd
    if not args.no_sweep:
        best_t = None
        for T in (16, 32, 64):
            for bd, w in itertools.product((4, 8), (4,)):
                ScanBlocks.fwd = (bd, T, w)
                try:
                    t = timeit(lambda: fwd_only(selective_scan_triton, ins), 2, 10)
                except Exception as e:  # a tile that does not fit (registers / shared memory)
                    metrics["sweep"].append({"kind": "fwd", "cfg": ScanBlocks.fwd, "error": repr(e)[:200]})
                    continue
                metrics["sweep"].append({"kind": "fwd", "cfg": ScanBlocks.fwd, "s": t})
                print("fwd", ScanBlocks.fwd, f"{t * 1e3:.3f} ms", flush=True)
                if best_t is None or t < best_t:
                    best_t, best_f = t, ScanBlocks.fwd
        ScanBlocks.fwd = best_f
        best_t = None
        for bd, w in itertools.product((2, 4, 8), (4, 8)):
            ScanBlocks.bwd = ScanBlocks.bwd_chunked = (bd, best_f[1], w)  # whichever backward runs
            try:
                t = timeit(lambda: fwd_bwd(selective_scan_triton, ins, grad), 2, 10)
            except Exception as e:
                metrics["sweep"].append({"kind": "fwd+bwd", "cfg": ScanBlocks.bwd, "error": repr(e)[:200]})
                continue
            metrics["sweep"].append({"kind": "fwd+bwd", "cfg": ScanBlocks.bwd, "s": t})
            print("fwd+bwd", ScanBlocks.bwd, f"{t * 1e3:.3f} ms", flush=True)
            if best_t is None or t < best_t:
                best_t, best_b = t, ScanBlocks.bwd
    ScanBlocks.fwd, ScanBlocks.bwd = best_f, best_b
    ScanBlocks.bwd_chunked = best_b
    metrics["triton_blocks"] = {"fwd": best_f, "bwd": best_b, "bwd_impl": ScanBlocks.bwd_impl}
    err = (selective_scan_triton(*[t.detach() for t in ins], delta_softplus=True) - ref_out).abs().max().item()
    metrics["max_abs_err_vs_chunked_seq%d" % seqs[0]] = err
    del ins, grad, ref_out
    torch.cuda.empty_cache()

    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_fn
    except Exception as e:  # not installed here: record why
        mamba_fn = None
        metrics["mamba_ssm"] = f"not available: {type(e).__name__}"

    for seq in seqs:
        ins = make_inputs(args.batch, args.d_inner, seq, args.d_state, dev)
        grad = torch.randn(args.batch, args.d_inner, seq, device=dev)
        row = {}
        row["triton_fwd_bwd_s"] = timeit(lambda: fwd_bwd(selective_scan_triton, ins, grad), 3, 20)
        row["triton_fwd_s"] = timeit(lambda: fwd_only(selective_scan_triton, ins), 3, 20)
        torch.cuda.empty_cache()
        try:
            row["chunked_fwd_bwd_s"] = timeit(lambda: fwd_bwd(selective_scan_chunked, ins, grad), 1, 5)
            row["chunked_fwd_s"] = timeit(lambda: fwd_only(selective_scan_chunked, ins), 1, 5)
        except torch.cuda.OutOfMemoryError:
            row["chunked_fwd_bwd_s"] = None
        torch.cuda.empty_cache()
        if seq <= args.ref_max_seq:
            t0 = time.perf_counter()
            row["ref_fwd_bwd_s"] = timeit(lambda: fwd_bwd(selective_scan_ref, ins, grad), 1, 2)
            print(f"ref seq {seq}: {time.perf_counter() - t0:.1f}s total", flush=True)
        if mamba_fn is not None:
            Ae = ins[2].clone()
            Ae[:, -1] = -1e4  # mamba_ssm has no exact A-bar = 0; -1e4 underflows to 0 for dt > 0.01
            mins = (ins[0], ins[1], Ae) + tuple(ins[3:])
            row["mamba_ssm_fwd_bwd_s"] = timeit(lambda: fwd_bwd(mamba_fn, mins, grad), 3, 20)
        for k in ("chunked_fwd_bwd_s", "ref_fwd_bwd_s", "mamba_ssm_fwd_bwd_s"):
            if row.get(k):
                row["speedup_triton_vs_" + k.replace("_fwd_bwd_s", "")] = row[k] / row["triton_fwd_bwd_s"]
        metrics["by_seq"][str(seq)] = row
        print(seq, json.dumps(row), flush=True)
        del ins, grad
        torch.cuda.empty_cache()

    config = {"batch": args.batch, "d_inner": args.d_inner, "d_state": f"{args.d_state}+2 (one, zero; exact)",
              "seqs": seqs, "dtype": "float32", "timing": "median of CUDA-event timed calls (anybudget.measure.latency)"}
    path = write_results("ssm_scan_speed", config, metrics, out_dir=args.out)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
