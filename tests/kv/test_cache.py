import pytest
import torch
from transformers import DynamicCache

import anybudget.kv as kv
from anybudget import Budget, BudgetError

from kv_helpers import tiny_model

POLICY_CACHES = {
    "h2o": lambda b: kv.H2OCache(b),
    "streaming": lambda b: kv.StreamingCache(b, sink_tokens=2),
    "local": lambda b: kv.LocalCache(b),
    "random": lambda b: kv.RandomCache(b, seed=3),
}


def stream_logits(model, ids, cache, chunk=1):
    outs = []
    for s in range(0, ids.shape[1], chunk):
        pos = torch.arange(s, min(ids.shape[1], s + chunk)).expand(ids.shape[0], -1)
        outs.append(model(input_ids=ids[:, s : s + chunk], past_key_values=cache, position_ids=pos).logits)
    return torch.cat(outs, 1)


@pytest.mark.parametrize("policy", list(POLICY_CACHES))
@pytest.mark.parametrize("budget", ["100%", 10_000])
def test_budget_at_least_sequence_is_exactly_full(family_model, policy, budget):
    torch.manual_seed(0)
    ids = torch.randint(0, 96, (2, 24))
    with torch.no_grad():
        ref = family_model(input_ids=ids).logits  # plain sdpa, no cache
        kv.enable(family_model)
        for chunk in (1, 5, 24):
            got = stream_logits(family_model, ids, POLICY_CACHES[policy](budget), chunk)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        kv.disable(family_model)


def test_greedy_generate_h2o_100_equals_plain(family_model):
    ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(1))
    ref = family_model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    with kv.enabled(family_model):
        got = family_model.generate(input_ids=ids, max_new_tokens=12, do_sample=False,
                                    past_key_values=kv.H2OCache("100%"))
    assert torch.equal(got, ref)
    assert family_model.config._attn_implementation == "sdpa"  # restored


def _drive(cache, B=2, H=3, steps=(7, 1, 1, 3, 1, 1, 1, 2, 1), D=4, seed=0):
    """Feed a layer synthetic keys and attention column sums; replay the policy on the side."""
    g = torch.Generator().manual_seed(seed)
    layer = cache._new_layer()
    cache.layers.append(layer)
    acc = {}  # (b, h) -> {position: score}
    seen = 0
    for q in steps:
        k = torch.randn(B, H, q, D, generator=g)
        keys, _ = layer.update(k, k.clone())
        layer.mark_new_tokens(None)
        L = layer.length
        col = torch.rand(B, H, L, generator=g)
        if cache.needs_scores:
            layer.add_scores(col)
        pos_before = layer.pos[:, :, :L].clone()
        layer.evict()
        seen += q
        target = cache._cache_size(seen)
        heavy, recent = cache._split(target)
        for b in range(B):
            for h in range(H):
                d = acc.setdefault((b, h), {})
                for j in range(L):
                    p = int(pos_before[b, h, j])
                    d[p] = d.get(p, 0.0) + float(col[b, h, j])
                ordered = sorted(d)
                yield_set = set(layer.pos[b, h, : layer.length].tolist())
                if cache.policy.name == "h2o":
                    sc = torch.tensor([d[p] for p in ordered])
                    keep = kv.h2o_keep_indices(sc, heavy, recent).tolist()
                elif cache.policy.name == "streaming":
                    keep = kv.streaming_keep_indices(len(ordered), heavy, recent).tolist()
                elif cache.policy.name == "local":
                    keep = kv.local_keep_indices(len(ordered), recent).tolist()
                else:
                    keep = None
                if keep is not None:
                    expect = {ordered[i] for i in keep}
                    assert yield_set == expect, (cache.policy, seen, b, h)
                assert len(yield_set) == min(target, seen)
                acc[(b, h)] = {p: d[p] for p in yield_set}
        # the kept keys are the ones written at those positions
        assert layer.length == min(target, seen)
    return layer


@pytest.mark.parametrize("budget", [5, 8, "40%", "25%"])
@pytest.mark.parametrize("policy", ["h2o", "streaming", "local", "random"])
def test_eviction_keeps_exactly_what_the_policy_says(policy, budget):
    cache = POLICY_CACHES[policy](budget)
    layer = _drive(cache)
    assert layer.length <= layer.capacity


def test_kept_keys_travel_with_their_positions():
    cache = kv.H2OCache(6)
    layer = cache._new_layer()
    cache.layers.append(layer)
    for step in range(12):
        k = torch.full((1, 2, 1, 4), float(step))  # key value encodes its position
        layer.update(k, k + 100)
        layer.mark_new_tokens(None)
        layer.add_scores(torch.rand(1, 2, layer.length))
        layer.evict()
        L = layer.length
        assert torch.equal(layer.keys[:, :, :L, 0], layer.pos[:, :, :L].float())
        assert torch.equal(layer.values[:, :, :L, 0], layer.pos[:, :, :L].float() + 100)


def test_h2o_through_the_model_keeps_recent_and_budget():
    model = tiny_model("llama")
    kv.enable(model)
    ids = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(0))
    cache = kv.H2OCache("25%")
    with torch.no_grad():
        stream_logits(model, ids, cache, chunk=1)
    kept = cache.kept_positions(1)
    assert kept.shape[-1] == 10  # ceil(25% of 40)
    assert (kept[..., -5:] == torch.arange(35, 40)).all()  # recent half
    assert cache.used_bytes() == 2 * 2 * 10 * 8 * 4 * 2 * 2  # layers*B*slots*D*bytes*(k,v)*kv_heads


def test_h2o_beats_local_on_structured_attention():
    """Heavy hitters: with sharpened random attention, H2O at 25% is closer to full than local."""
    model = tiny_model("llama", seed=1)
    kv.enable(model)
    ids = torch.randint(0, 96, (4, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = torch.log_softmax(stream_logits(model, ids, DynamicCache()), -1)
        err = {}
        for name, cache in (("h2o", kv.H2OCache("25%")), ("local", kv.LocalCache("25%"))):
            lp = torch.log_softmax(stream_logits(model, ids, cache), -1)
            err[name] = (full.exp() * (full - lp)).sum(-1).mean().item()  # KL(full || budgeted)
    assert err["h2o"] < err["local"], err


def test_left_padding_matches_unpadded_rows():
    model = tiny_model("qwen2")
    kv.enable(model)
    g = torch.Generator().manual_seed(4)
    a = torch.randint(1, 96, (1, 10), generator=g)
    b = torch.randint(1, 96, (1, 6), generator=g)
    ids = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    for make in (lambda: kv.H2OCache(6), lambda: kv.StreamingCache(6, sink_tokens=2), lambda: kv.H2OCache("100%")):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, past_key_values=make())
        ra = model.generate(input_ids=a, max_new_tokens=8, do_sample=False, past_key_values=make())
        rb = model.generate(input_ids=b, max_new_tokens=8, do_sample=False, past_key_values=make())
        assert torch.equal(out[0], ra[0])
        assert torch.equal(out[1, 4:], rb[0])


def test_bad_input_errors():
    for bad, match in ((0, "must be positive"), ("0%", "must be positive"), (-3, "must be positive"),
                       ("120%", "out of range"), (0.2, "is not understood"), ("kv=abc", "is not valid")):
        with pytest.raises(BudgetError, match=match):
            kv.H2OCache(bad)
    for r in (1.5, -0.1):
        with pytest.raises(ValueError, match=rf"recent_ratio={r} is out of range; it must be in \[0, 1\]"):
            kv.H2OCache("20%", recent_ratio=r)
    with pytest.raises(ValueError, match="sink_tokens=-1"):
        kv.StreamingCache("20%", sink_tokens=-1)
    with pytest.raises(ValueError, match="policy='lru' is unknown"):
        kv.make_cache("lru")
    assert kv.H2OCache(Budget("kv=512")).budget.value == 512
    assert kv.H2OCache("kv=20%").budget.fraction == pytest.approx(0.2)


def test_cache_reused_across_batch_sizes_raises():
    model = tiny_model("llama")
    kv.enable(model)
    cache = kv.H2OCache("50%")
    model(input_ids=torch.randint(0, 96, (2, 5)), past_key_values=cache)
    with pytest.raises(ValueError, match="holds a batch of 2 sequences but got 3"):
        model(input_ids=torch.randint(0, 96, (3, 1)), past_key_values=cache)


def test_cache_without_enable_raises_and_unsupported_model():
    model = tiny_model("llama")
    cache = kv.H2OCache("50%")
    with pytest.raises(RuntimeError, match=r"anybudget.kv.enable\(model\)"):
        model(input_ids=torch.randint(0, 96, (1, 5)), past_key_values=cache)
    import transformers as tf

    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="model type 'gpt2' is not supported.*llama, mistral, qwen2, qwen3, gpt_neox"):
        kv.enable(gpt2)


@pytest.mark.parametrize("policy", list(POLICY_CACHES))
def test_single_eviction_fast_path_equals_the_sorting_path(policy):
    """A decoding step's sort-free eviction leaves every slot buffer exactly as the general path
    does, also with tied scores (the later position goes first) and left-padded rows."""
    g = torch.Generator().manual_seed(5)
    B, H, D = 3, 2, 4
    caches = [POLICY_CACHES[policy](6), POLICY_CACHES[policy](6)]
    caches[1].fast_single_eviction = False
    layers = []
    for c in caches:
        layers.append(c._new_layer())
        c.layers.append(layers[-1])
    pad = torch.ones(B, 5, dtype=torch.bool)
    pad[1, :2] = False  # left padding in row 1
    calls = []
    fast_evict = layers[0]._move_last_into
    layers[0]._move_last_into = lambda *a: (calls.append(1), fast_evict(*a))
    layers[1]._move_last_into = lambda *a: pytest.fail("the general path must not take the fast one")
    for step, q in enumerate((5, 1, 1, 2, 1, 1, 1, 1, 1, 1)):
        k = torch.randn(B, H, q, D, generator=g)
        valid = pad if step == 0 else None
        colsum = torch.randint(0, 3, (B, H, layers[0].length + q), generator=g).float()  # many ties
        for layer in layers:
            layer.update(k, k + 1)
            layer.mark_new_tokens(valid)
            layer.add_scores(colsum)
            layer.evict()
        a, b = layers
        assert a.length == b.length
        for name in a._buffers():
            assert torch.equal(getattr(a, name)[:, :, : a.length], getattr(b, name)[:, :, : b.length]), (step, name)
    assert len(calls) >= 4  # the fast path did run


def test_masks_only_once_padding_was_seen():
    """Without padding the layers pass no key mask (no host sync per layer); a padded row turns it on."""
    from anybudget.kv.hf import _all_real

    model = tiny_model("llama")
    kv.enable(model)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    for pad_first in (False, True):
        am = torch.ones(2, 12, dtype=torch.long)
        if pad_first:
            am[0, :3] = 0
        cache = kv.H2OCache(16)  # keeps all 12: the padding slots stay
        with torch.no_grad():
            model(input_ids=ids, attention_mask=am, past_key_values=cache)
        mask = cache.layers[0].key_mask()
        assert (mask is not None) == pad_first
        if pad_first:
            assert not mask[0].all() and mask[1].all()
    m = torch.ones(2, 4, dtype=torch.bool)
    assert _all_real(m)
    m[0, 0] = False  # in-place change: the memo must notice
    assert not _all_real(m)


def test_cache_kwargs_follows_the_installed_transformers():
    """Library code passes the cache under the name the model's forward takes (``cache`` on recent
    transformers, ``past_key_values`` before), so it runs without deprecation warnings."""
    import inspect
    import warnings

    from anybudget.kv.evaluate import streaming_nll

    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None):
            return input_ids

    assert list(kv.cache_kwargs(Old(), "C")) == ["past_key_values"]
    model = tiny_model("llama")
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    assert kv.cache_kwargs(model, "C") == {name: "C"}
    kv.enable(model)
    ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        nll = streaming_nll(model, ids, kv.H2OCache("50%"))
    assert nll.shape == (1, 11) and torch.isfinite(nll).all()
