"""Candidate enumeration and the analytic memory model against what a served cache and model hold."""

from __future__ import annotations

import pytest
import torch
from plan_helpers import tiny_elastic

from anybudget.elastic import param_count
from anybudget.plan import (
    Candidate,
    LatencyModel,
    Quality,
    ServingWorkload,
    enumerate_candidates,
    export_candidate,
    kept_tokens,
    measure_candidate,
    memory_terms,
)


def test_enumeration_exact_sets():
    both = enumerate_candidates((2, 1), (128, 96), ("h2o", "local"), (50, 20))
    caches = {("full", 100.0), ("h2o", 50.0), ("h2o", 20.0), ("local", 50.0), ("local", 20.0)}
    assert {(c.kv_groups, c.mlp_width, c.policy, c.kv_percent) for c in both} == {
        (g, w, p, f) for g in (2, 1) for w in (128, 96) for p, f in caches}
    assert len(both) == 20
    elastic = enumerate_candidates((2, 1), (128, 96), ("h2o",), (50,), techniques=("elastic",))
    assert {(c.kv_groups, c.mlp_width, c.policy) for c in elastic} == {(g, w, "full") for g in (2, 1) for w in (128, 96)}
    kv = enumerate_candidates((2, 1), (128, 96), ("h2o",), (50, 10), techniques=("kv",))
    assert {(c.kv_groups, c.mlp_width, c.kv_label) for c in kv} == {(2, 128, "full"), (2, 128, "h2o@50%"), (2, 128, "h2o@10%")}


@pytest.mark.parametrize("bad", [{"kv_percents": (100,)}, {"kv_percents": (0,)}, {"techniques": ("prune",)}, {"techniques": ()}])
def test_enumeration_bad_input(bad):
    kw = {"policies": ("h2o",), "kv_percents": (50,)} | bad
    with pytest.raises(ValueError, match="kv_percents|techniques"):
        enumerate_candidates((2,), (8,), **kw)


@pytest.mark.parametrize("kw", [{"prompt": 0}, {"new_tokens": 1}, {"batch": 2.5}, {"dtype": "int8"}])
def test_workload_bad_input(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        ServingWorkload(**kw)


def test_kept_tokens_matches_cache_size_rule():
    assert kept_tokens("full", 100, 77) == 77
    assert kept_tokens("h2o", 20, 100) == 20
    assert kept_tokens("h2o", 20, 101) == 21  # ceil
    assert kept_tokens("local", 10, 3) == 1


def test_memory_model_matches_used_bytes_and_parameter_bytes():
    """Predicted KV bytes == cache.used_bytes() after serving; weights == the dense model's parameter
    bytes; the predicted allocation bounds what the cache allocated."""
    torch.manual_seed(0)
    em = tiny_elastic(vocab=512)
    wl = ServingWorkload(prompt=40, new_tokens=5, batch=2, dtype="float32")
    for c in (Candidate(2, 128), Candidate(1, 64, "h2o", 50.0), Candidate(2, 96, "local", 20.0),
              Candidate(1, 32, "streaming", 10.0)):
        sub = em.uniform_choice(em.kv_choices.index(c.kv_groups), em.mlp_choices.index(c.mlp_width))
        pred = memory_terms(em.shape, param_count(em, sub), c, wl)
        dense = export_candidate(em, c, dtype=torch.float32)
        m = measure_candidate(dense, c, wl, repeat=1)
        assert pred["kv_used"] == m["kv_used_bytes"], c.label
        assert pred["weights"] == m["weights_bytes"], c.label
        assert pred["kv_alloc"] >= m["kv_alloc_bytes"], c.label
        assert pred["mem"] >= m["peak_bytes"], c.label


def test_memory_model_scales_with_kv_groups_and_budget():
    shape = {"layers": 4, "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "intermediate": 128, "vocab": 100}
    wl = ServingWorkload(1000, 100, 4, "bfloat16")
    a = memory_terms(shape, 10_000, Candidate(2, 128), wl)
    b = memory_terms(shape, 10_000, Candidate(1, 128), wl)
    assert a["kv_used"] == 4 * 2 * 4 * 2 * 16 * 2 * 1099 == 2 * b["kv_used"]
    assert a["weights"] == 20_000
    h = memory_terms(shape, 10_000, Candidate(2, 128, "h2o", 20.0), wl)
    assert h["kv_used"] == 4 * 2 * 4 * 2 * 16 * 2 * 220


def test_latency_model_interpolates_and_adds_overheads():
    lat = LatencyModel(2, {"ctx": 100, "fixed": 0.5, "layer": {"2/8": 1.0}}, {"ctx": 1100, "fixed": 0.5, "layer": {"2/8": 2.0}},
                       overhead_generate=0.25, overhead_policy={"h2o": 0.125})
    wl = ServingWorkload(1000, 200, 1, "float32")  # mean context 1100
    assert lat.step(Candidate(2, 8), wl) == pytest.approx(0.5 + 2 * 2.0 + 0.25)
    # h2o 10%: mean kept ceil(0.1 * 1100) = 110 -> 1.0 + 10/1000
    assert lat.step(Candidate(2, 8, "h2o", 10.0), wl) == pytest.approx(0.5 + 2 * 1.01 + 0.25 + 2 * 0.125)
    assert LatencyModel.from_dict(lat.to_dict()) == lat


def test_quality_combination_and_missing_keys():
    q = Quality({"kv2/mlp8": 10.0}, {"h2o@20%": 1.5})
    assert q.ppl(Candidate(2, 8)) == 10.0
    assert q.ppl(Candidate(2, 8, "h2o", 20.0)) == 15.0
    with pytest.raises(KeyError, match="local@20%"):
        q.ppl(Candidate(2, 8, "local", 20.0))
    with pytest.raises(KeyError, match="kv1/mlp8"):
        q.ppl(Candidate(1, 8))
    assert Quality.from_dict(q.to_dict()) == q


def test_export_candidate_computes_what_the_elastic_model_does():
    em = tiny_elastic(vocab=512)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(3))
    for c in (Candidate(2, 128), Candidate(1, 64)):
        sub = em.uniform_choice(em.kv_choices.index(c.kv_groups), em.mlp_choices.index(c.mlp_width))
        dense = export_candidate(em, c, dtype=torch.float32)
        with torch.no_grad(), em.use(sub):
            ref = em.model(input_ids=ids).logits
        with torch.no_grad():
            torch.testing.assert_close(dense(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)
