"""The chunked backward's carry kernel alone (``scan_triton_bwd._chunk_carry_kernel``, the adjoint's reverse
recurrence over chunks) at issue 17's shape: batch 16, 256 chunks of 16 steps (seq 4096), d_inner 256, 16 learned
states, with the one-polarized channel's extra programs (the fastest preset's launch). Tiles: (BLOCK_C chunks,
BLOCK_J (channel, state) pairs, num_warps, JC); JC: (j, chunk) tiles, each thread's chunks in its registers.

Each configuration is checked against the first (the (chunk, j) tiles the kernel had) before it is timed (CUDA
events, median). The bound: X and S read, E written, once, over a device-to-device copy's bandwidth measured in the
same run.

    python benchmarks/ssm/carry_speed.py --out $OUT     # one GPU, seconds
"""

from __future__ import annotations

import argparse
import sys

CONFIGS = [(16, 256, 4, False), (8, 128, 1, True), (8, 32, 1, True), (8, 64, 2, True), (16, 128, 1, True),
           (8, 256, 2, True), (4, 128, 1, True), (8, 512, 4, True)]


def measure(repeat):
    import torch
    import triton
    from scan_bwd_speed import _copy_bw

    from anybudget.measure import latency
    from anybudget.ssm.scan_triton_bwd import _chunk_carry_kernel

    b, chunks, d, n = 16, 256, 256, 16
    g = torch.Generator("cuda").manual_seed(0)
    A = -torch.rand(d, n, device="cuda", generator=g) * 4
    X = torch.randn(b, chunks, d, n, device="cuda", generator=g)
    S = torch.rand(b, chunks, d, device="cuda", generator=g) * 0.05
    X1 = torch.randn(b, chunks, d, device="cuda", generator=g)
    bw = _copy_bw("cuda", 2**28)
    nbytes = 4 * (2 * X.numel() + S.numel() + 2 * X1.numel())
    rows, ref = [], None
    for block_c, block_j, warps, jc in CONFIGS:
        E, E1 = torch.empty_like(X), torch.empty_like(X1)
        grid = (b, triton.cdiv(d * n, block_j) + triton.cdiv(d, block_j))

        def run(E=E, E1=E1, grid=grid, block_c=block_c, block_j=block_j, warps=warps, jc=jc):
            _chunk_carry_kernel[grid](A, X, S, E, d, n, chunks, REVERSE=True, BLOCK_C=block_c, BLOCK_J=block_j,
                                      N_BLOCKS=triton.cdiv(chunks, block_c), X1_ptr=X1, E1_ptr=E1, ONE=True, JC=jc,
                                      num_warps=warps)

        run()
        torch.cuda.synchronize()
        if ref is None:
            ref = (E.clone(), E1.clone())
        err = max(((E - ref[0]).abs().max() / ref[0].abs().max()).item(),
                  ((E1 - ref[1]).abs().max() / ref[1].abs().max()).item())
        row = {"tiles": [block_c, block_j, warps, jc], "rel_err_vs_first": err}
        if err <= 1e-5:
            row["s"] = latency(run, warmup=3, repeat=repeat).median_s
            row["x_over_bound"] = row["s"] / (nbytes / bw)
        rows.append(row)
        print(row, flush=True)
    return {"shape": {"batch": b, "chunks": chunks, "d_inner": d, "d_state": n}, "bytes": nbytes,
            "measured_copy_bw_Bps": bw, "bound_s": nbytes / bw, "rows": rows}


def main(argv=None) -> int:
    from anybudget.io import results_dir, write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(results_dir("ssm_carry_speed")))
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat {args.repeat}: must be >= 1 (timed calls per configuration)")
    import torch

    if not torch.cuda.is_available():
        print("carry_speed.py: needs CUDA (a GPU); none found", file=sys.stderr)
        return 2
    config = {"configs": CONFIGS, "repeat": args.repeat, "timing": "CUDA events, median"}
    path = write_results("ssm_carry_speed", config, measure(args.repeat), out_dir=args.out)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
