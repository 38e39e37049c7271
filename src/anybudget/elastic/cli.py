"""``anybudget elastic build | export | eval``. Flags of the training / router / workload settings are
generated from their dataclasses (one flag per field, the dataclass holds the defaults)."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from anybudget.cli_types import (
    add_dataclass_args,
    budget,
    dataclass_from_args,
    device,
    existing_file,
    folder_with,
    positive_int,
    writable_dir,
)


def register(sub) -> None:
    from anybudget.elastic.latency import Workload
    from anybudget.elastic.model import ElasticSpace
    from anybudget.elastic.pipeline import ElasticBuildConfig
    from anybudget.elastic.router import RouterTrainConfig
    from anybudget.elastic.train import ElasticTrainConfig

    el = sub.add_parser("elastic", help="Flextron elastic sub-networks: build, export for a budget, evaluate")
    es = el.add_subparsers(dest="elastic_command", metavar="VERB", required=True)

    b = es.add_parser("build", help="importance + permutation, elastic training, latency table, router (resumable)")
    b.add_argument("--model", required=True, type=folder_with("config.json", "a Hugging Face model folder"),
                   help="Hugging Face model folder (Llama/Mistral/Qwen2/Qwen3)")
    b.add_argument("--text", required=True, type=existing_file, help="training text file (or a .u16.xz token file)")
    b.add_argument("--out", required=True, type=writable_dir, help="output folder; re-running resumes unfinished phases")
    b.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda if available)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_args(b, ElasticBuildConfig, overrides={
        "batch": {"type": positive_int, "help": "sequences per step"}, "seq": {"type": positive_int, "help": "tokens per sequence"},
        "calib_batches": {"type": positive_int, "help": "calibration batches for importance"}})
    add_dataclass_args(b, ElasticSpace)
    add_dataclass_args(b, ElasticTrainConfig, "train-")
    add_dataclass_args(b, RouterTrainConfig, "router-")
    add_dataclass_args(b, Workload, "workload-")
    b.set_defaults(func=_build)

    x = es.add_parser("export", help="the sub-network for a budget as a plain smaller model folder")
    x.add_argument("--model", required=True, type=folder_with("elastic.json", "a folder written by `anybudget elastic build`"),
                   help="folder written by `anybudget elastic build`")
    x.add_argument("--budget", required=True, type=budget, help="latency=20ms, mem=2GiB or params=20M")
    x.add_argument("--out", required=True, type=writable_dir, help="folder for the exported model (save_pretrained)")
    x.add_argument("--heterogeneous", default="uniform", choices=("uniform", "cover", "error"),
                   help="uniform: route among uniform configs (default); cover: router's pick, exported as "
                        "its smallest uniform cover; error: router's pick, fail if heterogeneous")
    x.add_argument("--calib-text", default=None, type=existing_file,
                   help="held-out text (or .u16.xz tokens; never the test set): the pick is the lowest loss on it "
                        "among the router's answers and every uniform width within the budget (ours, beyond Flextron)")
    x.add_argument("--calib-seq", type=positive_int, default=256, help="tokens per calibration window")
    x.add_argument("--calib-tokens", type=positive_int, default=65_536, help="calibration tokens at most")
    x.set_defaults(func=_export)

    v = es.add_parser("eval", help="perplexity and costs of uniform sub-networks and router picks: table + PNG")
    v.add_argument("--model", required=True, type=folder_with("elastic.json", "a folder written by `anybudget elastic build`"),
                   help="folder written by `anybudget elastic build`")
    v.add_argument("--text", required=True, type=existing_file, help="evaluation text file (or a .u16.xz token file)")
    v.add_argument("--out", required=True, type=writable_dir, help="folder for elastic_eval.json and elastic_eval.png")
    add_dataclass_args(v, ElasticBuildConfig, only=("batch", "seq"), title="evaluation windows", overrides={
        "batch": {"type": positive_int, "help": "sequences per forward"}, "seq": {"type": positive_int, "help": "tokens per window"}})
    v.add_argument("--max-tokens", type=positive_int, default=200_000, help="evaluate on at most this many tokens")
    v.add_argument("--device", default=None, type=device)
    v.set_defaults(func=_eval)


def _build(args) -> int:
    from anybudget.elastic.latency import Workload
    from anybudget.elastic.model import ElasticSpace
    from anybudget.elastic.pipeline import ElasticBuildConfig, build_elastic, tokens_from_file
    from anybudget.elastic.router import RouterTrainConfig
    from anybudget.elastic.train import ElasticTrainConfig

    build = dataclass_from_args(ElasticBuildConfig, args)
    space = dataclass_from_args(ElasticSpace, args)
    train = dataclass_from_args(ElasticTrainConfig, args, "train_")
    router = dataclass_from_args(RouterTrainConfig, args, "router_")
    wl = dataclass_from_args(Workload, args, "workload_") if any(
        getattr(args, "workload_" + f.name) is not None for f in dataclasses.fields(Workload)) else None
    tokens = tokens_from_file(args.text, args.model)
    meta = build_elastic(args.model, tokens, args.out, train, router, wl, space, build,
                         device=args.device, quiet=args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"built {args.out}: phases {', '.join(meta['phases'])}")
    return 0


def _export(args) -> int:
    from anybudget.budget import BudgetError
    from anybudget.elastic.export import export
    from anybudget.elastic.latency import param_count
    from anybudget.elastic.pipeline import load_elastic
    from anybudget.elastic.router import route

    em, table, router = load_elastic(args.model, device="cpu")
    calib = None
    if args.calib_text is not None:
        from anybudget.elastic.data import eval_windows
        from anybudget.elastic.pipeline import tokens_from_file

        tokens = tokens_from_file(args.calib_text, Path(args.model) / "model")
        if len(tokens) < args.calib_seq + 1:
            raise SystemExit(f"error: --calib-text: {args.calib_text!r} holds {len(tokens)} tokens; --calib-seq "
                             f"{args.calib_seq} needs at least {args.calib_seq + 1}")
        calib = eval_windows(tokens, args.calib_seq, 8, args.calib_tokens)
    try:
        sub = route(em, args.budget, router=router, table=table, uniform=args.heterogeneous == "uniform", calib=calib)
        small = export(em, sub, heterogeneous="cover" if args.heterogeneous == "cover" else "error")
    except (BudgetError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    small.save_pretrained(args.out)
    src = Path(args.model) / "model"
    from anybudget.elastic.pipeline import TOKENIZER_FILES

    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (Path(args.out) / name).exists():
            (Path(args.out) / name).write_bytes((src / name).read_bytes())
    lat = f", LUT latency {table.cost(sub) * 1e3:.3f} ms" if table is not None else ""
    print(f"{args.budget}: {sub}; {param_count(em, sub) / 1e6:.2f} M params{lat} -> {args.out}")
    return 0


def eval_targets(lo: float, hi: float) -> list[tuple[float, str]]:
    """The router rows' latency targets of ``elastic eval``: 1/8 .. 8/8 of the way from the smallest
    sub-network's table cost ``lo`` to the full model's ``hi`` (seconds), each with its budget text
    rounded up to whole ns (rounding down put 1/8 below ``lo`` when the table was nearly flat: a tiny
    model timed on a busy CPU)."""
    out = []
    for f in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0):
        target = lo + f * max(hi - lo, 0.0)
        out.append((target, f"latency={math.ceil(target * 1e9)}ns"))
    return out


def _eval(args) -> int:
    from anybudget.elastic.data import eval_windows
    from anybudget.elastic.evaluate import perplexity
    from anybudget.elastic.latency import param_count
    from anybudget.elastic.pipeline import ElasticBuildConfig, load_elastic, tokens_from_file
    from anybudget.elastic.router import route, uniform_configs
    from anybudget.io import command_record, save_figure, write_json_and_plot

    em, table, router = load_elastic(args.model, device=args.device)
    ev = dataclass_from_args(ElasticBuildConfig, args)
    windows = eval_windows(tokens_from_file(args.text, Path(args.model) / "model"), ev.seq, ev.batch, args.max_tokens)
    rows = []
    for sub in uniform_configs(em):
        rows.append({"kind": "uniform", "subnet": str(sub), "params": param_count(em, sub),
                     "latency_ms": table.cost(sub) * 1e3 if table else None, "ppl": perplexity(em, windows, sub)})
    if router is not None and table is not None:
        for target, budget_text in eval_targets(table.cost(em.smallest()), table.cost(em.full())):
            sub = route(em, budget_text, router=router, table=table)
            rows.append({"kind": "router", "subnet": str(sub), "params": param_count(em, sub), "target_ms": target * 1e3,
                         "latency_ms": table.cost(sub) * 1e3, "ppl": perplexity(em, windows, sub)})
    print(f"{'kind':8} {'params(M)':>9} {'LUT ms':>8} {'ppl':>8}  subnet")
    for r in rows:
        lat = f"{r['latency_ms']:8.3f}" if r["latency_ms"] is not None else f"{'-':>8}"
        print(f"{r['kind']:8} {r['params'] / 1e6:9.2f} {lat} {r['ppl']:8.2f}  {r['subnet']}")
    out = Path(args.out)

    def draw(path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for kind, mark in (("uniform", "o"), ("router", "x")):
            pts = [(r["latency_ms"] if r["latency_ms"] is not None else r["params"] / 1e6, r["ppl"])
                   for r in rows if r["kind"] == kind]
            if pts:
                ax.scatter(*zip(*pts), marker=mark, label=kind)
        ax.set_xlabel("LUT latency (ms)" if table else "parameters (M)")
        ax.set_ylabel("perplexity")
        ax.legend()
        save_figure(fig, path, bbox_inches="tight")

    jp, png = write_json_and_plot(out / "elastic_eval.json", command_record({"rows": rows}, args),
                                  out / "elastic_eval.png", draw)
    print(f"wrote {jp}" + (f" and {png}" if png else ""))
    return 0
