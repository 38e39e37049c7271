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
