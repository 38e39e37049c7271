import torch
from elastic_helpers import tiny_model, token_batches

from anybudget.elastic import make_elastic
from anybudget.elastic.data import TokenBatches
from anybudget.elastic.dynamic import (
    DynamicRouter,
    DynamicTrainConfig,
    dynamic_routing,
    train_dynamic_router,
)
from anybudget.elastic.latency import CostTable


def _table(em):
    per = [[[g * 1e-3 + w * 1e-4 for w in em.mlp_choices] for g in em.kv_choices] for _ in range(em.num_layers)]
    return CostTable("latency", 1e-3, per, em.kv_choices, em.mlp_choices)


def test_hard_routing_at_one_width_equals_that_subnet():
    em = make_elastic(tiny_model("qwen3"), token_batches())
    table = _table(em)
    router = DynamicRouter(em.num_layers, 32, em.mlp_choices, 0.0, 1.0)
    with torch.no_grad():  # force every token to width index 2
        for net in router.layers:
            net[2].weight.zero_()
            net[2].bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    ids = token_batches(n=1)[0]
    with dynamic_routing(em, router, 0.5, table) as acc:
        got = em.model(ids).logits
    want = em(ids, subnet=em.from_indices([0] * em.num_layers, [2] * em.num_layers)).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    expect = table.fixed + sum(table.per_layer[li][0][2] for li in range(em.num_layers))
    assert abs(float(acc["latency"]) - expect) < 1e-9 and acc["calls"] == 1


def test_dynamic_router_trains_towards_low_target():
    em = make_elastic(tiny_model("llama"), token_batches())
    table = _table(em)
    data = TokenBatches(torch.randint(0, 97, (500,)), batch=2, seq=12)
    router, stats = train_dynamic_router(em, table, data, DynamicTrainConfig(steps=30, lr=1e-2, latency_weight=5.0))
    assert len(stats["history"]) == 30
    lo = stats["min_latency"]
    ids = token_batches(n=1)[0]
    with torch.no_grad(), dynamic_routing(em, router, lo, table) as low:
        em.model(ids)
    with torch.no_grad(), dynamic_routing(em, router, stats["max_latency"], table) as high:
        em.model(ids)
    assert float(low["latency"]) <= float(high["latency"])
    assert all(p.requires_grad for p in em.model.parameters())
