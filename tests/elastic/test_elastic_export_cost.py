import pytest
import torch
import transformers as tr
from elastic_helpers import tiny_model, token_batches

from anybudget.elastic import LayerConfig, SubnetConfig, make_elastic
from anybudget.elastic.export import export, uniform_cover
from anybudget.elastic.latency import (
    CostTable,
    Workload,
    measure_latency_table,
    memory_bytes,
    param_count,
)


@pytest.mark.parametrize("tied", [False, True])
def test_export_equals_elastic_and_reloads(family, tied, tmp_path):
    model = tiny_model(family, tied=tied)
    em = make_elastic(model, token_batches())
    ids = token_batches(n=1, seed=5)[0]
    sub = em.uniform(0.5)
    with em.use(sub):
        ref = model(ids).logits
    small = export(em, sub)
    assert type(small) is type(model)
    assert small.config.intermediate_size == 32 and small.config.num_key_value_heads == 1
    assert sum(p.numel() for p in small.parameters()) == param_count(em, sub)
    torch.testing.assert_close(small(ids).logits, ref, rtol=1e-5, atol=1e-5)
    small.save_pretrained(tmp_path)
    again = tr.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(ids).logits, ref, rtol=1e-5, atol=1e-5)


def test_full_param_count_and_heterogeneous_export():
    model = tiny_model("qwen3")
    em = make_elastic(model, token_batches())
    assert param_count(em, em.full()) == sum(p.numel() for p in model.parameters())
    het = SubnetConfig((LayerConfig(2, 16), LayerConfig(1, 48)))
    with pytest.raises(ValueError, match="different widths per layer"):
        export(em, het)
    assert uniform_cover(het) == SubnetConfig((LayerConfig(2, 48),) * 2)
    assert export(em, het, heterogeneous="cover").config.intermediate_size == 48


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_latency_table_round_trip_and_sum(mode):
    model = tiny_model("mistral")
    em = make_elastic(model, token_batches())
    t = measure_latency_table(em, Workload(batch=1, seq=8, mode=mode, dtype="float32"), warmup=0, repeat=1)
    assert len(t.per_layer) == 2 and len(t.per_layer[0]) == 2 and len(t.per_layer[0][0]) == 4
    again = CostTable.from_json(t.to_json())
    assert again == t
    sub = SubnetConfig((LayerConfig(2, 16), LayerConfig(1, 48)))
    assert t.cost(sub) == pytest.approx(t.fixed + t.per_layer[0][0][3] + t.per_layer[1][1][1])
    # expected cost at one-hot probabilities is the cost of that config
    p_kv = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    p_mlp = torch.tensor([[0, 0, 0, 1.0], [0, 1.0, 0, 0]], dtype=torch.float64)
    assert float(t.expected(p_kv, p_mlp)) == pytest.approx(t.cost(sub))


def test_memory_model_decreases_with_width():
    em = make_elastic(tiny_model(), token_batches())
    w = Workload(batch=2, seq=16, mode="decode", dtype="float32")
    full, small = memory_bytes(em, em.full(), w), memory_bytes(em, em.smallest(), w)
    assert small < full
    # weights part: the difference is exactly the removed parameters and KV entries
    dparams = param_count(em, em.full()) - param_count(em, em.smallest())
    dkv = 2 * 2 * 17 * (2 - 1) * 8 * 4 * 2  # 2 (k,v) * batch * (seq+1) * groups removed * head_dim * bytes * layers
    assert full - small == dparams * 4 + dkv
    with pytest.raises(ValueError, match="mode='x'"):
        Workload(mode="x")


def test_monotone_table_never_lets_a_wider_choice_cost_less():
    em = make_elastic(tiny_model(), token_batches())
    t = measure_latency_table(em, Workload(batch=1, seq=4, dtype="float32"), warmup=0, repeat=1)
    x = torch.tensor(t.per_layer)
    assert torch.all(x[:, :-1, :] >= x[:, 1:, :]) and torch.all(x[:, :, :-1] >= x[:, :, 1:])
    raw = torch.tensor(t.extra["raw"])
    assert torch.all(x >= raw) and torch.equal(x[:, -1, -1], raw[:, -1, -1])


def test_decode_table_reads_the_fixed_past(monkeypatch):
    from anybudget.elastic import latency as lat

    seen = []
    real = lat._PastCache.update

    def spy(self, k, v, layer_idx, *args, **kwargs):
        out = real(self, k, v, layer_idx, *args, **kwargs)
        seen.append((k.shape[1], out[0].shape[2]))
        return out

    monkeypatch.setattr(lat._PastCache, "update", spy)
    em = make_elastic(tiny_model(), token_batches())
    measure_latency_table(em, Workload(batch=1, seq=6, mode="decode", dtype="float32"), warmup=0, repeat=1)
    assert {s for s in seen} == {(2, 7), (1, 7)}  # both KV-group choices, 6 cached + 1 new position


def test_generate_under_a_subnet_equals_the_exported_model():
    model = tiny_model("llama")
    em = make_elastic(model, token_batches())
    sub = em.uniform(0.25, 0.5)
    small = export(em, sub)
    ids = token_batches(n=1, batch=1, seq=5)[0]
    with em.use(sub):
        a = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    b = small.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)


def test_importance_state_dict_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    from anybudget.elastic import Importance, activation_importance

    imp = activation_importance(tiny_model(), token_batches(), embedding=True)
    save_file(imp.state_dict(), str(tmp_path / "imp.safetensors"))
    again = Importance.from_state_dict(load_file(str(tmp_path / "imp.safetensors")))
    for name in ("heads", "kv_groups", "neurons"):
        assert all(torch.equal(x, y) for x, y in zip(getattr(imp, name), getattr(again, name)))
    assert torch.equal(imp.embedding, again.embedding) and again.layers is None


def test_cached_generation_under_a_heterogeneous_subnet_equals_recomputation():
    model = tiny_model("qwen3", layers=3)
    em = make_elastic(model, token_batches())
    sub = SubnetConfig((LayerConfig(1, 16), LayerConfig(2, 48), LayerConfig(1, 64)))
    ids = token_batches(n=1, batch=1, seq=4)[0]
    with em.use(sub):
        cached = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        seq = ids
        for _ in range(5):  # greedy without a cache: the whole sequence again each step
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(cached, seq)
