"""Where the scan's kernels spend their time: one forward + backward of the fastest preset at issue 17's shape
(batch 16, d_inner 256, 16 learned + 2 polarized states, seq 4096), to be run under Nsight Compute.

The script runs the scan a few times (Triton's compiles, the allocator), then once more between
``torch.cuda.profiler.start()`` and ``stop()``; ncu profiles only that call (``--profile-from-start off``):

    ncu --profile-from-start off --clock-control none --set full --import-source no \\
        -k 'regex:fwd_kernel_tm|_chunk_adjoint_tm_kernel|_chunk_carry_kernel|_grads_gl_kernel' \\
        -o $OUT/scan python benchmarks/ssm/scan_ncu.py
    ncu -i $OUT/scan.ncu-rep --page details --csv > $OUT/details.csv
    ncu -i $OUT/scan.ncu-rep --page source --print-source sass --csv -k _grads_gl_kernel > $OUT/grads_sass.csv

(``--clock-control none``: the device's notes ask to leave the clocks alone.) Writes nothing itself: ncu's
report is the output. ``--preset`` picks ``ScanBlocks.preset`` (default ``fastest``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fastest")
    ap.add_argument("--shape", type=int, nargs=3, default=(16, 256, 4096), metavar=("BATCH", "D_INNER", "SEQ"))
    args = ap.parse_args(argv)
    import torch
    from scan_speed import make_inputs

    from anybudget.ssm.scan import selective_scan
    from anybudget.ssm.scan_triton import ScanBlocks

    if not torch.cuda.is_available():
        print("scan_ncu.py: needs CUDA (a GPU); none found", file=sys.stderr)
        return 2
    ScanBlocks.preset(args.preset)
    b, d, seq = args.shape
    ins = make_inputs(b, d, seq, 16, "cuda")
    leaves = [ins[i] for i in (0, 1, 3, 4, 5, 6, 7)]
    grad = torch.randn(b, d, seq, device="cuda")

    def call():
        out = selective_scan(*ins, delta_softplus=True, backend="triton", fixed_channels=(1, 1))
        return torch.autograd.grad(out, leaves, grad)

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print("profiled one forward + backward at", args.shape, "preset", args.preset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
