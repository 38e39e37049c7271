"""The record and the plot of ``fit_grid.py``, written from its state (``fit_state.py``) after every
phase and budget, so that a call stopped or killed at its limit keeps what it did."""

from __future__ import annotations

import math
from pathlib import Path

from anybudget.io import save_figure, write_results
from anybudget.plan.device import compile_settings


def levels(text):
    return [float(x) for x in text.split(",") if x.strip()]


def write_record(run) -> Path:
    """The record of ``run`` (a ``fit_state.Run``) from its state so far (rewritten after every phase and budget: a killed run keeps it)."""
    a, st = run.a, run.st
    grid_rows, checked = st.get(a.grid_key, []), st["checked"]
    lat = st.get("latency")
    full = getattr(run, "full", None)
    metrics = {"complete": a.grid_key in st["done"], "phase": run.call["phase"], "stopped": run.call["stopped"],
               "grid": grid_rows, "summary": summarize(grid_rows, checked), "quality_check": checked,
               "full_model": full and {"label": full["label"], "predicted_mem": full["mem"],
                                       "predicted_latency_s": full["latency_s"], "ppl": full["ppl"]},
               "quality": st.get("quality"),
               "latency_model": lat and lat["model"] | {"calibration": lat["calibration"]},
               "build": st.get("build"), "phases_s": st["phases_s"], "calls": st["calls"],
               "shared_graphs_error": st.get("shared_graphs_error"), "state": st.get("tar"),
               "compile_cache": st.get("compile_cache"),
               "total_s": sum(c.get("total_s", 0.0) for c in st["calls"][:-1]) + run.clock.elapsed()}
    run.call["total_s"] = run.clock.elapsed()
    share = st["share"]
    static = a.serve == "static"
    wl = getattr(run, "wl", None)
    config = {"model": str(a.model) if not a.smoke else "smoke", "workload": wl and wl.__dict__,
              "policies": a.policies.split(","), "kv_percents": levels(a.kv_budgets), "train_steps": a.train_steps,
              "train_batch": a.train_batch, "train_seq": a.train_seq, "serve": a.serve,
              "compile_settings": compile_settings(share) if static else {}, "share_graphs": share,
              "compile_mode": st.get("compile_mode"), "compile_mode_changed": st.get("compile_mode_changed"),
              "quality_protocol": (st.get("quality") or {}).get("source"), "mem_levels": a.mem_levels,
              "latency_levels": a.latency_levels, "latency_scale": a.latency_scale,
              "grid": a.grid, "max_trials": a.max_trials, "margin": a.margin, "smoke": a.smoke,
              "wall_seconds": a.wall_seconds,
              "assumptions": [("quality: ppl(sub-network) x KV ratio measured on the full model, both as "
                               "new-token perplexity after a prefilled prompt (the check measures the plan "
                               "the same way)"),
                              "latency: per decoding step of the whole batch (one new token per sequence)",
                              "weights: the elastic build's, rounded to bfloat16 (what every measurement serves)"]}
    return write_results(a.record, config, metrics, {"single_technique": ["elastic_only", "kv_only"]},
                         out_dir=run.out)


def summarize(results, checked) -> dict:
    """Counts over the grid; ``*_measured_ppl`` compare the plans' streaming perplexity measured here."""
    n = len(results)  # budgets run (fewer than the grid's if the wall-clock guard stopped it)
    met = [e for e in results if "chosen" in e["plan"]]
    out = {"budgets": n, "plans_found": len(met),
           "plans_meet_budget_measured": len(met) == n and all(e["plan"]["trials"][-1]["meets"] for e in met)}
    for key, value in (("predicted_ppl", lambda r: r["predicted_ppl"]),
                       ("measured_ppl", lambda r: checked.get(r["chosen"], {}).get("measured_ppl"))):
        ge = strict = compared = 0
        for e in met:
            mine = value(e["plan"])
            singles = [value(e[k]) for k in ("elastic_only", "kv_only") if "chosen" in e[k]]
            if mine is None or any(v is None for v in singles):
                continue
            best = min(singles) if singles else math.inf
            compared += 1
            ge += mine <= best * (1 + 1e-6)
            strict += mine < best * (1 - 1e-6)
        out[f"compared_{key}"] = compared
        out[f"plan_at_least_best_single_{key}"] = ge
        out[f"plan_strictly_better_{key}"] = strict
    for exact in (True, False):  # exact: 0 up to float rounding; otherwise the combination assumption's error
        errs = [abs(q["measured_ppl"] / q["predicted_ppl"] - 1) for q in checked.values() if q["exact"] == exact]
        out[f"quality_check_{'exact' if exact else 'assumed'}_max_rel_err"] = max(errs) if errs else None
    return out


def plot(results, path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(results)), 4))
    w = 0.27
    for i, (kind, color) in enumerate((("plan", "C0"), ("elastic_only", "C1"), ("kv_only", "C2"))):
        xs = [j + (i - 1) * w for j, e in enumerate(results) if "chosen" in e[kind]]
        ys = [e[kind]["predicted_ppl"] for e in results if "chosen" in e[kind]]
        ax.bar(xs, ys, w, color=color, label=kind.replace("_", " "))
        for j, e in enumerate(results):
            if "chosen" not in e[kind]:
                ax.text(j + (i - 1) * w, 0.02, "none", rotation=90, ha="center", va="bottom", fontsize=7,
                        transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([e["budget"].replace(",", "\n") for e in results], fontsize=7)
    ax.set_ylabel("perplexity (predicted from measured parts)")
    ax.set_yscale("log")
    ax.set_title("anybudget fit: combined plan vs single-technique plans, each measured within its budget", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path, bbox_inches="tight")
