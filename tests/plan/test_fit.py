"""fit: choice, fall-back when a measurement breaks the budget, errors, and the saved plan's round trip."""

from __future__ import annotations

import json

import pytest
import torch
from plan_helpers import PCT, POL, REFLM, small_workload

from anybudget.budget import BudgetError
from anybudget.kv import cache_kwargs, enable
from anybudget.plan import (
    Candidate,
    LatencyModel,
    NotElasticError,
    Plan,
    Quality,
    ServingWorkload,
    export_candidate,
    fit,
    load_elastic_folder,
    load_plan,
    load_planned_model,
    measure_candidate,
    write_plan,
)

WL = small_workload()


def quality(em) -> Quality:
    # wider is better; h2o beats local; smaller budgets cost quality
    ppl = {f"kv{g}/mlp{w}": 100.0 / (g * w) ** 0.5 for g in em.kv_choices for w in em.mlp_choices}
    ratio = {"h2o@50%": 1.05, "h2o@20%": 1.2, "local@50%": 1.1, "local@20%": 1.4}
    return Quality(ppl, ratio, {"kind": "synthetic"})


def latency(em, per_token: float = 1e-6) -> LatencyModel:
    # each layer costs 1 ms per KV group and 1 ms per 64 MLP neurons, + per_token per cached token
    def layer(ctx):
        return {f"{g}/{w}": 1e-3 * (g + w / 64) + per_token * ctx for g in em.kv_choices for w in em.mlp_choices}

    return LatencyModel(em.num_layers, {"ctx": 10, "fixed": 1e-3, "layer": layer(10)},
                        {"ctx": 110, "fixed": 1e-3, "layer": layer(110)})


def injected(over: dict):
    """A measure() reporting 0 bytes and 0 s, except (bytes, seconds) for the labels in ``over``."""
    calls = []

    def measure(model, c, wl):
        calls.append(c.label)
        b, s = over.get(c.label, (0, 0.0))
        return {"step_s": s, "peak_bytes": b}

    return measure, calls


def test_best_predicted_candidate_is_measured_and_chosen(em):
    measure, calls = injected({})
    p = fit(em, "mem=1GiB", WL, quality(em), None, POL, PCT, measure=measure)
    assert p.candidate.label == "kv2/mlp128 full" and calls == ["kv2/mlp128 full"]
    assert p.trials[0]["meets"] and p.measured["peak_bytes"] == 0
    # the table lists candidates predicted to fit, best predicted perplexity first
    ppl = [r["ppl"] for r in p.table]
    assert ppl == sorted(ppl) and p.table[0]["label"] == p.candidate.label


def test_fallback_when_a_measurement_breaks_the_budget(em):
    q, lat = quality(em), latency(em)
    first = fit(em, "latency=8.5ms", WL, q, lat, POL, PCT, measure=injected({})[0])
    assert first.predicted["latency_s"] <= 0.0085 < lat.step(Candidate(2, 128), WL)
    # the same budget, but the first choice measures over it: the next candidate of the table is chosen
    measure, calls = injected({first.candidate.label: (0, 0.020)})
    p = fit(em, "latency=8.5ms", WL, q, lat, POL, PCT, measure=measure)
    assert calls == [first.candidate.label, first.table[1]["label"]]
    assert p.candidate.label == first.table[1]["label"]
    assert [t["meets"] for t in p.trials] == [False, True]
    # a memory measurement over the budget falls back the same way
    mem = fit(em, "mem=1GiB", WL, q, None, POL, PCT, measure=injected({"kv2/mlp128 full": (2**31, 0.0)})[0])
    assert mem.candidate.label != "kv2/mlp128 full" and not mem.trials[0]["meets"]

    def always_over(model, c, wl):
        return {"step_s": 1.0, "peak_bytes": 0}

    with pytest.raises(BudgetError, match="3 best candidates .* broke it when measured"):
        fit(em, "latency=8.5ms", WL, q, lat, POL, PCT, max_trials=3, measure=always_over)


def test_no_candidate_names_the_smallest_reachable(em):
    with pytest.raises(BudgetError, match=r"smallest memory reachable is mem=\d+MiB .*smallest latency latency=[\d.]+ms"):
        fit(em, "mem=1KiB,latency=1us", WL, quality(em), latency(em), POL, PCT, measure=injected({})[0])
    with pytest.raises(BudgetError, match=r"mem=\.\.\. .*latency="):
        fit(em, "kv=20%", WL, quality(em), latency(em), POL, PCT)
    with pytest.raises(BudgetError, match="latency model"):
        fit(em, "latency=20ms", WL, quality(em), None, POL, PCT)
    with pytest.raises(ValueError, match="max_trials"):
        fit(em, "mem=1GiB", WL, quality(em), None, POL, PCT, max_trials=0)


def test_single_technique_restrictions(em):
    measure = injected({})[0]
    q, lat = quality(em), latency(em)
    el = fit(em, "latency=8.5ms", WL, q, lat, POL, PCT, techniques=("elastic",), measure=measure)
    assert el.candidate.policy == "full"
    kv = fit(em, "mem=1GiB", WL, q, lat, POL, PCT, techniques=("kv",), measure=measure)
    assert (kv.candidate.kv_groups, kv.candidate.mlp_width) == (max(em.kv_choices), max(em.mlp_choices))


def test_plan_round_trip_and_serving(em, tmp_path):
    def measure(model, c, wl):
        return measure_candidate(model, c, wl, repeat=1) | {"step_s": 0.0}

    # 0.1 ms per cached token: the full model's full cache is over 13 ms, its 50% H2O cache is not
    p = fit(em, "mem=1GiB,latency=13ms", WL, quality(em), latency(em, 1e-4), POL, PCT, measure=measure)
    assert p.candidate.label == "kv2/mlp128 h2o@50%"
    out = write_plan(p, em, tmp_path / "plan", source_model_dir=REFLM, png=False)
    again = load_plan(out)
    assert again == p and again.to_dict() == json.loads((out / "plan.json").read_text())
    assert Plan.load(out / "plan.json").candidate == p.candidate
    assert json.loads((out / "cache.json").read_text()) == p.cache_settings()
    # the saved dense model + cache generate exactly what the elastic model's export does
    model, _, plan = load_planned_model(out, "cpu")
    ids = torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    ref = enable(export_candidate(em, p.candidate, dtype=torch.float32))
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    a = model.generate(input_ids=ids, **kw, **cache_kwargs(model, plan.make_cache()))
    b = ref.generate(input_ids=ids, **kw, **cache_kwargs(ref, p.make_cache()))
    assert torch.equal(a, b)


def test_not_elastic_folder_names_the_build_command(tmp_path, elastic_folder):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotElasticError, match="anybudget elastic build"):
        load_elastic_folder(tmp_path)
    em2, meta = load_elastic_folder(elastic_folder, "cpu")
    assert em2.kv_choices == (2, 1) and "space" in meta


def test_demo_part_plans_two_memory_budgets(capsys):
    from plan_helpers import tiny_llama

    from anybudget.plan.demo import plan_demo

    lm = tiny_llama(vocab=512)
    ids = torch.randint(3, 512, (1, 300), generator=torch.Generator().manual_seed(0))
    plans = plan_demo(lm, ids, {"full": 10.0, "h2o": 11.0, "local": 13.0}, 20.0,
                      ServingWorkload(prompt=48, new_tokens=3, batch=2, dtype="float32"))
    assert len(plans) == 2 and all(p.trials[-1]["meets"] for p in plans)
    assert plans[0].quality["kv_ratio"] == {"h2o@20%": 1.1, "local@20%": 1.3}
    assert plans[1].predicted["mem"] <= plans[0].predicted["mem"]  # the tighter budget
    assert "plan for mem=" in capsys.readouterr().out


def test_memory_correction_fitted_from_measured_peaks(em):
    """decode_latency_model fits, per cache kind, measured CUDA peak - analytic memory at the full KV
    groups; predictions add it scaled by a candidate's KV groups; CPU measurements fit nothing."""
    from anybudget.elastic import params_table
    from anybudget.plan.costs import Candidate, memory_terms, predict
    from anybudget.plan.device import decode_latency_model

    G, W = max(em.kv_choices), max(em.mlp_choices)
    params = int(params_table(em).cost(em.uniform_choice(len(em.kv_choices) - 1, len(em.mlp_choices) - 1)))
    extra = {"full": 5_000_000, "h2o": 3_000_000, "local": 0}

    def measure(model, c, wl, kind="cuda_max_allocated"):
        pred = memory_terms(em.shape, params, c, wl, False)["mem"]
        return {"step_s": 1e-3, "peak_bytes": pred + extra[c.policy if c.policy != "full" else "full"], "peak_kind": kind}

    lat, _calib = decode_latency_model(em, WL, POL, 20.0, warmup=0, repeat=1, measure=measure)
    assert lat.mem_groups == G
    assert lat.mem_correction == pytest.approx({k: float(v) for k, v in extra.items()}, abs=1)
    q = quality(em)
    small = Candidate(min(em.kv_choices), W, "h2o", 50.0)
    base = memory_terms(em.shape, params, small, WL, False)["mem"]
    assert predict(small, em.shape, params, WL, lat, q)["mem"] == pytest.approx(base + 3_000_000 * small.kv_groups / G)
    assert predict(Candidate(G, W), em.shape, params, WL, lat, q)["mem"] == pytest.approx(
        memory_terms(em.shape, params, Candidate(G, W), WL, False)["mem"] + 5_000_000)
    cpu, _ = decode_latency_model(em, WL, POL, 20.0, warmup=0, repeat=1,
                                  measure=lambda m, c, wl: measure(m, c, wl, "cpu_weights_plus_cache"))
    assert cpu.mem_correction == {}
    assert LatencyModel.from_dict(lat.to_dict()).mem_extra(small) == pytest.approx(lat.mem_extra(small))


def test_candidates_plot_draws_both_budgets(tmp_path):
    import matplotlib.pyplot as plt

    from anybudget.plan import Plan, plot_candidates

    rows = [{"label": f"kv{g}/mlp64 full", "mem": g * 2**20, "latency_s": g * 1e-3, "ppl": 10.0 / g, "fits": g < 3}
            for g in (1, 2, 3, 4)]
    chosen = {"kv_groups": 2, "mlp_width": 64, "policy": "full", "kv_percent": 100.0}
    trial = {"label": rows[1]["label"], "measured": {"peak_bytes": 1.5 * 2**20, "step_s": 2e-3}, "meets": True}
    p = Plan("mem=2.5MiB,latency=2.5ms", {}, chosen, {}, trial["measured"], [trial], rows, {}, {}, "cpu",
             candidates=rows)
    seen = []
    real = plt.Figure.savefig
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Figure, "savefig", lambda fig, *a, **k: seen.append(fig) or real(fig, *a, **k))
        assert plot_candidates(p, tmp_path / "c.png").stat().st_size > 1000
    ax, bar = seen[0].axes
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--" and len(ln.get_xdata())]
    assert [ln.get_xdata()[0] for ln in dashed] == [2.5]  # the memory budget, MiB
    assert [ln.get_ydata()[0] for ln in bar.lines] == [2.5]  # the latency budget on the colour bar, ms
