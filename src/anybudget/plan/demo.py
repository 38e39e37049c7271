"""``anybudget demo``'s second part: ``fit`` on the embedded reference LM for two budgets, in seconds.

Quick build path (no elastic training, stated in the output): importance + permutation of the
embedded model on the held-out passage (``anybudget.elastic.make_elastic``), so its sub-networks
are pruned-only ones; their perplexity is measured on the passage; the KV quality ratios are the
ones the demo's first part just measured. The two budgets are memory budgets (the memory model is
analytic, so no latency model has to be measured on a CPU the demo shares); each plan's choice is
still served and measured (its ms per step is shown). ``anybudget elastic build`` makes the trained
family a real plan should use; ``anybudget fit`` adds per-token latency budgets.
"""

from __future__ import annotations

import math
import time

import torch

from anybudget.plan.costs import Candidate, Quality, ServingWorkload
from anybudget.plan.fit import fit, predict_all

__all__ = ["plan_demo"]


def plan_demo(lm, ids: torch.Tensor, kv_ppl: dict, kv_percent: float, workload: ServingWorkload | None = None) -> list:
    """Plans for two budgets on ``lm`` (a loaded Llama-family model; permuted in place, its function
    unchanged). ``ids``: (1, N) held-out tokens; ``kv_ppl``: ``{"full": ppl, "h2o": ppl, "local": ppl}``
    streamed at ``kv_percent``. Prints the tables; returns the plans."""
    from anybudget.elastic import make_elastic, perplexity
    from anybudget.elastic.router import uniform_configs

    t0 = time.perf_counter()
    wl = workload or ServingWorkload(prompt=128, new_tokens=4, batch=4, dtype="float32")
    n = ids.shape[1] // 2
    em = make_elastic(lm, [ids[:, :n], ids[:, n:2 * n]])
    windows = [ids[:, : min(129, ids.shape[1])]]
    elastic_ppl = {Candidate(s.layers[0].kv_groups, s.layers[0].mlp_width).subnet_label: perplexity(em, windows, s)
                   for s in uniform_configs(em)}
    pct = float(kv_percent)
    policies = tuple(p for p in ("h2o", "local") if p in kv_ppl)
    ratio = {Candidate(1, 1, p, pct).kv_label: kv_ppl[p] / kv_ppl["full"] for p in policies}
    quality = Quality(elastic_ppl, ratio, {"elastic": "pruned only (no elastic training)", "kv": "demo part 1"})
    rows = predict_all(em, wl, quality, None, policies, (pct,))
    full = next(r for r in rows if r["label"] == Candidate(max(em.kv_choices), max(em.mlp_choices)).label)
    budgets = [f"mem={math.ceil(f * full['mem'] / 2**20)}MiB" for f in (0.8, 0.6)]
    print(f"\nPart 2: anybudget fit's planner on this model: elastic sub-network x KV cache for a memory budget, "
          f"then measured. Elastic family by importance + permutation only (no elastic training: small "
          f"sub-networks lose more than trained ones). Workload: {wl.batch} sequences of {wl.prompt} prompt + "
          f"{wl.new_tokens} new tokens; the full model with the full cache needs {full['mem'] / 2**20:.1f} MiB (predicted).")
    plans = []
    for b in budgets:
        p = fit(em, b, wl, quality, None, policies, (pct,), measure=_measure)
        print()
        print(p.format_table(rows=5))
        plans.append(p)
    print(f"(plans in {time.perf_counter() - t0:.1f} s; `anybudget fit --model DIR ...` does this for a built elastic model)")
    return plans


def _measure(model, c, wl):
    from anybudget.plan.device import measure_candidate

    return measure_candidate(model, c, wl, repeat=1, warmup=False)
