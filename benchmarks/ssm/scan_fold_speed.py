"""The scan's forward + backward with the polarized channels folded into its kernels (``ScanBlocks.fold_fixed``),
beside its memory-traffic bound, at issue 17's shape (batch 16, d_inner 256, 16 learned + 2 polarized states,
seq 4096).

Configurations (all time_first forward (8, 16, 4), chunked backward with the time-major adjoint; backward tiles
(8, 16, 4) unless named ``42``: (4, 16, 2)):

* ``split_gluon168``: the closed form in PyTorch ops around the kernels (``scan_split``), Gluon grads kernel capped
  at 168 registers: ``ssm_grads_gluon.json``'s fastest, the baseline;
* ``fold_gluon168``: the same kernels with the closed form, D and z inside them (the gate's backward in the
  adjoint kernel, from the forward's y before the gate);
* ``fold_gluon168_pf``: and the forward reading the next tile before this tile's arithmetic (``fwd_prefetch``);
* ``fold_gluon42r200_pf``: (4, 16, 2) grads tiles capped at 200 registers, the adjoint's own (8, 4) tiles;
* ``fold_tm_pf``: folded, prefetching, the time-major Triton grads kernel.

Each is first checked against the chunked PyTorch scan (``scan_bwd_speed._reference``; max |diff| / max(|ref|, 1)
<= 1e-3, else recorded and not timed), then timed three ways, forward + backward (``autograd.grad`` of the output):
eager; under ``torch.compile(fullgraph=True)`` (the scan as the custom op, as the training step runs it); and that
compiled call captured in one CUDA graph and replayed (the training step captures its whole step the same way,
``fast_step``: no host time between kernels). The bound: ``scan_bwd_speed.scan_bytes`` (u, delta, z, B, C, out and
their gradients, the tile-start states, each once) over a device-to-device copy's bandwidth measured in the same
run. The compiled call's kernels are profiled (where the time beyond the bound goes).

    python benchmarks/ssm/scan_fold_speed.py --out $OUT     # one H100, ~2-3 minutes
"""

from __future__ import annotations

import sys
import time

BASE = {"bwd_tm": True, "bwd_gluon": True, "bwd_maxnreg": 168}
T84, T42 = (8, 16, 4), (4, 16, 2)
CONFIGS = [("split_gluon168", T84, BASE),
           ("fold_gluon168", T84, {**BASE, "fold_fixed": True}),
           ("fold_gluon168_pf", T84, {**BASE, "fold_fixed": True, "fwd_prefetch": True}),
           ("fold_gluon42r200_pf", T42, {**BASE, "bwd_maxnreg": 200, "bwd_adjoint": (8, 4), "fold_fixed": True,
                                         "fwd_prefetch": True}),
           ("fold_tm_pf", T84, {"bwd_tm": True, "fold_fixed": True, "fwd_prefetch": True}),
           ("fold_gluon168_pf_s23", T84, {**BASE, "fold_fixed": True, "fwd_prefetch": True,
                                          "gluon_flags": {"SEED": False, "BC_SMEM": False}}),
           ("fold_gluon200_pf_bpf", T84, {**BASE, "bwd_maxnreg": 200, "fold_fixed": True, "fwd_prefetch": True,
                                          "bwd_prefetch": True}),
           ("fold_gluon168_pf_async", T84, {**BASE, "fold_fixed": True, "fwd_prefetch": True, "bwd_prefetch": "async"}),
           *[(f"fold_gluon168_pf_async_adj{a}{w}", T84, {**BASE, "fold_fixed": True, "fwd_prefetch": True,
                                                        "bwd_prefetch": "async", "bwd_adjoint": (a, w)})
             for a, w in ((16, 2), (16, 4), (32, 8))],
           ("fold_gluon168_pf_async_carry16", T84, {**BASE, "fold_fixed": True, "fwd_prefetch": True,
                                                    "bwd_prefetch": "async", "carry_tiles": (16, 128, 1, True)})]
TOL = 1e-3
SHAPE = (16, 256, 4096)  # batch, d_inner, seq; 16 learned states + one 1- and one 0-polarized


_MODULE_DEFAULTS = {}  # the two module settings' own values, taken before the first config changes them


def _apply(tiles, extras):
    from train_speed import set_scan

    from anybudget.ssm import scan_gluon_bwd, scan_triton_bwd

    extras = dict(extras)  # two module settings besides ScanBlocks': the Gluon kernel's flags, the carry's tiles
    _MODULE_DEFAULTS.setdefault("gluon_flags", dict(scan_gluon_bwd.GRADS_FLAGS))
    _MODULE_DEFAULTS.setdefault("carry_tiles", scan_triton_bwd.CARRY_TILES)
    scan_gluon_bwd.GRADS_FLAGS.update({**_MODULE_DEFAULTS["gluon_flags"], **extras.pop("gluon_flags", {})})
    scan_triton_bwd.CARRY_TILES = extras.pop("carry_tiles", _MODULE_DEFAULTS["carry_tiles"])
    set_scan("time_first", True, ((8, 16, 4), tiles), "chunked", extras)


def _kernels(step):
    from anybudget.measure import kernel_times

    top, kernel_us, count = kernel_times(step, steps=3, top=12)
    return {"kernels_per_call": count, "kernel_ms_per_call": kernel_us / 1e3,
            "top_kernels": [{"kernel": k["kernel"][:80], "calls_per_call": k["calls_per_step"],
                             "us_per_call": round(k["us_per_step"], 1)} for k in top]}


def measure(repeat, names=None):
    import torch
    from scan_bwd_speed import _copy_bw, _reference, _rel_errs, scan_bytes
    from scan_speed import make_inputs

    from anybudget.cudagraph import capture
    from anybudget.measure import latency
    from anybudget.ssm.scan import selective_scan

    b, d, seq = SHAPE
    bw = _copy_bw("cuda", 2**28)
    ins = make_inputs(b, d, seq, 16, "cuda")
    grad = torch.randn(b, d, seq, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    ref_out, ref_grads = _reference(ins, grad, rows=4)
    torch.cuda.empty_cache()
    leaves = [ins[i] for i in (0, 1, 3, 4, 5, 6, 7)]
    fb, bb = scan_bytes(b, d, 18, seq, 16)
    bound = (fb + bb) / bw

    def eager(*x):
        return selective_scan(*x, delta_softplus=True, backend="triton", fixed_channels=(1, 1))

    rows = {}
    for name, tiles, extras in CONFIGS:
        if names is not None and name not in names:
            continue
        _apply(tiles, extras)
        torch._dynamo.reset()
        compiled = torch.compile(lambda *x: selective_scan(*x, delta_softplus=True, fixed_channels=(1, 1)),
                                 fullgraph=True)
        row = {"bwd_tiles": tiles, "settings": extras}
        try:
            row["rel_err"] = {"eager": _rel_errs(ins, grad, ref_out, ref_grads, eager),
                              "compiled": _rel_errs(ins, grad, ref_out, ref_grads, compiled)}
        except Exception as e:  # noqa: BLE001 - a config that does not compile or launch is recorded
            rows[name] = {**row, "error": repr(e)[:300]}
            print("ERROR", name, rows[name], flush=True)
            continue
        worst = max(v for errs in row["rel_err"].values() for v in errs.values())
        if not worst <= TOL:
            rows[name] = {**row, "refused": f"disagrees with the reference (tolerance {TOL}): not timed"}
            print("REFUSED", name, rows[name], flush=True)
            continue
        for kind, fn in (("eager", eager), ("compiled", compiled)):
            row[f"{kind}_fwd_bwd_s"] = latency(lambda fn=fn: torch.autograd.grad(fn(*ins), leaves, grad), warmup=3,
                                               repeat=repeat).median_s
        held = []

        def step():
            held[:] = torch.autograd.grad(compiled(*ins), leaves, grad)

        graph = capture(step, warmup=2)
        graph.replay()
        torch.cuda.synchronize()
        errs = {"d" + n: ((g - r).abs().max() / r.abs().max().clamp_min(1.0)).item()
                for n, g, r in zip(("u", "delta", "B", "C", "D", "z", "delta_bias"), held, ref_grads)}
        row["rel_err"]["captured"] = errs  # the replayed graph's gradients, against the reference too
        if not max(errs.values()) <= TOL:
            rows[name] = {**row, "refused": f"the captured replay disagrees with the reference (tolerance {TOL})"}
            print("REFUSED", name, rows[name], flush=True)
            continue
        row["captured_fwd_bwd_s"] = latency(graph.replay, warmup=3, repeat=repeat).median_s
        del graph
        held.clear()
        for kind in ("eager", "compiled", "captured"):
            row[f"{kind}_x_over_bound"] = row[f"{kind}_fwd_bwd_s"] / bound
        row["compiled_kernels"] = _kernels(lambda: torch.autograd.grad(compiled(*ins), leaves, grad))
        rows[name] = row
        print(name, {k: round(v * 1e3, 3) if k.endswith("_s") else round(v, 2) for k, v in row.items()
                     if k.endswith("_s") or k.endswith("bound")}, flush=True)
    base = rows.get("split_gluon168", {}).get("captured_fwd_bwd_s")
    for row in rows.values():
        if base and "captured_fwd_bwd_s" in row:
            row["captured_speedup_vs_split"] = base / row["captured_fwd_bwd_s"]
    return {"shape": {"batch": b, "d_inner": d, "d_state": 18, "learned": 16, "seq": seq}, "bytes_fwd": fb,
            "bytes_bwd": bb, "bound_fwd_bwd_s": bound, "target_s": 5 * bound, "measured_copy_bw_Bps": bw,
            "rows": rows}


def main(argv=None) -> int:
    from grads_gluon_speed import gluon_bench_args

    from anybudget.io import write_results

    args = gluon_bench_args("scan_fold_speed", "ssm_scan_fold", __doc__, argv, configs=[c[0] for c in CONFIGS])
    if args is None:
        return 2
    t0 = time.perf_counter()
    metrics = measure(args.repeat, args.configs)
    metrics["wall_s"] = time.perf_counter() - t0
    config = {"path": "selective_scan(fixed_channels=(1, 1)), time_first forward (8, 16, 4), chunked backward "
                      "(tiles per config), time-major adjoint", "configs": CONFIGS, "tolerance": TOL, "repeat": args.repeat,
              "timing": "median of CUDA-event timed calls of autograd.grad(scan(...)); captured: the compiled call "
                        "in one CUDA graph, replayed",
              "bound": "scan_bwd_speed.scan_bytes (each tensor once, tile-start states at tile 16) / measured copy "
                       "bandwidth"}
    path = write_results("ssm_scan_fold", config, metrics, out_dir=args.out)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
