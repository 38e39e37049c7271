"""plan.quality: the planner's quality inputs and its check are the same measurement on the
workload's protocol; where the combination is exact, prediction == measurement; the check scores
what generate runs."""

from __future__ import annotations

import math

import pytest
import torch
from plan_helpers import tiny_elastic
from transformers import DynamicCache

from anybudget.kv import cache_kwargs, enable
from anybudget.plan import Candidate, ServingWorkload, export_candidate
from anybudget.plan.device import make_plan_cache
from anybudget.plan.quality import (
    measure_quality,
    measured_ppl,
    quality_windows,
    quality_workload,
    workload_nll,
)

WL = ServingWorkload(prompt=24, new_tokens=6, batch=2, dtype="float32")


@pytest.fixture(scope="module")
def em():
    return tiny_elastic(vocab=512)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 512, (400,), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("policy,static", [("full", False), ("h2o", False), ("h2o", True), ("local", True)])
def test_workload_nll_scores_what_generate_predicts(em, policy, static):
    """Greedy generate with the plan's cache, then the check's teacher-forced NLL of those tokens
    under a fresh cache of the same kind equals -log softmax of generate's own logits."""
    dense = enable(export_candidate(em, Candidate(2, 128), dtype=torch.float32))
    prompt = torch.randint(3, 512, (2, WL.prompt), generator=torch.Generator().manual_seed(1))

    def cache():
        return None if policy == "full" else make_plan_cache(policy, "20%", static, WL.new_tokens)

    gen_cache = DynamicCache() if policy == "full" else cache()
    with torch.no_grad():
        out = dense.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=WL.new_tokens,
                             min_new_tokens=WL.new_tokens, do_sample=False, pad_token_id=2, output_logits=True,
                             return_dict_in_generate=True, **cache_kwargs(dense, gen_cache))
    ids = out.sequences
    logits = torch.stack(out.logits, 1).float()  # (B, N, V)
    ref = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, WL.prompt:], reduction="none")
    got = workload_nll(dense, ids, WL.prompt, cache())
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_full_cache_shortcut_equals_prefill_then_decode(em):
    dense = enable(export_candidate(em, Candidate(1, 64), dtype=torch.float32))
    ids = torch.randint(3, 512, (3, 30), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(workload_nll(dense, ids, 20), workload_nll(dense, ids, 20, DynamicCache()),
                               rtol=1e-4, atol=1e-4)


def test_prediction_equals_measurement_where_the_combination_is_exact(em, tokens):
    q = measure_quality(em, tokens, WL, ("h2o", "local"), (50.0, 20.0), seqs=4, static=True, batch=3)
    assert q.source["prompt"] == WL.prompt and q.source["new_tokens"] == WL.new_tokens
    assert q.source["windows"] == 4 and q.source["scored_tokens"] == 4 * WL.new_tokens and not q.source["shrunk"]
    windows = quality_windows(tokens, WL, 4)
    exact = [Candidate(1, 64), Candidate(2, 32), Candidate(2, 128, "h2o", 20.0), Candidate(2, 128, "local", 50.0)]
    for c in exact:  # full caches, and the full model with any cache: the same measurement on both sides
        assert measured_ppl(em, c, windows, WL, static=True) == pytest.approx(q.ppl(c), rel=1e-6), c.label
    # a sub-network with eviction: the assumption under test; measured, finite, not forced equal
    c = Candidate(1, 64, "h2o", 20.0)
    assert math.isfinite(measured_ppl(em, c, windows, WL, static=True)) and math.isfinite(q.ppl(c))


def test_static_and_dynamic_caches_measure_the_same_quality(em, tokens):
    a = measure_quality(em, tokens, WL, ("h2o",), (20.0,), seqs=2, static=False)
    b = measure_quality(em, tokens, WL, ("h2o",), (20.0,), seqs=2, static=True)
    assert a.elastic_ppl == b.elastic_ppl
    assert a.kv_ratio["h2o@20%"] == pytest.approx(b.kv_ratio["h2o@20%"], rel=1e-4)
    assert a.kv_ratio["h2o@20%"] != 1.0  # eviction changed the predictions


def test_windows_protocol_and_errors(tokens):
    w = quality_windows(tokens, WL, 100)
    assert w.shape == (400 // 30, 30) and torch.equal(w[1], tokens[30:60])
    assert quality_workload(WL, 30) is WL
    small = quality_workload(ServingWorkload(2048, 256, 8), 256)
    assert small.prompt + small.new_tokens <= 256 and small.new_tokens == 28 and small.batch == 8
    with pytest.raises(ValueError, match="prompt \\+ new_tokens = 30"):
        quality_windows(tokens[:20], WL, 1)
    with pytest.raises(ValueError, match="prompt=30"):
        workload_nll(None, torch.zeros(1, 30, dtype=torch.long), 30)
