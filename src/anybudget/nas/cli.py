"""``anybudget nas search`` and ``anybudget nas correlate``. Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse

from anybudget.cli_types import (
    add_dataclass_args,
    budget,
    dataclass_from_args,
    device,
    existing_file,
    positive_float,
    positive_int,
    require,
    writable_file,
)

PROXY_NAMES = ("ntk_cond", "linear_regions", "naswot", "synflow", "snip", "grad_norm", "params")
# --smoke: the whole nb201 search (every round, both proxies) on a 1-channel super-network and tiny
# batches, to check an install in seconds; the architecture it finds says nothing
SMOKE_TENAS = {"batch_size": 4, "repeat": 1, "C": 1, "region_samples": 100, "region_batch": 100, "image_pool": 8}


def register(sub) -> None:
    from anybudget.nas.correlate import ProxyConfig
    from anybudget.nas.darts import DartsSearchConfig
    from anybudget.nas.search import INITS, TENASConfig

    nas = sub.add_parser("nas", help="TE-NAS training-free architecture search on NAS-Bench-201")
    nsub = nas.add_subparsers(dest="nas_command", metavar="VERB", required=True)

    s = nsub.add_parser("search", help="TE-NAS search (optionally under a FLOPs/params/latency budget)")
    s.add_argument("--space", default="nb201", choices=("nb201", "darts"), help="search space (default nb201)")
    s.add_argument("--budget", default=None, type=budget, help="one of flops=100M, params=0.8M, latency=5ms (nb201 only)")
    s.add_argument("--seeds", type=positive_int, default=1, help="number of seeds 0..S-1 to run (default 1)")
    s.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    s.add_argument("--table", default=None, type=existing_file, help="nats_bench.csv for real accuracies (or env ANYBUDGET_NB201_CSV)")
    s.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda if available)")
    s.add_argument("--out", default=None, type=writable_file, help="write the results as JSON here")
    s.add_argument("--checkpoint", default=None, type=writable_file,
                   help="JSON file to save finished seeds and rounds to and resume from "
                        "(default with --out: OUT's name + .checkpoint.json)")
    # TENASConfig / DartsSearchConfig hold the defaults (the reference launcher's)
    add_dataclass_args(s, TENASConfig, only=("init", "repeat"), title="TE-NAS (TENASConfig)", overrides={
        "init": {"choices": INITS, "help": "kaiming_normal (paper) or reference (what the released code runs)"},
        "repeat": {"type": positive_int, "help": "draws per candidate op"}})
    s.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"NTK batch (default {TENASConfig.batch_size} nb201, {DartsSearchConfig.batch_size} darts)")
    s.add_argument("--smoke", action="store_true",
                   help="nb201: the same search on a 1-channel super-network, NTK batch 4, 1 draw (seconds on a CPU; "
                        "for checking an install, not for results)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_search)

    c = nsub.add_parser("correlate", help="Kendall tau / Spearman of each proxy vs the real accuracies")
    c.add_argument("--num-archs", type=int, default=1000, help="architectures sampled by seed (default 1000; 15625 = all)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--table", default=None, type=existing_file, help="nats_bench.csv (or env ANYBUDGET_NB201_CSV)")
    c.add_argument("--proxies", default=",".join(PROXY_NAMES), help="comma-separated subset of " + ",".join(PROXY_NAMES))
    add_dataclass_args(c, ProxyConfig, only=("init", "ntk_batch", "zc_batch"), title="proxies (ProxyConfig)", overrides={
        "init": {"choices": ("kaiming_normal", "pytorch_default")},
        "ntk_batch": {"type": positive_int, "help": "NTK batch (the paper's)"},
        "zc_batch": {"type": positive_int, "help": "NASWOT/snip/grad_norm batch"}})
    c.add_argument("--time-limit", type=positive_float, default=None, help="stop scoring after this many seconds")
    c.add_argument("--checkpoint", default=None, type=writable_file,
                   help="JSON file to save scores to and resume from (default with --out: OUT's name + .checkpoint.json)")
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
        if args.smoke:
            raise SystemExit("error: --smoke is supported for --space nb201 only")
        if args.budget:
            raise SystemExit("error: --budget is supported for --space nb201 only")
        from anybudget.nas.darts import DartsSearchConfig, darts_tenas_search

        cfg = dataclass_from_args(DartsSearchConfig, args, **_batch(args))
        ck = _Seeds(_checkpoint(args), {"space": "darts", "config": cfg, "budget": None})
        rows = []
        for seed in range(args.seed, args.seed + args.seeds):
            row = ck.done(seed)
            if row is None:
                geno, res = darts_tenas_search(cfg, seed=seed, device=args.device, quiet=args.quiet)
                row = ck.add({"seed": seed, "genotype": str(geno), "seconds": res.seconds})
            print(f"seed {seed}: {row['genotype']}  ({row['seconds']:.1f} s)")
            rows.append(row)
        _maybe_write(args.out, {"space": "darts", "runs": rows}, args)
        return 0

    from anybudget.nas.search import TENASConfig, tenas_search

    try:
        budget = Budget(args.budget) if args.budget else None
    except BudgetError as e:
        raise SystemExit(f"error: {e}") from None
    smoke = {k: v for k, v in SMOKE_TENAS.items() if getattr(args, k, None) is None} if args.smoke else {}
    cfg = dataclass_from_args(TENASConfig, args, **smoke, **_batch(args))
    table = _load_table(args.table)
    ck = _Seeds(_checkpoint(args), {"space": "nb201", "config": cfg, "budget": str(budget) if budget else None})
    rows = []
    for seed in range(args.seed, args.seed + args.seeds):
        row = ck.done(seed)
        if row is None:
            try:
                res = tenas_search(cfg, seed=seed, budget=budget, device=args.device, quiet=args.quiet,
                                   checkpoint=ck.rounds_path(seed))
            except BudgetError as e:
                raise SystemExit(f"error: {e}") from None
            cost = arch_cost(res.arch)
            row = ck.add({"seed": seed, "arch": res.arch_string, "index": res.index, "flops": cost.flops,
                          "params": cost.params, "seconds": res.seconds})
        line = (f"seed {seed}: {row['arch']}  index {row['index']}  {row['flops'] / 1e6:.1f} MFLOPs  "
                f"{row['params'] / 1e6:.3f} M params")
        if table is not None:
            row["accuracy"] = table.accuracies(row["index"])
            line += "  acc " + " / ".join(f"{d} {row['accuracy'][d]:.2f}" for d in DATASETS)
        print(line + f"  ({row['seconds']:.1f} s)")
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
    cfg = dataclass_from_args(ProxyConfig, args)
    checkpoint = _checkpoint(args)
    scores = score_archs(idx, cfg, seed=args.seed, proxies=proxies, device=args.device,
                         time_limit_s=args.time_limit, checkpoint=checkpoint, quiet=args.quiet)
    corr = correlation_table(scores, table)
    n = len(scores["index"])
    print(f"{n} architectures (inputs: 32x32 photo crops, not CIFAR)")
    if n < len(idx):
        again = f"; rerun with the same --checkpoint ({checkpoint}) to go on" if checkpoint else ""
        print(f"stopped by --time-limit after {n} of {len(idx)} architectures{again}")
    print(f"{'proxy':<16}" + "".join(f"{d + ' tau':>20}{'rho':>8}" for d in DATASETS))
    def f(v, w):
        return f"{v:>{w}.3f}" if v is not None else f"{'n/a':>{w}}"

    for p, row in corr.items():
        print(f"{p:<16}" + "".join(f(row[d]["kendall"], 20) + f(row[d]["spearman"], 8) for d in DATASETS))
    _maybe_write(args.out, {"scores": scores, "correlations": corr}, args)
    return 0


def _batch(args) -> dict:
    return {"batch_size": args.batch_size} if args.batch_size else {}


def _checkpoint(args):
    """--checkpoint, else OUT's name + .checkpoint.json beside --out (checked writable), else None."""
    if args.checkpoint or not args.out:
        return args.checkpoint
    from pathlib import Path

    p = Path(args.out)
    p = p.with_name(p.name.removesuffix(".json") + ".checkpoint.json")
    try:
        writable_file(str(p))
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"--checkpoint (default beside --out): {e}") from None
    return str(p)


class _Seeds:
    """The search command's checkpoint: finished seeds' rows, and per-seed round files beside it.

    It stores the space, configuration and budget; another run's file is refused naming the keys."""

    def __init__(self, path, key: dict):
        from dataclasses import asdict

        from anybudget.io import _jsonable, check_checkpoint_config, read_json

        self.path = path
        self.key = _jsonable({**key, "config": asdict(key["config"])})
        self.rows: dict = {}
        if path is not None:
            import os

            if os.path.exists(path):
                state = read_json(path)
                check_checkpoint_config(path, {k: state.get(k) for k in self.key}, self.key, "--checkpoint",
                                        "use another --checkpoint, or delete it to start over")
                self.rows = {int(r["seed"]): r for r in state.get("runs", [])}

    def done(self, seed: int):
        return self.rows.get(seed)

    def rounds_path(self, seed: int):
        return None if self.path is None else f"{self.path}.seed{seed}.rounds.json"

    def add(self, row: dict) -> dict:
        self.rows[row["seed"]] = row
        if self.path is not None:
            import os

            from anybudget.io import atomic_write_json

            atomic_write_json(self.path, {**self.key, "runs": [self.rows[k] for k in sorted(self.rows)]})
            rounds = self.rounds_path(row["seed"])
            if os.path.exists(rounds):
                os.unlink(rounds)  # the seed's row holds its result now
        return dict(row)


def _maybe_write(path, obj, args: argparse.Namespace | None = None) -> None:
    """Write the command's result with its configuration and the device record (date, versions, commit)."""
    if path:
        from anybudget.io import atomic_write_json, command_record

        atomic_write_json(path, command_record(obj, args if args is not None else {}))
        print(f"wrote {path}")
