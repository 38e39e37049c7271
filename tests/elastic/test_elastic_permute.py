import pytest
import torch
from elastic_helpers import tiny_model, token_batches

from anybudget.elastic import ElasticLlama, ElasticSpace, LayerConfig, SubnetConfig, make_elastic
from anybudget.elastic.families import UnsupportedModelError
from anybudget.elastic.importance import activation_importance
from anybudget.elastic.permute import head_order, permute_by_importance


def test_permutation_keeps_function(family):
    model = tiny_model(family)
    ids = token_batches(n=1)[0]
    ref = model(ids).logits
    imp = activation_importance(model, token_batches(), embedding=True, depth=True)
    assert [t.shape for t in imp.kv_groups] == [torch.Size([2])] * 2
    assert imp.embedding.shape == (32,) and imp.layers.shape == (2,)
    permute_by_importance(model, imp)
    torch.testing.assert_close(model(ids).logits, ref, rtol=1e-5, atol=1e-5)
    # after the permutation the scores are sorted: recomputing gives descending order
    imp2 = activation_importance(model, token_batches())
    for n in imp2.neurons:
        assert torch.all(n[:-1] >= n[1:] - 1e-4)
    for g in imp2.kv_groups:
        assert torch.all(g[:-1] >= g[1:] - 1e-4)


def test_head_order_keeps_query_heads_with_their_group():
    heads = torch.tensor([0.1, 0.9, 5.0, 0.2, 0.3, 0.4])  # 3 groups of 2
    groups = heads.view(3, 2).sum(1)
    q, kv = head_order(heads, groups)
    assert kv.tolist() == [1, 0, 2]
    assert q.tolist() == [2, 3, 1, 0, 5, 4]


def test_full_config_equals_original_exactly(family):
    model = tiny_model(family)
    ids = token_batches(n=1)[0]
    ref = model(ids).logits.clone()
    em = ElasticLlama(model)
    assert torch.equal(em(ids, subnet=em.full()).logits, ref)
    assert torch.equal(model(ids).logits, ref)
    with em.use(em.smallest()):
        small = model(ids).logits
    assert not torch.allclose(small, ref)
    assert torch.equal(model(ids).logits, ref)  # restored after the block


def test_subnet_equals_explicitly_sliced_mlp():
    model = tiny_model("llama")
    em = ElasticLlama(model)
    x = torch.randn(2, 5, 32)
    mlp = model.model.layers[0].mlp
    with em.use(em.uniform(0.5)):
        got = mlp(x)
    w = 32
    h = torch.nn.functional.silu(x @ mlp.gate_proj.weight[:w].T) * (x @ mlp.up_proj.weight[:w].T)
    torch.testing.assert_close(got, h @ mlp.down_proj.weight[:, :w].T)


def test_no_copy_same_state_dict_keys():
    model = tiny_model("qwen2")
    keys = list(model.state_dict())
    ptr = model.model.layers[0].mlp.up_proj.weight.data_ptr()
    em = make_elastic(model, token_batches())
    assert em.model is model and list(model.state_dict()) == keys
    assert model.model.layers[0].mlp.up_proj.weight.data_ptr() != 0 and ptr != 0


def test_config_json_round_trip_and_validation():
    em = ElasticLlama(tiny_model())
    assert em.mlp_choices == (64, 48, 32, 16) and em.kv_choices == (2, 1)
    cfg = SubnetConfig((LayerConfig(2, 48), LayerConfig(1, 16)))
    assert SubnetConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="mlp_width=40 is not a choice; allowed"):
        em.validate(SubnetConfig((LayerConfig(2, 40), LayerConfig(1, 16))))
    with pytest.raises(ValueError, match="subnet has 1 layers"):
        em.validate(SubnetConfig((LayerConfig(2, 48),)))
    with pytest.raises(ValueError, match="mlp_fractions"):
        ElasticSpace(mlp_fractions=(0.5, 0.25))
    with pytest.raises(ValueError, match="fraction=0.3"):
        em.uniform(0.3)


def test_unsupported_family_names_the_supported_ones():
    import transformers as tr

    m = tr.GPT2LMHeadModel(tr.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="llama, mistral, qwen2, qwen3"):
        ElasticLlama(m)


def test_use_nests_and_restores():
    em = ElasticLlama(tiny_model())
    mlp = em.model.model.layers[0].mlp
    with em.use(em.uniform(0.5)):
        assert mlp.gate_proj.out_active == 32
        with em.use(em.smallest()):
            assert mlp.gate_proj.out_active == 16 and em.active == em.smallest()
        assert mlp.gate_proj.out_active == 32
    assert mlp.gate_proj.out_active is None and em.active is None


def test_unwrap_gives_plain_linears_and_same_function():
    model = tiny_model("mistral")
    ids = token_batches(n=1)[0]
    ref = model(ids).logits
    em = ElasticLlama(model)
    plain = em.unwrap()
    assert type(plain.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert not hasattr(plain.model.layers[0].mlp.down_proj, "in_active")
    assert torch.equal(plain(ids).logits, ref)
