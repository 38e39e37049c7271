import copy

import pytest
import torch
from elastic_helpers import tiny_model, token_batches

from anybudget.elastic import make_elastic
from anybudget.elastic.data import TokenBatches, eval_windows
from anybudget.elastic.evaluate import perplexity
from anybudget.elastic.train import ElasticTrainConfig, forward_kl, sample_subnets, train_elastic


def _setup(seed=0, tied=False):
    model = tiny_model("llama", seed=seed, tied=tied)
    em = make_elastic(model, token_batches())
    data = TokenBatches(torch.randint(0, 97, (2000,), generator=torch.Generator().manual_seed(3)), batch=2, seq=16)
    return em, data


CFG = ElasticTrainConfig(steps=4, lr=3e-3, warmup_steps=1, subnets_per_step=3, checkpoint_every=2)


@pytest.mark.parametrize("tied", [False, True])
def test_resume_equals_uninterrupted(tmp_path, tied):
    em_a, data = _setup(tied=tied)
    teacher_a = copy.deepcopy(em_a.model)
    ra = train_elastic(em_a, data, CFG, teacher=teacher_a)
    em_b, _ = _setup(tied=tied)
    teacher_b = copy.deepcopy(em_b.model)
    rb1 = train_elastic(em_b, data, CFG, teacher=teacher_b, checkpoint=tmp_path, stop_after=2)
    assert rb1["steps"] == 2 and rb1["stopped"] == "stop_after"
    em_c, _ = _setup(seed=9, tied=tied)  # a fresh process: different weights until the checkpoint is loaded
    rc = train_elastic(em_c, data, CFG, teacher=teacher_b, checkpoint=tmp_path)
    assert rc["steps"] == 4 and rc["tokens"] == ra["tokens"] == 4 * 32
    for (n, p), q in zip(em_a.model.named_parameters(), em_c.model.parameters()):
        assert torch.equal(p, q), n
    assert rc["history"] == ra["history"]


def test_training_lowers_the_loss_of_small_subnets():
    em, data = _setup()
    windows = eval_windows(data.tokens[:600], seq=16, batch=4)
    before = perplexity(em, windows, em.smallest())
    train_elastic(em, data, ElasticTrainConfig(steps=15, lr=3e-3, warmup_steps=1, subnets_per_step=3))
    assert perplexity(em, windows, em.smallest()) < before


def test_sampling_always_has_full_and_smallest_and_budget_mode():
    em, _ = _setup()
    for mode in ("uniform", "budget"):
        cfg = ElasticTrainConfig(subnets_per_step=5, sampling=mode)
        subs = sample_subnets(em, cfg, step=3)
        assert subs[0] == em.full() and subs[1] == em.smallest() and len(subs) == 5
        assert subs == sample_subnets(em, cfg, step=3)
    with pytest.raises(ValueError, match="sampling='x'"):
        ElasticTrainConfig(sampling="x")
    with pytest.raises(ValueError, match="subnets_per_step=1"):
        ElasticTrainConfig(subnets_per_step=1)


def test_forward_kl_zero_iff_equal():
    x = torch.randn(3, 5, 11)
    assert float(forward_kl(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(forward_kl(x, x + torch.randn_like(x))) > 0
