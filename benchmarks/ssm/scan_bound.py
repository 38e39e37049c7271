"""The Triton selective scan's forward+backward time beside its memory-traffic bound (CUDA only).

Used by ``train_speed.py``. Shape: batch 16, d_inner 256, d_state 16 + 2 polarized (exact form),
seq 4096 (``ssm_scan_speed.json``'s configuration). Both tile layouts (``ScanBlocks.variant``),
a small tile sweep each on the path the model runs (``selective_scan`` with the polarized
channels in closed form, ``scan_split``), then for the best tiles: that path and the kernel over
all 18 states (the issue's 9.73 ms measurement), fp32 and bf16 inputs.
"""

from __future__ import annotations

import math

import torch

BATCH, D_INNER, N_LEARNED, SEQ = 16, 256, 16, 4096
FWD_TILES = [(4, 32, 4), (4, 16, 4), (8, 16, 4), (4, 8, 4), (2, 32, 4), (8, 32, 8), (16, 8, 4)]
BWD_TILES = [(4, 32, 4), (4, 16, 4), (8, 16, 4), (4, 8, 4), (2, 16, 4), (8, 8, 4), (16, 8, 8)]


def traffic_bytes(b, d, n, seq, elem, block_t):
    """Bytes a fused forward+backward must move at least (each tensor read or written once).

    Forward: read u, delta, z (b, d, seq) and B, C (b, n, seq); write out and the tile-start states
    (b, seq / block_t, d, n) fp32. Backward: read u, delta, z, dout, B, C and the states; write du,
    ddelta, dz (b, d, seq) and dB, dC (b, n, seq) fp32.
    """
    bdl, bnl = b * d * seq, b * n * seq
    states = b * math.ceil(seq / block_t) * d * n * 4
    fwd = 4 * bdl * elem + 2 * bnl * elem + states
    bwd = 7 * bdl * elem + 2 * bnl * elem + 2 * bnl * 4 + states
    return fwd + bwd


def measured_copy_bw():
    x = torch.empty(2**28, device="cuda", dtype=torch.float32)  # 1 GiB
    y = torch.empty_like(x)
    from anybudget.measure import latency

    t = latency(lambda: y.copy_(x), warmup=3, repeat=10).median_s
    return 2 * x.numel() * 4 / t


def _inputs(dtype):
    from scan_speed import make_inputs  # a sibling script: the caller runs from this folder

    ins = make_inputs(BATCH, D_INNER, SEQ, N_LEARNED, "cuda")
    if dtype != torch.float32:  # bf16 where the reference allows: the (b, d, seq) and (b, n, seq) inputs
        ins = tuple(t.detach().to(dtype).requires_grad_() if i in (0, 1, 3, 4, 6) else t
                    for i, t in enumerate(ins))
    return ins


def model_path(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The scan as ``Mamba`` calls it on CUDA: Triton over the learned states, polarized in closed form."""
    from anybudget.ssm.scan import selective_scan

    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend="triton",
                          fixed_channels=(1, 1))


def scan_speed_with_bound(peak_bw: dict) -> dict:
    from scan_speed import fwd_bwd

    from anybudget.measure import latency
    from anybudget.ssm.scan import selective_scan_chunked
    from anybudget.ssm.scan_triton import ScanBlocks, selective_scan_triton

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in peak_bw.items() if k in name), None)
    copy_bw = measured_copy_bw()
    out = {"shape": {"batch": BATCH, "d_inner": D_INNER, "d_state": N_LEARNED + 2, "seq": SEQ},
           "datasheet_bw_Bps": peak, "measured_copy_bw_Bps": copy_bw, "sweep": [], "by_variant": {}}
    ins = _inputs(torch.float32)
    grad = torch.randn(BATCH, D_INNER, SEQ, device="cuda")
    saved = (ScanBlocks.fwd, ScanBlocks.bwd, ScanBlocks.variant)
    out["bwd_impl"] = ScanBlocks.bwd_impl
    for variant in ("time_last", "time_first"):
        ScanBlocks.variant = variant
        best = {}
        for kind, tiles in (("fwd", FWD_TILES), ("bwd", BWD_TILES)):
            best_t = None
            for tile in tiles:
                if kind == "fwd":
                    ScanBlocks.fwd, ScanBlocks.bwd = tile, (saved[1][0], tile[1], saved[1][2])
                else:
                    ScanBlocks.fwd, ScanBlocks.bwd = best["fwd"], (tile[0], best["fwd"][1], tile[2])
                ScanBlocks.bwd_chunked = ScanBlocks.bwd  # swept for whichever backward ScanBlocks.bwd_impl runs
                try:
                    t = latency(lambda: fwd_bwd(model_path, ins, grad), warmup=2, repeat=10).median_s
                except Exception as e:  # noqa: BLE001 - a tile that does not fit (registers / shared memory)
                    out["sweep"].append({"variant": variant, "kind": kind, "tile": tile, "error": repr(e)[:200]})
                    continue
                out["sweep"].append({"variant": variant, "kind": kind, "tile": tile, "fwd_bwd_s": t})
                print("scan", variant, kind, tile, f"{t * 1e3:.3f} ms", flush=True)
                if best_t is None or t < best_t:
                    best_t, best[kind] = t, (tile if kind == "fwd" else ScanBlocks.bwd)
            if kind not in best:
                break
        if "bwd" not in best:
            out["by_variant"][variant] = {"error": "no tile ran"}
            continue
        ScanBlocks.fwd, ScanBlocks.bwd = best["fwd"], best["bwd"]
        ScanBlocks.bwd_chunked = best["bwd"]
        row = {"fwd_tile": best["fwd"], "bwd_tile": best["bwd"]}
        for dtype in (torch.float32, torch.bfloat16):
            x = ins if dtype == torch.float32 else _inputs(dtype)
            g = grad.to(dtype)
            elem = torch.finfo(dtype).bits // 8
            nbytes = traffic_bytes(BATCH, D_INNER, N_LEARNED + 2, SEQ, elem, best["fwd"][1])
            for path, fn in (("model_path", model_path), ("kernel_18_states", selective_scan_triton)):
                t = latency(lambda x=x, g=g, fn=fn: fwd_bwd(fn, x, g), warmup=3, repeat=20).median_s
                key = ("fp32" if dtype == torch.float32 else "bf16") + ("" if path == "model_path" else "_" + path)
                row[key] = {"fwd_bwd_s": t, "bytes": nbytes,
                            "bound_s_datasheet": nbytes / peak if peak else None,
                            "bound_s_measured_copy": nbytes / copy_bw,
                            "x_over_bound_measured": t / (nbytes / copy_bw)}
                with torch.no_grad():
                    row[key]["fwd_s"] = latency(lambda x=x, fn=fn: fn(*x, delta_softplus=True),
                                                warmup=3, repeat=20).median_s
        out["by_variant"][variant] = row
        print("scan best", variant, row, flush=True)
    ok = {v: r["fp32"]["fwd_bwd_s"] for v, r in out["by_variant"].items() if "fp32" in r}
    if ok:
        out["best_variant"] = min(ok, key=ok.get)
        r = out["by_variant"][out["best_variant"]]
        out["best_tiles"] = {"fwd": r["fwd_tile"], "bwd": r["bwd_tile"]}
        out["issue_baseline_fwd_bwd_s"] = 0.00973406410217285  # ssm_scan_speed.json, seq 4096 (time_last, 4/32/4)
    # Equality with the chunked PyTorch scan at this length (fp32, the chosen variant's best tiles).
    for variant, r in out["by_variant"].items():
        if "fp32" not in r:
            continue
        ScanBlocks.variant, ScanBlocks.fwd, ScanBlocks.bwd = variant, r["fwd_tile"], r["bwd_tile"]
        ScanBlocks.bwd_chunked = r["bwd_tile"]
        try:
            leaves = [ins[i] for i in (0, 1, 3, 4, 5, 6, 7)]
            o1 = selective_scan_chunked(*ins, delta_softplus=True)
            g1 = torch.autograd.grad(o1, leaves, grad)
            o2 = model_path(*ins, delta_softplus=True)
            g2 = torch.autograd.grad(o2, leaves, grad)
            r["max_abs_err_out"] = (o2 - o1).abs().max().item()
            r["max_rel_err_grads"] = max(((b - a).abs().max() / a.abs().max().clamp_min(1.0)).item()
                                         for a, b in zip(g1, g2))
            del o1, g1, o2, g2
        except torch.cuda.OutOfMemoryError:
            r["max_abs_err_out"] = "OOM in the chunked reference"
        torch.cuda.empty_cache()
    ScanBlocks.fwd, ScanBlocks.bwd, ScanBlocks.variant = saved
    return out
