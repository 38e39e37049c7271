"""Selective-scan backward: the chunk-parallel kernel against the sequential one, then the training step.

Part 1, the scan at batch 16, d_inner 256, d_state 16 + 2 polarized, seq 4096 (``ssm_scan_speed.json``'s
shape), fp32, on the path the model runs (``selective_scan`` with the polarized channels in closed
form). First the forward output and every gradient of each configuration are checked against the
chunked PyTorch scan over all 18 states at this shape; a configuration that disagrees (max |diff|
/ max(|ref|, 1) > 1e-3) is recorded with its error and not timed. Then forward, backward alone
(the forward's graph kept, ``autograd.grad`` timed) and forward+backward, each beside the bytes it
must move over a device-to-device copy's bandwidth measured in the same run.

Rows ``fwd_chunk``: the chunk-parallel forward (``ScanBlocks.fwd_chunk``, ``scan_triton_fwdchunk``) at
train_speed's tf16+bwdtm tiles against the same tiles without it; ``fwd_chunk_extra_bytes`` its extra traffic.

Part 2, the MQAR training step (``train_speed``'s Table 2 model, batch 128, the training mixture,
depth 2 and 4): the old step (reference loop, sequential backward) and the CUDA-graph step with the
sequential and with the chunked backward, same step indices; the scan gradients are first checked
at a training shape (batch 32, seq 1024).

    python benchmarks/ssm/scan_bwd_speed.py --out $OUT            # one H100, ~2-4 minutes
    python benchmarks/ssm/scan_bwd_speed.py --smoke --out /tmp/x  # CPU, Triton interpreter, seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TOL = 1e-3  # default --tolerance: max |diff| / max(|ref|, 1), forward output and every gradient (fp32)
# Old kernels: the default tiles and the best of ssm_train_speed.json's sweep (time_first).
OLD = [("time_last", (4, 32, 4), (4, 32, 4)), ("time_first", (8, 32, 8), (8, 32, 4))]
# Chunked backward tiles (BLOCK_D, chunk, warps) after the time_first forward (8, 32, 8): chunk 32
# reads the forward's tile-start states, shorter chunks rebuild their own (scan_triton_bwd, closed
# form). Registers per thread (ptxas, sm_90, 16 states): 241 at (4, 32, 4), 143 at (4, 16, 4), 141 at (8, 8, 4).
NEW = [(4, 32, 4), (4, 16, 4), (8, 8, 4), (2, 32, 2), (8, 32, 8), (8, 16, 4), (2, 16, 2), (4, 8, 2)]  # likeliest first
# The chunk-parallel forward (ScanBlocks.fwd_chunk) at train_speed's tf16+bwdtm tiles (forward (8, 16, 4), time-major
# chunked backward (8, 16, 4)), beside the same without it (None): at batch 16 the whole-sequence forward has 512
# programs of 256 tiles; chunk 256 gives 16x the programs of 16 tiles. Then narrower forward tiles, which the chunks'
# program count allows (sm_90, no z / D in the kernel: (8, 16, 4) 77 registers, 6 programs an SM; (4, 16, 2) 92, 11;
# (4, 8, 1) 96, 21, one warp: no barriers between warps; scan_regs.py); the next tile's reads issued early
# (ScanBlocks.fwd_prefetch) with and without chunks. (forward tiles, fwd_chunk, fwd_prefetch):
FWD_CHUNKS = [((8, 16, 4), None, False), ((8, 16, 4), 256, False), ((8, 16, 4), 128, False),
              ((8, 16, 4), 512, False), ((8, 16, 4), None, True), ((8, 16, 4), 256, True), ((4, 16, 2), 256, False),
              ((4, 8, 1), 256, False)]


def _configs(smoke):
    old = [{"impl": "sequential", "variant": v, "fwd": f, "bwd": b} for v, f, b in OLD]
    new = [{"impl": "chunked", "variant": "time_first", "fwd": (8, 32, 8), "bwd_chunked": (d, t, w)}
           for d, t, w in NEW]
    fc = [{"impl": "chunked", "variant": "time_first", "fwd": f, "bwd_chunked": (8, 16, 4), "bwd_tm": True,
           "fwd_chunk": c, "fwd_prefetch": pf} for f, c, pf in FWD_CHUNKS]
    if smoke:  # chunk 32 (forward states) and 16 (its own); the chunked forward at 2 chunks of seq 40
        return old[:1] + new[:2] + [dict(fc[1], fwd_chunk=32)]
    return old + fc + new  # the fwd_chunk rows before the (already recorded) backward tiles, in the budget


def _apply(cfg):
    from anybudget.ssm.scan_triton import ScanBlocks

    ScanBlocks.bwd_impl, ScanBlocks.variant, ScanBlocks.fwd = cfg["impl"], cfg["variant"], cfg["fwd"]
    ScanBlocks.fwd_chunk, ScanBlocks.bwd_tm = cfg.get("fwd_chunk"), cfg.get("bwd_tm", False)
    ScanBlocks.fwd_prefetch = cfg.get("fwd_prefetch", False)
    ScanBlocks.split_fixed = True
    if cfg["impl"] == "sequential":
        ScanBlocks.bwd = cfg["bwd"]
    else:
        ScanBlocks.bwd_chunked = cfg["bwd_chunked"]


def _model_path(*ins):
    from anybudget.ssm.scan import selective_scan

    return selective_scan(*ins, delta_softplus=True, backend="triton", fixed_channels=(1, 1))


def _rel_errs(ins, grad, ref_out, ref_grads, fn):
    import torch

    leaves = [ins[i] for i in (0, 1, 3, 4, 5, 6, 7)]
    out = fn(*ins)
    grads = torch.autograd.grad(out, leaves, grad)
    errs = {"out": ((out - ref_out).abs().max() / ref_out.abs().max().clamp_min(1.0)).item()}
    for name, a, b in zip(("u", "delta", "B", "C", "D", "z", "delta_bias"), ref_grads, grads):
        errs["d" + name] = ((b - a).abs().max() / a.abs().max().clamp_min(1.0)).item()
    return errs


def _reference(ins, grad, rows=4):
    """The PyTorch scan's output and gradients, ``rows`` batch rows at a time (memory: the chunked
    scan keeps several (batch, d_inner, seq, d_state) tensors); D's and the bias's gradients summed."""
    import torch

    from anybudget.ssm.scan import selective_scan_chunked, selective_scan_ref

    scan = selective_scan_chunked if ins[0].is_cuda else selective_scan_ref
    u, delta, A, B, C, D, z, bias = (t.detach() for t in ins)
    outs, parts = [], []
    for i in range(0, u.shape[0], rows):
        sl = slice(i, i + rows)
        x = [t[sl].clone().requires_grad_() for t in (u, delta, B, C, z)] + [D.clone().requires_grad_(),
                                                                            bias.clone().requires_grad_()]
        out = scan(x[0], x[1], A, x[2], x[3], x[5], x[4], x[6], delta_softplus=True)
        g = torch.autograd.grad(out, x, grad[sl])
        outs.append(out.detach())
        parts.append([t.detach() for t in g])
    cat = [torch.cat([p[k] for p in parts]) for k in range(5)]  # u, delta, B, C, z: batch rows
    add = [torch.stack([p[k] for p in parts]).sum(0) for k in (5, 6)]  # D, delta_bias: shared
    # the order of _rel_errs' leaves: u, delta, B, C, D, z, delta_bias
    return torch.cat(outs), [cat[0], cat[1], cat[2], cat[3], add[0], cat[4], add[1]]


def scan_bytes(b, d, n, seq, block_t, elem=4):
    """(forward, backward) bytes: each tensor read or written once (``scan_bound.traffic_bytes``'s count)."""
    from scan_bound import traffic_bytes

    bdl, bnl = b * d * seq, b * n * seq
    states = b * -(-seq // block_t) * d * n * 4
    bwd = 7 * bdl * elem + 2 * bnl * elem + 2 * bnl * 4 + states
    return traffic_bytes(b, d, n, seq, elem, block_t) - bwd, bwd


def _copy_bw(device, numel):
    import torch

    from anybudget.measure import latency

    x = torch.empty(numel, device=device, dtype=torch.float32)
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / latency(lambda: y.copy_(x), warmup=3, repeat=10).median_s


def scan_part(shape, device, repeat, tol=TOL, budget_s=120.0):
    import torch
    from scan_speed import make_inputs

    from anybudget.measure import latency

    b, d, n_learned, seq = shape
    ins = make_inputs(b, d, seq, n_learned, device)
    grad = torch.randn(b, d, seq, device=device, generator=torch.Generator(device).manual_seed(1))
    ref_out, ref_grads = _reference(ins, grad, rows=4 if device == "cuda" else 1)
    if device == "cuda":
        torch.cuda.empty_cache()
    bw = _copy_bw(device, 2**28 if device == "cuda" else 2**20)
    leaves = [ins[i] for i in (0, 1, 3, 4, 5, 6, 7)]
    # The kernel alone: the 16 learned states straight into selective_scan_triton (no closed-form
    # polarized channels around it), to tell the kernel's time from the split path's PyTorch ops.
    kins = list(ins)
    kins[2] = ins[2][:, 1:-1].contiguous()
    kins[3], kins[4] = (ins[i][:, 1:-1].detach().contiguous().requires_grad_() for i in (3, 4))
    kleaves = [kins[i] for i in (0, 1, 3, 4, 5, 6, 7)]
    rows = []
    t0 = time.perf_counter()
    for cfg in _configs(device != "cuda"):
        _apply(cfg)
        row = dict(cfg)
        if time.perf_counter() - t0 > budget_s:
            rows.append({**row, "skipped": f"past the scan part's {budget_s} s budget"})
            continue
        try:
            row["rel_err"] = errs = _rel_errs(ins, grad, ref_out, ref_grads, _model_path)
        except Exception as e:  # noqa: BLE001 - a tile that does not compile or fit is recorded
            row["error"] = repr(e)[:300]
            rows.append(row)
            continue
        if not all(v <= tol for v in errs.values()):  # NaN fails too
            row["refused"] = f"disagrees with the reference (tolerance {tol}): not timed"
            rows.append(row)
            print("REFUSED", row, flush=True)
            continue
        out = _model_path(*ins)
        def bwd(out=out):
            return torch.autograd.grad(out, leaves, grad, retain_graph=True)

        def fwd_bwd():
            return torch.autograd.grad(_model_path(*ins), leaves, grad)

        with torch.no_grad():
            row["fwd_s"] = latency(lambda: _model_path(*ins), warmup=0 if device == "cpu" else 2, repeat=repeat).median_s
        row["bwd_s"] = latency(bwd, warmup=0 if device == "cpu" else 2, repeat=repeat).median_s
        row["fwd_bwd_s"] = latency(fwd_bwd, warmup=0 if device == "cpu" else 2, repeat=repeat).median_s
        del out
        from anybudget.ssm.scan_triton import selective_scan_triton

        kout = selective_scan_triton(*kins, delta_softplus=True)
        row["kernel_bwd_s"] = latency(lambda kout=kout: torch.autograd.grad(kout, kleaves, grad, retain_graph=True),
                                      warmup=0 if device == "cpu" else 2, repeat=repeat).median_s
        del kout
        row["kernel_bytes_bwd"] = kb = scan_bytes(b, d, n_learned, seq, cfg["fwd"][1])[1]
        row["kernel_bwd_x_over_bound"] = row["kernel_bwd_s"] / (kb / bw)
        fb, bb = scan_bytes(b, d, n_learned + 2, seq, cfg["fwd"][1])  # states at the forward's tiles
        if cfg.get("fwd_chunk"):  # what the chunked forward moves beyond the whole-sequence one (16 states in it)
            from anybudget.ssm.scan_triton_fwdchunk import extra_bytes

            row["fwd_chunk_extra_bytes"] = extra_bytes(b, d, n_learned, seq, cfg["fwd_chunk"])
        row.update(bytes_fwd=fb, bytes_bwd=bb, bound_bwd_s=bb / bw, bound_fwd_bwd_s=(fb + bb) / bw,
                   bwd_x_over_bound=row["bwd_s"] / (bb / bw), fwd_bwd_x_over_bound=row["fwd_bwd_s"] / ((fb + bb) / bw))
        rows.append(row)
        keys = ("impl", "variant", "fwd", "fwd_chunk", "fwd_prefetch", "fwd_s", "bwd_s", "kernel_bwd_s", "fwd_bwd_s")
        print("scan", {k: row[k] for k in keys if k in row},
              row.get("bwd", row.get("bwd_chunked")), flush=True)
    timed = [r for r in rows if "bwd_s" in r]
    res = {"shape": {"batch": b, "d_inner": d, "d_state": n_learned + 2, "seq": seq},
           "measured_copy_bw_Bps": bw, "tolerance": tol, "rows": rows}
    for impl in ("sequential", "chunked"):
        mine = [r for r in timed if r["impl"] == impl]
        if mine:
            res["best_" + impl] = min(mine, key=lambda r: r["bwd_s"])
    fc = {f"{r['fwd']}:{r['fwd_chunk']}" + (":prefetch" if r["fwd_prefetch"] else ""):
          {k: r[k] for k in ("fwd_s", "fwd_bwd_s")} for r in timed if "fwd_chunk" in r}
    if fc:  # the chunked forward against the (8, 16, 4) tiles without it ("(8, 16, 4):None")
        res["fwd_chunk"] = fc
    if "best_sequential" in res and "best_chunked" in res:
        res["bwd_speedup"] = res["best_sequential"]["bwd_s"] / res["best_chunked"]["bwd_s"]
        res["fwd_bwd_speedup"] = res["best_sequential"]["fwd_bwd_s"] / res["best_chunked"]["fwd_bwd_s"]
    return res


def train_part(args, device):
    """Old step vs the CUDA-graph step with each backward; gradients checked at a training shape first."""
    import torch
    from scan_speed import make_inputs
    from train_speed import time_mode

    from anybudget.ssm.mqar import TRAIN_MIXTURE, MQARSegment

    out = {"check": {}, "steps": []}
    small = args.smoke
    b, seq = (2, 40) if small else (32, 1024)
    ins = make_inputs(b, 4 if small else 256, seq, 4 if small else 16, device)
    grad = torch.randn_like(ins[0])
    ref = _reference(ins, grad, rows=4 if device == "cuda" else 1)
    ok = {}
    for cfg in _configs(small):
        _apply(cfg)
        errs = _rel_errs(ins, grad, *ref, _model_path)
        key = cfg["impl"] + ":" + str(cfg.get("bwd_chunked", cfg.get("bwd"))) + (
            f":fwd_chunk{cfg['fwd_chunk']}" if cfg.get("fwd_chunk") else "")
        out["check"][key] = errs
        ok[cfg["impl"]] = ok.get(cfg["impl"], True) and all(v <= args.tolerance for v in errs.values())
    del ins, grad, ref
    segments = (MQARSegment(32, 100, 2), MQARSegment(64, 50, 4)) if small else TRAIN_MIXTURE
    ns = argparse.Namespace(d_model=16 if small else 128, vocab=96 if small else 8192, batch=4 if small else 128,
                            steps=args.train_steps, compile_backend="eager" if small else "inductor")
    mode = "eager" if small else "cudagraph"
    plans = [("reference", {"impl": "sequential", "variant": "time_last", "fwd": (4, 32, 4), "bwd": (4, 32, 4)}, False)]
    plans += [(mode, {"impl": "sequential", "variant": "time_first", "fwd": (8, 32, 8), "bwd": (8, 32, 4)}, True),
              (mode, {"impl": "chunked", "variant": "time_first", "fwd": (8, 32, 8),
                      "bwd_chunked": args.train_chunked}, True)]
    for layers in args.depths:
        for m, cfg, split in plans:
            if time.perf_counter() - args.t0 > args.time_limit:
                out["steps"].append({"mode": m, "layers": layers, "impl": cfg["impl"],
                                     "skipped": f"past --time-limit {args.time_limit} s"})
                continue
            if not ok.get(cfg["impl"], False):
                out["steps"].append({"mode": m, "layers": layers, "impl": cfg["impl"], "refused": "gradient check failed"})
                continue
            tiles = (cfg["fwd"], cfg.get("bwd") or cfg["bwd_chunked"])  # set_scan: bwd tiles serve either backward
            row = time_mode(m, layers, ns, device, segments, cfg["variant"], split, tiles, cfg["impl"])
            row.update(impl=cfg["impl"])
            out["steps"].append(row)
            print("step", row, flush=True)
        per = {(r["mode"], r["impl"]): r["step_s"] for r in out["steps"] if r["layers"] == layers and "step_s" in r}
        old = per.get(("reference", "sequential"))
        if old:
            out[f"L{layers}"] = {f"{m}/{i}": {"step_s": s, "speedup_vs_old_step": old / s} for (m, i), s in per.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny shapes, seconds")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--time-limit", type=float, default=240.0, help="seconds after which step timings are skipped")
    ap.add_argument("--tolerance", type=float, default=TOL, help="largest relative error a timed kernel may have")
    args = ap.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the scan kernels are first imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    from anybudget.io import write_results

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("needs CUDA (or --smoke)", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    args.depths = [2] if args.smoke else [2, 4]
    args.train_chunked = (4, 32, 4)
    if args.smoke:
        args.seq, args.repeat, args.train_steps = 40, 1, 2
    t0 = args.t0 = time.perf_counter()
    shape = (2, 4, 4, args.seq) if args.smoke else (16, 256, 16, args.seq)
    metrics = {"scan": scan_part(shape, device, args.repeat, args.tolerance)}
    best = metrics["scan"].get("best_chunked")
    if best:
        args.train_chunked = best["bwd_chunked"]
    if not args.skip_train:
        metrics["train"] = train_part(args, device)
    metrics["wall_s"] = time.perf_counter() - t0
    config = {"scan_shape": metrics["scan"]["shape"], "dtype": "float32", "tolerance": args.tolerance,
              "timing": "median of CUDA-event timed calls (anybudget.measure.latency); bwd = autograd.grad on a kept graph",
              "bound": "bytes each tensor must move once / device-to-device copy bandwidth measured in this run",
              "train": "train_speed.time_mode: MQAR Table 2 model, batch 128, training mixture", "smoke": args.smoke,
              "device": device}
    path = write_results("ssm_scan_bwd" + ("_smoke" if args.smoke else ""), config, metrics, out_dir=args.out)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
