"""Where an MQAR training step spends its GPU time: kernels grouped by name, share of the step.

The step is the Table 2 model (d_model 128, vocab 8192, batch 128, the training mixture) in a
``train_speed.VARIANTS`` step (``--variant``; default ``eager``: the same kernels as the CUDA-graph
mode; ``compile`` shows what the compiled step launches).
Writes ``ssm_step_profile.json`` (top kernels by GPU time, ``anybudget.measure.kernel_times``,
their share of the total, the step time under the profiler) so that the 3x-faster-step work aims at what costs.

The record is rewritten after each depth (``metrics.complete`` False until the script ends), so a call cut
by its timeout still leaves the depths done. ``--time-limit`` (seconds) skips a depth that would not
finish in time, estimated from the depth before it: with ``--variant compile`` each depth first
compiles every shape (~40-95 s on an H100/H200 with a cold inductor cache; the cache under
/tmp/torchinductor_$USER makes a second process on the same machine faster).

Usage (GPU):          python benchmarks/ssm/profile_step.py --out $OUT                         # eager, ~1 min
                      timeout 300 python benchmarks/ssm/profile_step.py --variant compile --time-limit 270 --out $OUT
       (CPU smoke):   python benchmarks/ssm/profile_step.py --smoke --out /tmp/x
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling train_speed module
from train_speed import (
    SCANS,
    VARIANTS,
    Runner,
    build,
    first_step_of_each_shape,
    set_named_scan,
    set_scan,
)

from anybudget.io import results_dir, write_results
from anybudget.measure import kernel_times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", str(results_dir("ssm_step_profile"))))
    ap.add_argument("--layers", default="2,4")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few steps")
    ap.add_argument("--variant", default="eager", choices=[v for v in VARIANTS if v != "reference"],
                    help="which step to profile (train_speed.VARIANTS); 'eager' keeps this script's earlier scan tiles")
    ap.add_argument("--time-limit", type=float, default=270.0,
                    help="seconds; a depth that would end past it (the previous depth's time as estimate) is skipped")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.smoke
    device = "cuda" if cuda else "cpu"
    from anybudget.ssm.mqar import TRAIN_MIXTURE, MQARSegment

    segments = (MQARSegment(32, 100, 2), MQARSegment(64, 50, 4)) if a.smoke else TRAIN_MIXTURE
    d_model, vocab, batch = (16, 96, 4) if a.smoke else (128, 8192, 128)
    steps = 2 if a.smoke else a.steps
    out = {}
    depths = [int(x) for x in a.layers.split(",")]
    scan = ("time_first, split, fwd (8,32,8), chunked bwd (8,16,4)" if a.variant == "eager"
            else str(SCANS[VARIANTS[a.variant][2]]))
    cfg = {"d_model": d_model, "vocab": vocab, "batch": batch, "variant": a.variant,
           "mode": f"{a.variant} FastStep ({VARIANTS[a.variant]})", "scan": scan, "smoke": a.smoke, "device": device,
           "time_limit_s": a.time_limit}
    name = "ssm_step_profile" + ("" if a.variant == "eager" else "_" + a.variant.replace("+", "_"))
    t_start, last = time.perf_counter(), 0.0
    for n, layers in enumerate(depths):
        if n and time.perf_counter() - t_start + last > a.time_limit:
            out[f"L{layers}"] = {"skipped": f"would end past --time-limit {a.time_limit} s "
                                            f"(the previous depth took {last:.0f} s)"}
            print(f"depth {layers}: skipped, {out[f'L{layers}']['skipped']}", flush=True)
            continue
        t_depth = time.perf_counter()
        if a.variant == "eager":
            set_scan("time_first", True, ((8, 32, 8), (8, 16, 4)), "chunked")
        else:
            set_named_scan(VARIANTS[a.variant][2])
        r = Runner(a.variant, build(layers, d_model, vocab, device), segments, batch, vocab, seed=7,
                   compile_backend="aot_eager" if a.smoke else "inductor")
        for i in first_step_of_each_shape(r.stream):
            r.step(i)
        if cuda:
            torch.cuda.synchronize()
        i = iter(range(20_000, 20_000 + steps))
        t0 = time.perf_counter()
        rows, total_us, count = kernel_times(lambda r=r, i=i: r.step(next(i)), steps=steps, top=a.top)
        wall = (time.perf_counter() - t0) / steps
        for k in rows:
            k["share"] = k["us_per_step"] / total_us if total_us else 0.0
        last = time.perf_counter() - t_depth
        out[f"L{layers}"] = {"steps": steps, "wall_ms_per_step_profiled": wall * 1e3, "depth_s": last,
                             "kernel_ms_per_step": total_us / 1e3, "kernels_per_step": count, "kernels": rows}
        print(f"depth {layers}: {wall * 1e3:.1f} ms/step wall, {total_us / 1e3:.1f} ms in kernels", flush=True)
        for k in rows[:10]:
            print(f"  {k['share']:6.1%} {k['us_per_step'] / 1e3:7.3f} ms  {k['calls_per_step']:5.0f}x  {k['kernel']}",
                  flush=True)
        del r
        write_results(name, cfg, {**out, "complete": False}, out_dir=Path(a.out))  # after every depth
    write_results(name, cfg, {**out, "complete": True}, out_dir=Path(a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
