"""Where the scan's kernels spend their time: one forward + backward of the fastest preset at issue 17's shape
(batch 16, d_inner 256, 16 learned + 2 polarized states, seq 4096), to be run under Nsight Compute.

The script runs the scan a few times (Triton's compiles, the allocator), then once more between
``torch.cuda.profiler.start()`` and ``stop()``; ncu profiles only that call (``--profile-from-start off``):

    ncu --profile-from-start off --clock-control none --set full --import-source no \\
        -k 'regex:fwd_kernel_tm|_chunk_adjoint_tm_kernel|_chunk_carry_kernel|_grads_gl_kernel' \\
        -o $OUT/scan python benchmarks/ssm/scan_ncu.py
    ncu -i $OUT/scan.ncu-rep --page details --csv > $OUT/details.csv
    ncu -i $OUT/scan.ncu-rep --page source --print-source sass --csv -k _grads_gl_kernel > $OUT/grads_sass.csv

(``--clock-control none``: the device's notes ask to leave the clocks alone.) ``--preset`` picks
``ScanBlocks.preset`` (default ``fastest``). Then, on the same machine,

    python benchmarks/ssm/scan_ncu.py --summarize $OUT

reads ``details.csv`` and every ``*_sass.csv`` there into the record ``ssm_scan_ncu.json``: per kernel its duration,
registers, occupancy, issue activity and spill requests; per profiled SASS listing the warp-stall samples by reason
(the share of all samples) and the executed instructions by opcode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DETAILS = ("Duration", "Registers Per Thread", "Achieved Occupancy", "Theoretical Occupancy", "Issue Slots Busy",
           "Warp Cycles Per Issued Instruction", "Active Warps Per Scheduler", "Eligible Warps Per Scheduler",
           "Memory Throughput", "DRAM Throughput", "Executed Instructions", "Local Memory Spilling Requests",
           "Block Limit Registers")


def _num(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return text


def summarize(folder):
    """``{"kernels": {name: {metric: value}}, "sass": {listing: {"stall_share", "opcode_share", ...}}}`` from ncu's
    CSV pages in ``folder`` (see the module docstring)."""
    import collections
    import csv

    folder = Path(folder)
    kernels: dict = {}
    with open(folder / "details.csv", newline="") as f:
        for r in csv.DictReader(f):
            name = r["Kernel Name"].split("(")[0]
            key = f"{r['Metric Name']} ({r['Metric Unit']})" if r["Metric Unit"] else r["Metric Name"]
            if r["Metric Name"] in DETAILS and key not in kernels.setdefault(name, {}):
                kernels[name][key] = _num(r["Metric Value"])
    sass = {}
    for path in sorted(folder.glob("*_sass.csv")):
        rows = list(csv.reader(open(path, newline="")))
        if len(rows) < 3:
            continue
        hdr = rows[1]
        data = [r for r in rows[2:] if len(r) == len(hdr)]
        src, execs = hdr.index("Source"), hdr.index("Instructions Executed")
        stall_cols = [i for i, h in enumerate(hdr) if h.startswith("stall_") and "Not Issued" not in h]
        stalls, ops = collections.Counter(), collections.Counter()
        for r in data:
            for i in stall_cols:
                stalls[hdr[i]] += int(r[i] or 0)
            words = r[src].split()
            if words:
                op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
                ops[op.split(".")[0]] += int(r[execs] or 0)
        n_stall, n_ops = sum(stalls.values()) or 1, sum(ops.values()) or 1
        sass[path.stem] = {"samples": sum(stalls.values()), "warp_instructions": sum(ops.values()),
                           "stall_share": {k: round(v / n_stall, 4) for k, v in stalls.most_common(8)},
                           "opcode_share": {k: round(v / n_ops, 4) for k, v in ops.most_common(12)}}
    return {"kernels": kernels, "sass": sass}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fastest")
    ap.add_argument("--shape", type=int, nargs=3, default=(16, 256, 4096), metavar=("BATCH", "D_INNER", "SEQ"))
    ap.add_argument("--summarize", metavar="DIR", help="write ssm_scan_ncu.json from ncu's CSV pages in DIR")
    args = ap.parse_args(argv)
    if args.summarize:
        from anybudget.io import write_results

        if not (Path(args.summarize) / "details.csv").is_file():
            ap.error(f"--summarize {args.summarize}: no details.csv there (run ncu and its --page details first)")
        config = {"preset": args.preset, "shape": list(args.shape), "tool": "Nsight Compute, --set full, "
                  "--clock-control none, one forward + backward (see the module docstring)"}
        path = write_results("ssm_scan_ncu", config, summarize(args.summarize), out_dir=args.summarize)
        print("wrote", path)
        return 0
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
