"""Parts of benchmarks/elastic/run.py: the static-router sweep over 8 measured latency targets, the
dynamic router's measured point, and the plot. Every latency here is a measured forward."""

from __future__ import annotations

import math

import torch

from anybudget import elastic as E
from anybudget.elastic.surrogate import measure_loss

FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def router_sweep(em, router, table, uniform, meas, measured, remeasure, elastic_ppl, windows, calib):
    """8 targets spread over the *measured* range [smallest, full]; per target the router with the
    calibration check (ours), the router alone (Flextron), the largest fitting uniform width, and the
    uniform width of lowest test perplexity among those that fit (hindsight). A candidate fits when
    its measured latency (``measured``, cached in ``meas``) is within the target; each pick is then
    timed again by ``remeasure`` (no cache; ``remeasured_ms``) and the largest relative spread of the
    two timings is the noise."""
    scores: dict[str, float] = {}

    def score(sub):
        if str(sub) not in scores:
            scores[str(sub)] = measure_loss(em, sub, calib)
        return scores[str(sub)]

    def ppl(sub):
        if str(sub) not in elastic_ppl:
            elastic_ppl[str(sub)] = E.perplexity(em, windows, sub)
        return elastic_ppl[str(sub)]

    lo = measured(em.smallest())
    hi = max(lo, measured(em.full()))  # (a noisy CPU can time the full model below the smallest)
    rows, picks = [], {}
    for f in FRACTIONS:
        target = lo + f * (hi - lo)
        budget = f"latency={target!r}s"
        chosen = {
            "router": E.route(em, budget, router=router, table=table, calib=score, measure=measured),
            "router_raw": E.route(em, budget, router=router, table=table, measure=measured),
            "uniform": E.route(em, budget, table=table, uniform=True, measure=measured),
        }
        fits = [s for s in uniform if measured(s) <= target]
        chosen["uniform_best"] = min(fits, key=ppl)
        chosen["uniform_best_calib"] = min(fits, key=score)
        row = {"fraction": f, "target_ms": target * 1e3}
        for kind, s in chosen.items():
            picks[str(s)] = s
            row[kind] = {"subnet": s.to_dict(), "label": str(s), "lut_ms": table.cost(s) * 1e3,
                         "measured_ms": measured(s) * 1e3, "meets_measured": measured(s) <= target,
                         "params": E.param_count(em, s), "ppl": ppl(s), "calib_loss": score(s)}
        rows.append(row)
    again = {k: remeasure(s) for k, s in picks.items()}
    noise = max(abs(again[k] - meas[k]) / meas[k] for k in again)
    for row in rows:
        target = row["target_ms"] / 1e3
        for kind in ("router", "router_raw", "uniform", "uniform_best", "uniform_best_calib"):
            r = row[kind]
            r["remeasured_ms"] = again[r["label"]] * 1e3
            r["meets_remeasured"] = again[r["label"]] <= target
            r["meets_remeasured_within_noise"] = again[r["label"]] <= target * (1 + noise)
    return rows, noise


def sweep_metrics(sweep, noise, full_label):
    def count(kind, other, key="ppl"):
        return sum(r[kind][key] <= r[other][key] * (1 + 1e-9) for r in sweep)

    return {
        "router_meets_all_measured": all(r["router"]["meets_measured"] for r in sweep),
        "router_meets_all_remeasured": all(r["router"]["meets_remeasured"] for r in sweep),
        "router_meets_all_remeasured_within_noise": all(r["router"]["meets_remeasured_within_noise"] for r in sweep),
        "timing_noise_rel": noise,
        "router_at_least_uniform": count("router", "uniform"),
        "router_at_least_best_uniform": count("router", "uniform_best"),
        "router_at_least_best_uniform_calib": count("router", "uniform_best_calib", "calib_loss"),
        "router_raw_at_least_best_uniform": count("router_raw", "uniform_best"),
        "router_raw_meets_all_measured": all(r["router_raw"]["meets_measured"] for r in sweep),
        "uniform_meets_all_measured": all(r["uniform"]["meets_measured"] for r in sweep),
        "full_target_returns_full": sweep[-1]["router"]["label"] == full_label,
    }


def dynamic_point(em, em16, dyn, dstats, table, windows, ids, timed_forward, smoke, dev):
    """Perplexity, expected LUT latency and the *measured* forward latency (bf16 copy, router on)."""
    target = (dstats["min_latency"] + dstats["max_latency"]) / 2
    acc_lat, nll, n = 0.0, 0.0, 0
    with torch.no_grad():
        for w in windows:
            w = w.to(dev)
            with E.dynamic_routing(em, dyn, target, table) as acc, E.evaluate.autocast_for(dev):
                nll += float(E.evaluate.lm_loss(em.model(input_ids=w[:, :-1], use_cache=False).logits, w)) * w[:, 1:].numel()
            acc_lat += float(acc["latency"]) * w[:, 1:].numel()
            n += w[:, 1:].numel()
        with E.dynamic_routing(em16, dyn, target, table):
            t_dyn = timed_forward(em16.model, ids, smoke)
    return {"target_ms": target * 1e3, "expected_lut_ms": acc_lat / n * 1e3, "measured_ms": t_dyn * 1e3,
            "ppl": math.exp(nll / n),
            "accounting": "expected_lut_ms: fixed + sum over layers of the mean over tokens of LUT[layer][full KV][token's "
                          "MLP width]; measured_ms: the same forward as the static points (bf16, CUDA events) with the "
                          "router's hooks on; masking computes the full width, so it is not below the full model"}


def plot(path, points, sweep, dynamic, exported):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anybudget.io import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, x, label in ((axes[0], "measured_ms", "measured latency (ms)"), (axes[1], "params", "parameters")):
        for key, name, mark in (("elastic_ppl", "elastic (ours)", "o"), ("pruned_ppl", "permute + prune only", "s"),
                                ("scratch_ppl", "from scratch, same tokens", "^")):
            pts = [(p[x], p[key]) for p in points if p[key] is not None]
            ax.scatter(*zip(*pts), marker=mark, label=name) if pts else None
        rx = [(r["router"][x], r["router"]["ppl"]) for r in sweep]
        ax.plot(*zip(*sorted(rx)), "k--x", label="static router (8 targets)")
        if x == "measured_ms":
            ax.scatter([dynamic["measured_ms"]], [dynamic["ppl"]], marker="*", s=150, label="dynamic router (measured)")
            ax.scatter([dynamic["expected_lut_ms"]], [dynamic["ppl"]], marker="*", s=150, facecolors="none",
                       edgecolors="C4", label="dynamic router (LUT accounting)")
            ax.scatter([e["measured_ms"] for e in exported], [e["ppl"] for e in exported], marker="+", s=80,
                       label="exported dense")
        ax.set_xlabel(label)
        ax.set_ylabel("test perplexity")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Flextron elastic sub-networks")
    save_figure(fig, path, dpi=110, bbox_inches="tight")
