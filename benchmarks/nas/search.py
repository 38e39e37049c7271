"""TE-NAS on NAS-Bench-201: found architectures' real accuracies over seeds, vs the paper and vs
random search at equal wall time; search time; a FLOPs budget of half the largest cell's.

Writes ``benchmarks/results/nas/nas_search.json`` (``--out-dir``). Proxy inputs are 32x32 crops of
scikit-image photographs (no CIFAR-10 offline), so the search sees no CIFAR data at all; the
accuracies are the benchmark's real 200-epoch test accuracies of the architectures found.

    PYTHONPATH=src python benchmarks/nas/search.py --seeds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from anybudget.io import (
    atomic_write_json,
    check_checkpoint_config,
    read_json,
    results_dir,
    write_results,
)
from anybudget.measure import default_device
from anybudget.nas.benchmark import DATASETS, NB201Table
from anybudget.nas.correlate import ProxyConfig, score_arch, tenas_score
from anybudget.nas.cost import arch_cost
from anybudget.nas.data import DATA_NOTE, crops_from, photo_batch
from anybudget.nas.network import NB201Network
from anybudget.nas.proxies import ntk_condition_number
from anybudget.nas.search import TENASConfig, tenas_search
from anybudget.nas.space import NUM_ARCHS

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TABLE = next((p for p in (ROOT / ".carry/nas/nats_bench.csv", ROOT.parent / "shared/data/nasbench201/nats_bench.csv") if p.is_file()), None)
PAPER = {"cifar10": (93.9, 0.47), "cifar100": (71.24, 0.56), "ImageNet16-120": (42.38, 0.46), "search_gpu_hours": 0.5,
         "search_seconds_1080ti": 1558}


def pick_ntk_method(device: str) -> tuple[str, dict]:
    """Time both NTK implementations on the search's super-network; use the faster."""
    net = NB201Network(torch.ones(6, 5, dtype=torch.bool), C=3, N=1).to(device)
    x = torch.randn(72, 3, 32, 32, device=device)
    times = {}
    for m in ("jacrev", "loop"):
        ntk_condition_number(net, x, method=m)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            ntk_condition_number(net, x, method=m)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times[m] = (time.perf_counter() - t) / 3
    return min(times, key=times.get), times


def summarize(rows: list[dict]) -> dict:
    out = {}
    for d in DATASETS:
        v = [r["accuracy"][d] for r in rows]
        out[d] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
    out["seconds"] = {"mean": statistics.fmean(r["seconds"] for r in rows)}
    return out


def run_tenas(cfg, seeds, table, device, quiet, budget=None, deadline=None):
    rows = []
    for s in seeds:
        if deadline and time.perf_counter() > deadline:
            print(f"  time budget reached; stopping before seed {s}")
            break
        r = tenas_search(cfg, seed=s, device=device, quiet=quiet, budget=budget)
        c = arch_cost(r.arch)
        row = {"seed": s, "arch": r.arch_string, "index": r.index, "seconds": r.seconds, "flops": c.flops,
               "params": c.params, "accuracy": table.accuracies(r.index)}
        print(f"  seed {s}: {r.arch_string} acc {row['accuracy']['cifar10']:.2f}/{row['accuracy']['cifar100']:.2f}/"
              f"{row['accuracy']['ImageNet16-120']:.2f}  {c.flops / 1e6:.1f} MFLOPs  {r.seconds:.1f} s", flush=True)
        rows.append(row)
    return rows


def random_search(seconds: float, seed: int, table, device, method, ntk_batch: int) -> dict:
    """Random search at equal wall time, training-free: sample archs, score each with the TE-NAS
    proxies (same networks and NTK batch as the search), keep the best by rank sum."""
    cfg = ProxyConfig(ntk_method=method, ntk_batch=ntk_batch)
    rng = np.random.default_rng(10_000 + seed)
    images, labels = photo_batch(cfg.ntk_batch, seed=seed)
    crops = crops_from(photo_batch(256, seed=seed + 7)[0], cfg.region_samples, rng=rng)
    images, labels, crops = images.to(device), labels.to(device), crops.to(device)
    order = rng.permutation(NUM_ARCHS)
    idx, kap, reg = [], [], []
    t0 = time.perf_counter()
    for i in order:
        if time.perf_counter() - t0 > seconds:
            break
        s = score_arch(int(i), cfg, images, labels, crops, seed=seed, proxies=("ntk_cond", "linear_regions"), device=device)
        idx.append(int(i))
        kap.append(s["ntk_cond"])
        reg.append(s["linear_regions"])
    best = idx[int(np.argmax(tenas_score(kap, reg)))]
    return {"seed": seed, "index": best, "sampled": len(idx), "seconds": time.perf_counter() - t0,
            "accuracy": table.accuracies(best)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--table", default=os.environ.get("ANYBUDGET_NB201_CSV") or DEFAULT_TABLE)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out-dir", default=None,
                    help="default benchmarks/results/nas (its resume file then in .carry/nas/)")
    ap.add_argument("--time-budget", type=float, default=330.0, help="seconds for the whole script; later parts are cut")
    ap.add_argument("--batch-size", type=int, default=None, help="NTK batch (default 72, the paper's)")
    ap.add_argument("--repeat", type=int, default=None, help="draws per candidate (default 3, the paper's)")
    ap.add_argument("--ntk-method", default="auto", choices=("auto", "jacrev", "loop"))
    ap.add_argument("--resume", action="store_true", help="keep the parts already in nas_search.partial.json")
    ap.add_argument("--smoke", action="store_true", help="tiny settings (CPU check of the script)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.time_budget
    device = default_device(args.device)
    table = NB201Table.load(args.table)
    method, method_times = pick_ntk_method(device) if args.ntk_method == "auto" else (args.ntk_method, {})
    print(f"device {device}; NTK method {method} ({ {k: round(v * 1e3, 1) for k, v in method_times.items()} } ms per call)", flush=True)
    small = {"batch_size": 8, "repeat": 1, "C": 1, "region_samples": 300, "region_batch": 150, "image_pool": 24} if args.smoke else {}
    for k in ("batch_size", "repeat"):
        if getattr(args, k) is not None:
            small[k] = getattr(args, k)
    seeds = list(range(args.seeds))
    metrics: dict = {"data": DATA_NOTE, "ntk_method": method, "ntk_call_ms": {k: v * 1e3 for k, v in method_times.items()}}
    out_dir = Path(args.out_dir) if args.out_dir else results_dir("nas_search", ROOT / "benchmarks/results")
    partial = (Path(args.out_dir) if args.out_dir else ROOT / ".carry/nas") / "nas_search.partial.json"
    cfg = TENASConfig(ntk_method=method, **small)
    # what the finished parts depend on: a resume with another one is refused, never mixed in
    key = {"seeds": seeds, "tenas": asdict(cfg), "smoke": args.smoke, "table": str(args.table)}
    if args.resume and partial.is_file():
        done = read_json(partial)
        check_checkpoint_config(partial, done.get("resume_key"), key, "--resume",
                                "rerun without --resume, or with the settings it was written with")
        metrics.update({k: v for k, v in done.items() if k.startswith("tenas")})
        print(f"resumed parts {[k for k in done if k.startswith('tenas')]} from {partial}", flush=True)

    def save_partial():
        atomic_write_json(partial, {**metrics, "resume_key": key})
    if "tenas" not in metrics:
        print("TE-NAS, paper init (Kaiming normal, re-drawn per repeat):", flush=True)
        rows = run_tenas(cfg, seeds, table, device, args.quiet, deadline=deadline)
        metrics["tenas"] = {"runs": rows, **summarize(rows)}
        save_partial()

    budget_flops = arch_cost(("nor_conv_3x3",) * 6).flops // 2
    brows = []
    if "tenas_flops_budget" not in metrics:
        print(f"TE-NAS under flops={budget_flops} (half the all-3x3 cell's {2 * budget_flops}):", flush=True)
        brows = run_tenas(cfg, seeds, table, device, args.quiet, budget=f"flops={budget_flops}", deadline=deadline)
    if brows:
        metrics["tenas_flops_budget"] = {"limit": budget_flops, "runs": brows, **summarize(brows),
                                         "all_within": all(r["flops"] <= budget_flops for r in brows)}
    save_partial()

    t_eq = metrics["tenas"]["seconds"]["mean"]
    print(f"random search, {t_eq:.1f} s each (= mean TE-NAS search time):", flush=True)
    rs = []
    for s in seeds:
        if time.perf_counter() + t_eq > deadline:
            break
        r = random_search(t_eq, s, table, device, method, cfg.batch_size)
        print(f"  seed {s}: index {r['index']} ({r['sampled']} archs sampled) acc {r['accuracy']['cifar10']:.2f}", flush=True)
        rs.append(r)
    if rs:
        metrics["random_search_equal_time"] = {"runs": rs, **summarize(rs)}
    metrics["random_arch"] = {d: {"mean": float(table.acc[d].mean()), "std": float(table.acc[d].std())} for d in DATASETS}
    best = {d: float(table.acc[d].max()) for d in DATASETS}
    metrics["benchmark_optimum"] = best
    save_partial()

    print("TE-NAS, reference-code init (PyTorch default, not re-drawn):", flush=True)
    rrows = run_tenas(TENASConfig(ntk_method=method, init="reference", **small), seeds, table, device, args.quiet, deadline=deadline)
    if rrows:
        metrics["tenas_reference_init"] = {"runs": rrows, **summarize(rrows)}

    config = {"seeds": seeds, "tenas": asdict(cfg), "device": device,
              "smoke": args.smoke, "table": str(args.table), "inputs": DATA_NOTE, "num_classes": cfg.num_classes}
    name = "nas_search_smoke" if args.smoke else "nas_search"
    path = write_results(name, config, metrics, baseline={"paper_tenas_nb201": PAPER}, out_dir=out_dir)
    partial.unlink(missing_ok=True)
    print(f"wrote {path} in {time.perf_counter() - t_start:.0f} s")
    for k in ("tenas", "tenas_flops_budget", "random_search_equal_time", "tenas_reference_init"):
        if k in metrics:
            m = metrics[k]
            print(f"{k:<26}" + "  ".join(f"{d} {m[d]['mean']:.2f}+-{m[d]['std']:.2f}" for d in DATASETS)
                  + f"  ({m['seconds']['mean']:.1f} s)")
    print("paper TE-NAS              " + "  ".join(f"{d} {PAPER[d][0]:.2f}+-{PAPER[d][1]:.2f}" for d in DATASETS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
