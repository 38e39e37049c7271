"""Kendall tau and Spearman rho of every proxy (and of the TE-NAS rank sum) with the real
NAS-Bench-201 test accuracies on CIFAR-10, CIFAR-100 and ImageNet16-120.

Architectures are taken in a seeded random order of all 15,625 and scored until the time budget
ends (at least ``--min-archs``). Writes ``benchmarks/results/nas/nas_correlate.json`` and
``nas_correlate.png`` (scatter of each TE-NAS proxy vs CIFAR-100 accuracy). Proxy inputs are
32x32 crops of scikit-image photographs (no CIFAR-10 offline).

    PYTHONPATH=src python benchmarks/nas/correlate.py --time-budget 400
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from anybudget.io import read_json, results_dir, save_figure, write_plot, write_results
from anybudget.measure import default_device
from anybudget.nas.benchmark import DATASETS, NB201Table
from anybudget.nas.correlate import (
    PROXIES,
    ProxyConfig,
    correlation_table,
    sample_indices,
    score_archs,
    tenas_score,
)
from anybudget.nas.data import DATA_NOTE
from anybudget.nas.space import NUM_ARCHS

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TABLE = next((p for p in (ROOT / ".carry/nas/nats_bench.csv", ROOT.parent / "shared/data/nasbench201/nats_bench.csv") if p.is_file()), None)
# TE-NAS Fig. 1 (NB201, CIFAR-100), Kendall tau; quoted from memory of the paper, not re-verified.
PAPER = {"ntk_cond": {"cifar100": {"kendall": -0.42}}, "linear_regions": {"cifar100": {"kendall": 0.5}},
         "note": "TE-NAS paper Fig. 1 values from memory (research notes), unverified"}


def plot(scores: dict, table: NB201Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.asarray(scores["index"])
    acc = table.acc["cifar100"][idx]
    k = np.array([np.nan if v is None else v for v in scores["ntk_cond"]], dtype=float)
    r = np.array(scores["linear_regions"], dtype=float)
    t = tenas_score(np.nan_to_num(k, nan=np.inf), r)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, x, name, logx in ((axes[0], k, "NTK condition number (lower better)", True),
                              (axes[1], r, "#linear regions (higher better)", False),
                              (axes[2], t, "TE-NAS: -(rank kappa + rank regions)", False)):
        ax.scatter(x, acc, s=2, alpha=0.3)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("CIFAR-100 test acc (%)")
    fig.suptitle(f"NAS-Bench-201, {len(idx)} archs; proxy inputs: photo crops (not CIFAR)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", default=os.environ.get("ANYBUDGET_NB201_CSV") or DEFAULT_TABLE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=400.0, help="seconds of scoring")
    ap.add_argument("--min-archs", type=int, default=1000)
    ap.add_argument("--num-archs", type=int, default=NUM_ARCHS)
    ap.add_argument("--ntk-method", default="auto", choices=("auto", "jacrev", "loop"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results/nas")
    ap.add_argument("--checkpoint", default=None,
                    help="per-architecture scores, resumed from (default: OUT_DIR/NAME.scores.json with --out-dir, "
                         "else benchmarks/nas/artefacts/NAME.scores.json)")
    ap.add_argument("--ntk-batch", type=int, default=None, help="NTK batch (default 72, the paper's)")
    ap.add_argument("--zc-batch", type=int, default=None, help="NASWOT/snip/grad_norm batch (default 64)")
    ap.add_argument("--smoke", action="store_true", help="tiny networks and batches (CPU check of the script)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    device = default_device(args.device)
    table = NB201Table.load(args.table)
    method = args.ntk_method
    if method == "auto":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from search import pick_ntk_method  # benchmarks/nas/search.py

        method, _ = pick_ntk_method(device)
    kw = {"ntk_batch": 8, "ntk_C": 1, "region_samples": 300, "region_batch": 300, "zc_batch": 8, "zc_C": 4, "zc_N": 1} if args.smoke else {}
    if args.ntk_batch:
        kw["ntk_batch"] = args.ntk_batch
    if args.zc_batch:
        kw["zc_batch"] = args.zc_batch
    cfg = ProxyConfig(ntk_method=method, **kw)
    name = "nas_correlate_smoke" if args.smoke else "nas_correlate"
    out = Path(args.out_dir) if args.out_dir else results_dir(name, ROOT / "benchmarks/results")
    idx = sample_indices(args.num_archs, seed=args.seed)
    ck = Path(args.checkpoint) if args.checkpoint else (
        out if args.out_dir else ROOT / "benchmarks/nas/artefacts") / f"{name}.scores.json"
    n_before = len(read_json(ck)["scores"]["index"]) if ck.is_file() else 0  # resumed from a checkpoint
    t0 = time.perf_counter()
    scores = score_archs(idx, cfg, seed=args.seed, device=device, time_limit_s=args.time_budget,
                         checkpoint=ck, quiet=args.quiet)
    secs = time.perf_counter() - t0
    n = len(scores["index"])
    rate = secs / max(n - n_before, 1) * 1e3
    print(f"scored {n} archs ({n - n_before} in this run, {secs:.0f} s, {rate:.0f} ms/arch, NTK via {method})")
    if n < args.min_archs:
        print(f"WARNING: only {n} < {args.min_archs} architectures scored")
    corr = correlation_table(scores, table)
    metrics = {"num_archs": n, "scored_this_run": n - n_before, "seconds_this_run": secs, "ms_per_arch": rate,
               "data": DATA_NOTE,
               "correlations": corr}
    config = {"proxy": asdict(cfg), "seed": args.seed, "device": device, "proxies": list(PROXIES),
              "inputs": DATA_NOTE, "order": "numpy default_rng(seed).permutation(15625), scored in order",
              "draws_per_arch": 1, "smoke": args.smoke}
    path = write_results(name, config, metrics, baseline={"paper_tenas": PAPER}, out_dir=out)
    png = write_plot(out / f"{name}.png", lambda p: plot(scores, table, p))
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    print(f"{'proxy':<16}" + "".join(f"{d + ' tau':>22}{'rho':>8}" for d in DATASETS))
    for p, row in corr.items():
        print(f"{p:<16}" + "".join(f"{row[d]['kendall']:>22.3f}{row[d]['spearman']:>8.3f}" for d in DATASETS))
    print("paper (CIFAR-100 tau, from memory): ntk_cond -0.42, linear_regions +0.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
