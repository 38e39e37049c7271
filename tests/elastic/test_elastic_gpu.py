"""GPU-only checks; they skip cleanly on a machine without CUDA."""

import pytest
import torch
from elastic_helpers import tiny_model, token_batches

from anybudget.elastic import Workload, export, make_elastic, measure_latency_table

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_bf16_subnet_matches_export_and_table_on_cuda():
    model = tiny_model("qwen3").cuda()
    em = make_elastic(model, [b.cuda() for b in token_batches()])
    model.to(torch.bfloat16)
    sub = em.uniform(0.5)
    ids = token_batches(n=1)[0].cuda()
    with em.use(sub):
        ref = model(ids).logits.float()
    torch.testing.assert_close(export(em, sub)(ids).logits.float(), ref, rtol=2e-2, atol=2e-2)
    t = measure_latency_table(em, Workload(batch=2, seq=16), warmup=1, repeat=3)
    assert t.device != "cpu" and t.cost(em.full()) > 0


@cuda
def test_fused_kd_lm_loss_matches_the_reference_on_bf16_logits():
    from anybudget.elastic.evaluate import lm_loss
    from anybudget.elastic.train import forward_kl, kd_lm_loss, teacher_targets

    g = torch.Generator(device="cuda").manual_seed(0)
    t = (torch.randn(4, 64, 4096, device="cuda", generator=g) * 4).bfloat16()
    s = (torch.randn(4, 64, 4096, device="cuda", generator=g) * 4).bfloat16().requires_grad_(True)
    w = torch.randint(0, 4096, (4, 65), device="cuda", generator=g)
    ref = forward_kl(s, t) + lm_loss(s, w)
    (gr,) = torch.autograd.grad(ref, s)
    fused = kd_lm_loss(s, teacher_targets(t), w)
    (gf,) = torch.autograd.grad(fused, s)
    assert abs(float(fused.detach()) - float(ref.detach())) < 1e-4 * float(ref.detach())
    torch.testing.assert_close(gf.float(), gr.float(), rtol=2e-2, atol=1e-6)
