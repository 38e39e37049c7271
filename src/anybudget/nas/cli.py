"""``anybudget nas search`` and ``anybudget nas correlate``. Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse

from anybudget.cli_types import (
    budget,
    device,
    existing_file,
    positive_float,
    positive_int,
    require,
    writable_file,
)

PROXY_NAMES = ("ntk_cond", "linear_regions", "naswot", "synflow", "snip", "grad_norm", "params")


def register(sub) -> None:
    nas = sub.add_parser("nas", help="TE-NAS training-free architecture search on NAS-Bench-201")
    nsub = nas.add_subparsers(dest="nas_command", metavar="VERB", required=True)

    s = nsub.add_parser("search", help="TE-NAS search (optionally under a FLOPs/params/latency budget)")
    s.add_argument("--space", default="nb201", choices=("nb201", "darts"), help="search space (default nb201)")
    s.add_argument("--budget", default=None, type=budget, help="one of flops=100M, params=0.8M, latency=5ms (nb201 only)")
    s.add_argument("--seeds", type=positive_int, default=1, help="number of seeds 0..S-1 to run (default 1)")
    s.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    s.add_argument("--table", default=None, type=existing_file, help="nats_bench.csv for real accuracies (or env ANYBUDGET_NB201_CSV)")
    s.add_argument("--init", default="kaiming_normal", choices=("kaiming_normal", "reference"),
                   help="kaiming_normal (paper) or reference (what the released code runs)")
    s.add_argument("--repeat", type=positive_int, default=3, help="draws per candidate op (default 3)")
    s.add_argument("--batch-size", type=positive_int, default=None, help="NTK batch (default 72 nb201, 14 darts)")
    s.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda if available)")
    s.add_argument("--out", default=None, type=writable_file, help="write the results as JSON here")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_search)

    c = nsub.add_parser("correlate", help="Kendall tau / Spearman of each proxy vs the real accuracies")
    c.add_argument("--num-archs", type=int, default=1000, help="architectures sampled by seed (default 1000; 15625 = all)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--table", default=None, type=existing_file, help="nats_bench.csv (or env ANYBUDGET_NB201_CSV)")
    c.add_argument("--proxies", default=",".join(PROXY_NAMES), help="comma-separated subset of " + ",".join(PROXY_NAMES))
    c.add_argument("--init", default="kaiming_normal", choices=("kaiming_normal", "pytorch_default"))
    c.add_argument("--ntk-batch", type=positive_int, default=72, help="NTK batch (default 72, the paper's)")
    c.add_argument("--zc-batch", type=positive_int, default=64, help="NASWOT/snip/grad_norm batch (default 64)")
    c.add_argument("--time-limit", type=positive_float, default=None, help="stop scoring after this many seconds")
    c.add_argument("--checkpoint", default=None, type=writable_file, help="JSON file to save scores to and resume from")
    c.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda if available)")
    c.add_argument("--out", default=None, type=writable_file, help="write scores + table as JSON here")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=_correlate)


def _load_table(path):
    from anybudget.nas.benchmark import NB201Table

    try:
        return NB201Table.load(path)
    except FileNotFoundError:
        import os

        if path is not None or os.environ.get("ANYBUDGET_NB201_CSV"):
            raise  # an explicit table that is missing (--table or the env var) is an error, not "no table"
        return None


def _search(args: argparse.Namespace) -> int:
    import statistics

    from anybudget.budget import Budget, BudgetError
    from anybudget.nas.benchmark import DATASETS
    from anybudget.nas.cost import arch_cost

    require("nas", "skimage")  # the proxies' real-image inputs
    if args.seeds < 1:
        raise SystemExit(f"error: --seeds={args.seeds} must be >= 1")
    if args.space == "darts":
        if args.budget:
            raise SystemExit("error: --budget is supported for --space nb201 only")
        from anybudget.nas.darts import DartsSearchConfig, darts_tenas_search

        kw = {"repeat": args.repeat, "init": args.init}
        if args.batch_size:
            kw["batch_size"] = args.batch_size
        cfg = DartsSearchConfig(**kw)
        rows = []
        for seed in range(args.seed, args.seed + args.seeds):
            geno, res = darts_tenas_search(cfg, seed=seed, device=args.device, quiet=args.quiet)
            print(f"seed {seed}: {geno}  ({res.seconds:.1f} s)")
            rows.append({"seed": seed, "genotype": str(geno), "seconds": res.seconds})
        _maybe_write(args.out, {"space": "darts", "runs": rows}, args)
        return 0

    from anybudget.nas.search import TENASConfig, tenas_search

    try:
        budget = Budget(args.budget) if args.budget else None
    except BudgetError as e:
        raise SystemExit(f"error: {e}") from None
    kw = {"repeat": args.repeat, "init": args.init}
    if args.batch_size:
        kw["batch_size"] = args.batch_size
    cfg = TENASConfig(**kw)
    table = _load_table(args.table)
    rows = []
    for seed in range(args.seed, args.seed + args.seeds):
        try:
            res = tenas_search(cfg, seed=seed, budget=budget, device=args.device, quiet=args.quiet)
        except BudgetError as e:
            raise SystemExit(f"error: {e}") from None
        cost = arch_cost(res.arch)
        row = {"seed": seed, "arch": res.arch_string, "index": res.index, "flops": cost.flops,
               "params": cost.params, "seconds": res.seconds}
        line = f"seed {seed}: {res.arch_string}  index {res.index}  {cost.flops / 1e6:.1f} MFLOPs  {cost.params / 1e6:.3f} M params"
        if table is not None:
            row["accuracy"] = table.accuracies(res.index)
            line += "  acc " + " / ".join(f"{row['accuracy'][d]:.2f}" for d in DATASETS)
        print(line + f"  ({res.seconds:.1f} s)")
        rows.append(row)
    if table is not None and len(rows) > 1:
        for d in DATASETS:
            v = [r["accuracy"][d] for r in rows]
            print(f"{d}: {statistics.fmean(v):.2f} +- {statistics.stdev(v):.2f}")
    if table is None:
        print("(no accuracy table: pass --table nats_bench.csv or set ANYBUDGET_NB201_CSV)")
    _maybe_write(args.out, {"space": "nb201", "budget": str(budget) if budget else None, "runs": rows}, args)
    return 0


def _correlate(args: argparse.Namespace) -> int:
    from anybudget.nas.benchmark import DATASETS
    from anybudget.nas.correlate import (
        PROXIES,
        ProxyConfig,
        correlation_table,
        sample_indices,
        score_archs,
    )

    require("nas", "scipy", "skimage")
    proxies = tuple(p.strip() for p in args.proxies.split(",") if p.strip())
    bad = [p for p in proxies if p not in PROXIES]
    if bad:
        raise SystemExit(f"error: unknown proxies {bad}; known: {', '.join(PROXIES)}")
    table = _load_table(args.table)
    if table is None:
        raise SystemExit("error: correlate needs the accuracy table: --table nats_bench.csv or ANYBUDGET_NB201_CSV")
    try:
        idx = sample_indices(args.num_archs, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"error: --num-archs: {e}") from None
    cfg = ProxyConfig(init=args.init, ntk_batch=args.ntk_batch, zc_batch=args.zc_batch)
    scores = score_archs(idx, cfg, seed=args.seed, proxies=proxies, device=args.device,
                         time_limit_s=args.time_limit, checkpoint=args.checkpoint, quiet=args.quiet)
    corr = correlation_table(scores, table)
    print(f"{len(scores['index'])} architectures (inputs: 32x32 photo crops, not CIFAR)")
    print(f"{'proxy':<16}" + "".join(f"{d + ' tau':>20}{'rho':>8}" for d in DATASETS))
    def f(v, w):
        return f"{v:>{w}.3f}" if v is not None else f"{'n/a':>{w}}"

    for p, row in corr.items():
        print(f"{p:<16}" + "".join(f(row[d]["kendall"], 20) + f(row[d]["spearman"], 8) for d in DATASETS))
    _maybe_write(args.out, {"scores": scores, "correlations": corr}, args)
    return 0


def _maybe_write(path, obj, args: argparse.Namespace | None = None) -> None:
    """Write the command's result with its configuration and the device record (date, versions, commit)."""
    if path:
        from anybudget.io import atomic_write_json, command_record

        atomic_write_json(path, command_record(obj, args if args is not None else {}))
        print(f"wrote {path}")
