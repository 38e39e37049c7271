"""The chunked backward with the Gluon grads kernel (``ScanBlocks.bwd_gluon``) against the time-major Triton one.

Both on the path the model runs (``selective_scan`` with the polarized channels in closed form, 16
learned states in the kernels), time_first forward (8, 16, 4), time-major adjoint; only the grads
kernel differs. Every configuration's output and gradients are first checked against the chunked
PyTorch scan (``scan_bwd_speed._reference``); one that disagrees (max |diff| / max(|ref|, 1) > 1e-3)
is recorded and not timed.

Part 1, the scan at batch 16, d_inner 256, seq 4096 (issue 17's shape): forward, backward and
forward+backward, each beside its memory-traffic bound (``scan_bwd_speed.scan_bytes`` over a
device-to-device copy's bandwidth measured in the same run), and the kernels of a forward+backward under
the profiler (where the time beyond the bound goes); then the time-major and the Gluon (capped at 168
registers) configurations under ``torch.compile``, the scan as the custom op and the closed-form
channels fused around it, as the training step runs it.

Part 2, the MQAR step's shapes: batch 128, d_inner 256, each sequence length of the training mixture;
the backward alone per length and its mean weighted by the mixture's examples (what one step's
scan backward costs a layer on average).

    python benchmarks/ssm/grads_gluon_speed.py --out $OUT     # one H100, ~1-2 minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# (name, bwd_chunked tiles, ScanBlocks extras): the time-major Triton grads kernel, then the Gluon one.
CONFIGS = [("triton_tm", (8, 16, 4), {}),
           ("gluon", (8, 16, 4), {"bwd_gluon": True}),
           ("gluon42", (4, 16, 2), {"bwd_gluon": True}),
           ("gluon_reg168", (8, 16, 4), {"bwd_gluon": True, "bwd_maxnreg": 168})]
TOL = 1e-3


def _apply(tiles, extras):
    """time_first forward (8, 16, 4), polarized channels split off, chunked backward at ``tiles`` with the time-major
    adjoint, ``extras`` on top (train_speed's ``SCAN_DEFAULTS`` for every other ScanBlocks setting)."""
    from train_speed import set_scan

    set_scan("time_first", True, ((8, 16, 4), tiles), "chunked", {"bwd_tm": True, **extras})


def _time_shape(b, seq, repeat, bw, with_fwd):
    import torch
    from scan_bwd_speed import _model_path, _reference, _rel_errs, scan_bytes
    from scan_speed import make_inputs

    from anybudget.measure import latency

    ins = make_inputs(b, 256, seq, 16, "cuda")
    grad = torch.randn(b, 256, seq, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    ref_out, ref_grads = _reference(ins, grad, rows=4)
    torch.cuda.empty_cache()
    leaves = [ins[i] for i in (0, 1, 3, 4, 5, 6, 7)]
    fb, bb = scan_bytes(b, 256, 18, seq, 16)
    rows = {}
    for name, tiles, extras in CONFIGS:
        _apply(tiles, extras)
        row = {"tiles": tiles, **extras}
        try:
            row["rel_err"] = errs = _rel_errs(ins, grad, ref_out, ref_grads, _model_path)
        except Exception as e:  # noqa: BLE001 - a config that does not compile or launch is recorded
            rows[name] = {**row, "error": repr(e)[:300]}
            print("ERROR", name, rows[name], flush=True)
            continue
        if not all(v <= TOL for v in errs.values()):
            rows[name] = {**row, "refused": f"disagrees with the reference (tolerance {TOL}): not timed"}
            print("REFUSED", name, rows[name], flush=True)
            continue
        out = _model_path(*ins)
        row["bwd_s"] = latency(lambda out=out: torch.autograd.grad(out, leaves, grad, retain_graph=True),
                               warmup=3, repeat=repeat).median_s
        del out
        if with_fwd:
            with torch.no_grad():
                row["fwd_s"] = latency(lambda: _model_path(*ins), warmup=3, repeat=repeat).median_s
            row["fwd_bwd_s"] = latency(lambda: torch.autograd.grad(_model_path(*ins), leaves, grad), warmup=3,
                                       repeat=repeat).median_s
            row.update(bound_bwd_s=bb / bw, bound_fwd_bwd_s=(fb + bb) / bw,
                       fwd_bwd_x_over_bound=row["fwd_bwd_s"] / ((fb + bb) / bw))
        row["bwd_x_over_bound"] = row["bwd_s"] / (bb / bw)
        if with_fwd:  # where the forward + backward's time goes: every kernel of 3 calls under the profiler
            from anybudget.measure import kernel_times

            top, kernel_us, count = kernel_times(lambda: torch.autograd.grad(_model_path(*ins), leaves, grad),
                                                 steps=3, top=12)
            row.update(kernels_per_call=count, kernel_ms_per_call=kernel_us / 1e3,
                       top_kernels=[{"kernel": k["kernel"][:80], "calls_per_call": k["calls_per_step"],
                                     "us_per_call": round(k["us_per_step"], 1)} for k in top])
        rows[name] = row
        print(b, seq, name, {k: v for k, v in row.items() if k.endswith("_s") or k.endswith("bound")}, flush=True)
    res = {"shape": {"batch": b, "d_inner": 256, "d_state": 18, "seq": seq}, "bytes_fwd": fb, "bytes_bwd": bb,
           "rows": rows}
    if with_fwd:
        res["compiled"] = _compiled_rows(ins, grad, ref_out, ref_grads, leaves, repeat, (fb + bb) / bw)
    return res


def _compiled_rows(ins, grad, ref_out, ref_grads, leaves, repeat, bound_s):
    """The same path under ``torch.compile(fullgraph=True)``, as the training step runs it: the scan as the custom
    op (``scan_op``), the closed-form polarized channels and casts around it fused by inductor instead of the
    eager PyTorch kernels; forward+backward time, its x over the bound and its kernels."""
    import torch
    from scan_bwd_speed import _rel_errs

    from anybudget.measure import kernel_times, latency
    from anybudget.ssm.scan import selective_scan

    rows = {}
    for name, tiles, extras in (c for c in CONFIGS if c[0] in ("triton_tm", "gluon_reg168")):
        _apply(tiles, extras)
        torch._dynamo.reset()
        fn = torch.compile(lambda *x: selective_scan(*x, delta_softplus=True, fixed_channels=(1, 1)), fullgraph=True)
        row = {"tiles": tiles, **extras}
        try:
            row["rel_err"] = errs = _rel_errs(ins, grad, ref_out, ref_grads, fn)
        except Exception as e:  # noqa: BLE001 - recorded, not timed
            rows[name] = {**row, "error": repr(e)[:300]}
            continue
        if not all(v <= TOL for v in errs.values()):
            rows[name] = {**row, "refused": f"disagrees with the reference (tolerance {TOL}): not timed"}
            continue
        step = lambda: torch.autograd.grad(fn(*ins), leaves, grad)  # noqa: E731
        row["fwd_bwd_s"] = latency(step, warmup=3, repeat=repeat).median_s
        row["fwd_bwd_x_over_bound"] = row["fwd_bwd_s"] / bound_s
        top, kernel_us, count = kernel_times(step, steps=3, top=12)
        row.update(kernels_per_call=count, kernel_ms_per_call=kernel_us / 1e3,
                   top_kernels=[{"kernel": k["kernel"][:80], "calls_per_call": k["calls_per_step"],
                                 "us_per_call": round(k["us_per_step"], 1)} for k in top])
        rows[name] = row
        print("compiled", name, {k: v for k, v in row.items() if k.endswith("_s") or "x_over" in k}, flush=True)
    return rows


def gluon_bench_args(script, record, doc, argv, configs=None):
    """``--out`` (default: ``record``'s results folder) and ``--repeat`` of a Gluon benchmark, checked before any work
    (``argparse`` error: one line, exit 2); None without CUDA, said in one line on stderr (Gluon kernels have no CPU
    interpreter). ``configs``: the script's configuration names, for ``--configs`` (a subset; default all)."""
    from anybudget.io import results_dir

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default=str(results_dir(record)))
    ap.add_argument("--repeat", type=int, default=30)
    if configs is not None:
        ap.add_argument("--configs", nargs="+", default=list(configs), metavar="NAME",
                        help=f"which configurations to run (default all): {', '.join(configs)}")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat {args.repeat}: must be >= 1 (timed calls per configuration)")
    unknown = [c for c in getattr(args, "configs", ()) if c not in configs]
    if unknown:
        ap.error(f"--configs {' '.join(unknown)}: unknown; allowed: {', '.join(configs)}")
    try:  # before minutes of measuring: the record must have somewhere to go
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--out {args.out}: cannot create it ({e.strerror})")
    import torch

    if not torch.cuda.is_available():
        print(f"{script} needs CUDA (Gluon kernels have no CPU interpreter)", file=sys.stderr)
        return None
    return args


def main(argv=None) -> int:
    from anybudget.io import write_results

    args = gluon_bench_args("grads_gluon_speed", "ssm_grads_gluon", __doc__, argv)
    if args is None:
        return 2
    from scan_bwd_speed import _copy_bw

    from anybudget.ssm.mqar import TRAIN_MIXTURE

    t0 = time.perf_counter()
    bw = _copy_bw("cuda", 2**28)
    scan = _time_shape(16, 4096, args.repeat, bw, with_fwd=True)
    weights = {}
    for s in TRAIN_MIXTURE:
        weights[s.seq_len] = weights.get(s.seq_len, 0) + s.num_examples
    total = sum(weights.values())
    step = {"weights": {str(k): v / total for k, v in weights.items()}, "per_seq": {}}
    for seq in sorted(weights):
        step["per_seq"][str(seq)] = _time_shape(128, seq, args.repeat, bw, with_fwd=False)
    for name, _, _ in CONFIGS:
        ts = [(weights[s] / total, step["per_seq"][str(s)]["rows"][name].get("bwd_s")) for s in sorted(weights)]
        if all(t is not None for _, t in ts):
            step.setdefault("weighted_bwd_s", {})[name] = sum(w * t for w, t in ts)
    base = step.get("weighted_bwd_s", {}).get("triton_tm")
    if base:
        step["saving_per_layer_s"] = {n: base - t for n, t in step["weighted_bwd_s"].items()}
    config = {"path": "selective_scan, polarized channels in closed form (16 learned states in the kernels)",
              "forward": "time_first (8, 16, 4)", "adjoint": "time-major", "configs": CONFIGS, "tolerance": TOL,
              "repeat": args.repeat, "measured_copy_bw_Bps": bw}
    path = write_results("ssm_grads_gluon", config, {"scan_4096": scan, "step_shapes": step,
                                                     "wall_s": time.perf_counter() - t0}, out_dir=args.out)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
