"""Summaries, the table beside the paper's, and the PNGs of run_imp.py."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from anybudget.prune.controls import CONTROLS, sparsest_winning, winning
from anybudget.prune.tasks import TASKS

# Chen et al. 2020, Table 2: sparsest IMP subnetwork (rewound to the pre-trained weights) within
# one std of full BERT-base. Our tasks are analogues, not the same data: rt ~ SST-2 (binary
# sentiment of SST's own sentences), rt_reg ~ STS-B (a regression), MLM ~ MLM.
PAPER = {"MNLI": 0.7, "QQP": 0.9, "STS-B": 0.5, "WNLI": 0.9, "QNLI": 0.7, "MRPC": 0.5, "RTE": 0.6,
         "SST-2": 0.6, "CoLA": 0.5, "SQuAD": 0.4, "MLM": 0.7}
ANALOGUE = {"rt": "SST-2", "rt_reg": "STS-B", "tweets": "SST-2", "amazon": "SST-2", "nyt": "SST-2",
            "consecutive": None, "mlm": "MLM"}


def _stats(v: list[float]) -> dict:
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}


def _key(task: str) -> str:
    return "dev.mlm_accuracy" if task == "mlm" else f"dev.{TASKS[task].metric}"


def summarise(results: list[dict], tasks: list[str], args) -> dict:
    imp = defaultdict(lambda: defaultdict(list))
    imp_test = defaultdict(lambda: defaultdict(list))
    ctrl = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    trans, s24 = defaultdict(list), defaultdict(list)
    skipped, imp_jobs = [], []
    for r in results:
        if "rounds" in r:
            imp_jobs.append({"task": r["task"], "seed": r["seed"], "rounds": len(r["rounds"]),
                             "seconds": r.get("seconds"), "note": r.get("note")})
        if r.get("skipped"):
            skipped.append({k: r.get(k) for k in ("task", "seed", "kind", "round", "skipped", "traceback")
                            if r.get(k) is not None})
            continue
        t = r["task"]
        if "rounds" in r:
            for rd in r["rounds"]:
                s = round(rd["target"], 2)
                imp[t][s].append(rd["metrics"][_key(t)])
                test = rd["metrics"].get(_key(t).replace("dev.", "test."))
                if test is not None:
                    imp_test[t][s].append(test)
        elif "kind" in r:
            ctrl[t][r["kind"]][round(r["sparsity"], 2)].append(r["metrics"][_key(t)])
        elif "mask_path" in r:
            trans[t].append(r["metrics"][_key(t)])
            trans[t + ".sparsity"].append(r["sparsity"])
        else:
            s24[t].append(r["metrics"][_key(t)])
    out = {"tasks": {}, "skipped": skipped, "imp_jobs": imp_jobs}
    for t in ["mlm"] + tasks:
        if 0.0 not in imp[t]:
            continue
        full = imp[t][0.0]
        levels = {s: v for s, v in sorted(imp[t].items()) if s > 0}
        row = {"metric": _key(t), "full": _stats(full),
               "imp": {str(s): {**_stats(v), "win": winning(v, full)} for s, v in levels.items()},
               "imp_test": {str(s): _stats(v) for s, v in sorted(imp_test[t].items())},
               "sparsest_winning": {"imp": sparsest_winning(levels, full)},
               "paper_analogue": ANALOGUE.get(t), "paper_sparsest": PAPER.get(ANALOGUE.get(t) or "")}
        row["controls"] = {}
        for kind, lv in ctrl[t].items():
            row["controls"][kind] = {str(s): {**_stats(v), "win": winning(v, full)} for s, v in sorted(lv.items())}
            row["sparsest_winning"][kind] = sparsest_winning(dict(lv), full)
        if trans[t]:
            s = round(statistics.fmean(trans[t + ".sparsity"]), 2)
            own = imp[t].get(round(args.transfer_round * 0.1, 2), [])
            row["transfer_mlm"] = {"sparsity": s, **_stats(trans[t]), "win": winning(trans[t], full),
                                   "own_ticket": _stats(own) if own else None}
        if s24[t]:
            row["sparse24"] = {**_stats(s24[t]), "win": winning(s24[t], full),
                               "imp_at_50": _stats(imp[t][0.5]) if imp[t].get(0.5) else None}
        out["tasks"][t] = row
    return out


def table(summary: dict) -> str:
    lines = ["task        metric     full             IMP win  " + "  ".join(f"{k[:8]:>8}" for k in
             ("random_pruning", "random_reinit", "oneshot", "shuffled")) + "  paper  MLM->task  2:4"]
    for t, r in summary["tasks"].items():
        sw = r["sparsest_winning"]
        f = r["full"]
        tr = r.get("transfer_mlm")
        s24 = r.get("sparse24")
        lines.append(
            f"{t:<11} {r['metric'][4:14]:<10} {f['mean']:.3f}+-{f['std']:.3f}  {_pct(sw['imp']):>7}  "
            + "  ".join(f"{_pct(sw.get(k, 'n/a')):>8}" for k in ("random_pruning", "random_reinit", "oneshot", "shuffled"))
            + f"  {_pct(r['paper_sparsest']) if r['paper_analogue'] else '-':>5}  "
            + (f"{tr['mean']:.3f}{'*' if tr['win'] else ' '}" if tr else "    -")
            + (f"  {s24['mean']:.3f}{'*' if s24['win'] else ' '}" if s24 else "")
        )
    lines.append("(sparsest winning = highest sparsity within one std of the full model's mean; "
                 "'none' = no level wins; * = wins)")
    return "\n".join(lines)


def _pct(s) -> str:
    if s is None:
        return "none"
    if isinstance(s, str):
        return s
    return f"{100 * s:.0f}%"


# one colour per control in every panel (the record's dict order follows job completion, task by task)
COLOURS = {k: f"C{i}" for i, k in enumerate(CONTROLS)}


def plots(summary: dict, out: Path) -> None:
    """imp_curves.png and transfer.png; each one that fails is one warning line (the JSON is written first)."""
    from anybudget.io import write_plot

    write_plot(out / "imp_curves.png", lambda p: _imp_curves(summary, p))
    if any(r.get("transfer_mlm") for r in summary["tasks"].values()):
        write_plot(out / "transfer.png", lambda p: _transfer(summary, p))


def _imp_curves(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anybudget.io import save_figure

    tasks = list(summary["tasks"])
    if not tasks:
        return
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        r = summary["tasks"][t]
        f = r["full"]
        ax.axhspan(f["mean"] - f["std"], f["mean"] + f["std"], color="0.85", label="full +- 1 std")
        xs = [float(s) for s in r["imp"]]
        ax.errorbar(xs, [v["mean"] for v in r["imp"].values()], [v["std"] for v in r["imp"].values()],
                    marker="o", ms=3, label="IMP (rewind to pre-trained)", color=COLOURS["imp"])
        for kind in sorted(r["controls"], key=lambda k: CONTROLS.index(k) if k in CONTROLS else len(CONTROLS)):
            lv = r["controls"][kind]
            ax.errorbar([float(s) for s in lv], [v["mean"] for v in lv.values()], [v["std"] for v in lv.values()],
                        marker="x", ms=4, ls="--", label=kind, color=COLOURS.get(kind, "k"))
        sw = r["sparsest_winning"]["imp"]
        if sw is not None:
            ax.plot([sw], [r["imp"][str(sw)]["mean"]], marker="*", ms=14, color="gold", mec="k",
                    label=f"sparsest winning {100 * sw:.0f}%")
        ax.set_title(f"{t} ({r['metric'][4:]})")
        ax.set_xlabel("sparsity of the encoder matrices")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    used = list(axes.flat)[:len(tasks)]
    max(used, key=lambda a: len(a.get_legend_handles_labels()[1])).legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _transfer(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anybudget.io import save_figure

    tr = [(t, r) for t, r in summary["tasks"].items() if r.get("transfer_mlm")]
    if tr:
        fig, ax = plt.subplots(figsize=(1.6 * len(tr) + 2, 3.4))
        for i, (t, r) in enumerate(tr):
            vals = [("full", r["full"]), ("MLM mask", r["transfer_mlm"]), ("own ticket", r["transfer_mlm"]["own_ticket"])]
            for j, (lab, v) in enumerate(vals):
                if v:
                    ax.bar(i + 0.27 * (j - 1), v["mean"], 0.25, yerr=v["std"], color=f"C{j}", label=lab if i == 0 else None)
        ax.set_xticks(range(len(tr)), [t for t, _ in tr])
        ax.set_ylabel("dev metric")
        ax.set_title(f"MLM ticket ({100 * tr[0][1]['transfer_mlm']['sparsity']:.0f}%) transferred vs each task's own")
        lo = min(r["full"]["mean"] for _, r in tr)
        ax.set_ylim(max(0.0, lo - 0.25), None)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, path, dpi=110)
