"""Time `anybudget demo` end to end on this machine (model load, generation, streaming perplexity).

Usage:  python benchmarks/core/demo_time.py     -> benchmarks/results/core/demo_time.json
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from anybudget.io import results_dir, write_results

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(results_dir("demo_time", ROOT / "benchmarks/results")),
                    help="folder for demo_time.json (default: benchmarks/results/core)")
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "anybudget.cli", "demo", "--quiet"]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    out = r.stdout
    mem = re.search(r"full (\d+) KiB, H2O (\d+) KiB .*: (\d+)% less memory", out)
    ppl = dict(re.findall(r"^\s+(\S+(?: \S+)?)\s+perplexity\s+([\d.]+)", out, re.M))
    metrics = {"wall_s": wall, "load_avg_1min_before": load_before,
               "kv_full_kib": int(mem.group(1)), "kv_h2o_kib": int(mem.group(2)), "memory_saved_pct": int(mem.group(3)),
               "passage_ppl": {k: float(v) for k, v in ppl.items()}}
    print(out)
    print(metrics)
    write_results("demo_time", {"command": "anybudget demo", "cpu_count": os.cpu_count()}, metrics,
                  out_dir=args.out)


if __name__ == "__main__":
    main()
