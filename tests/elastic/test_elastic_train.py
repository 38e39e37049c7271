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


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kd_weight,lm_weight", [(1.0, 1.0), (0.0, 1.0), (0.7, 0.0)])
def test_fused_kd_lm_loss_equals_reference_value_and_gradient(temperature, kd_weight, lm_weight):
    from anybudget.elastic.evaluate import lm_loss
    from anybudget.elastic.train import kd_lm_loss, teacher_targets

    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 7, 31, generator=g) * 3
    windows = torch.randint(0, 31, (2, 8), generator=g)
    a = (torch.randn(2, 7, 31, generator=g) * 3).requires_grad_(True)
    b = a.detach().clone().requires_grad_(True)
    ref = kd_weight * forward_kl(a, t, temperature) + lm_weight * lm_loss(a, windows)
    fused = kd_lm_loss(b, teacher_targets(t, temperature), windows, kd_weight, lm_weight, temperature)
    ref.backward()
    fused.backward()
    assert float(fused.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("full_weight", [1.0, 3.0])
def test_step_gradient_is_the_weighted_mean_of_kd_plus_lm_over_the_sampled_subnets(full_weight):
    from anybudget.elastic.evaluate import lm_loss
    from anybudget.elastic.train import step_backward

    em, data = _setup()
    teacher = copy.deepcopy(em.model).requires_grad_(False)
    with torch.no_grad():  # a teacher that differs from the student, so the KD term has a gradient
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cfg = ElasticTrainConfig(subnets_per_step=3, full_weight=full_weight, kd_temperature=1.5)
    w = data(0, 0)
    params = list(em.model.parameters())
    em.model.zero_grad()
    losses = step_backward(em, teacher, w, cfg, step=5)
    fused = [p.grad.clone() for p in params]
    em.model.zero_grad()
    t_logits = teacher(input_ids=w[:, :-1]).logits
    ref, weights = [], [full_weight, 1.0, 1.0]
    for sub, wt in zip(sample_subnets(em, cfg, 5), weights):
        with em.use(sub):
            logits = em.model(input_ids=w[:, :-1]).logits
        ref.append(forward_kl(logits, t_logits, 1.5) + lm_loss(logits, w))
    (sum(wt * x for wt, x in zip(weights, ref)) / sum(weights)).backward()
    assert losses == pytest.approx([float(x.detach()) for x in ref], rel=1e-5)
    for a, b in zip(fused, params):
        torch.testing.assert_close(a, b.grad, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="full_weight=0"):
        ElasticTrainConfig(full_weight=0)
