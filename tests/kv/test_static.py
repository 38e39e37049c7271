"""The static-shape serving path: device-side eviction equals the reference policy functions, the
compiled decode step generates the full cache's tokens at 100%, large prompts are prefilled in
row micro-batches, percentages count real tokens, a used cache restarts."""

import math

import pytest
import torch
from kv_helpers import tiny_model
from transformers import CompileConfig

from anybudget import kv
from anybudget.kv.slots import cache_size


def _compile_config(backend="aot_eager"):
    cc = CompileConfig(backend=backend, fullgraph=True, dynamic=True)
    cc._compile_all_devices = True  # CPU: transformers compiles only on accelerators otherwise
    return cc


def _padded(B=3, P=14, pads=(0, 3, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 96, (B, P), generator=g)
    mask = torch.ones_like(ids)
    for b, n in enumerate(pads):
        mask[b, :n] = 0
        ids[b, :n] = 0
    return ids, mask


@pytest.mark.parametrize("policy,budget", [("h2o", "40%"), ("h2o", 5), ("streaming", "40%"), ("local", 6)])
def test_static_eviction_equals_reference_with_ties_and_padding(policy, budget):
    """Drive a static layer with integer (tied) scores and left-padded rows; after the prompt and
    every step its valid slots are exactly the reference function's keep set over the real tokens."""
    g = torch.Generator().manual_seed(7)
    B, H, P, D, steps = 3, 2, 9, 4, 12
    cache = kv.make_cache(policy, budget, static=True, max_new_tokens=steps,
                          **({"sink_tokens": 2} if policy == "streaming" else {}))
    layer = cache._new_layer()
    pads = (0, 2, 5)
    valid_p = torch.ones(B, P, dtype=torch.bool)
    for b, n in enumerate(pads):
        valid_p[b, :n] = False
    acc = {}
    for step in range(steps + 1):
        q = P if step == 0 else 1
        k = torch.randn(B, H, q, D, generator=g)
        k[..., 0] = torch.arange(q) + (0 if step == 0 else P + step - 1)  # a key carries its position
        layer.update(k, k + 1)
        if step == 0:
            col = torch.randint(0, 3, (B, H, P), generator=g).float()
            before_pos, before_valid = torch.arange(P).expand(B, H, P), valid_p[:, None].expand(B, H, P)
            layer.finish_prompt(col if cache.needs_scores else None, valid_p)
        else:
            before_pos, before_valid = layer.pos.clone(), layer.valid.clone()
            col = torch.randint(0, 3, layer.prio.shape, generator=g).float() * layer.valid
            if cache.needs_scores:
                layer.prio += col
            layer.evict()
        v = layer.valid
        assert torch.equal(layer.keys[..., 0][v], layer.pos[v].float())  # keys travel with positions
        assert torch.equal(layer.values[..., 0][v], layer.pos[v].float() + 1)
        for b in range(B):
            real = P - pads[b] + step
            target = cache_size(cache.budget, real)
            heavy, recent = cache.policy.split(target)
            for h in range(H):
                d = acc.setdefault((b, h), {})
                for j in range(before_pos.shape[-1]):
                    if before_valid[b, h, j]:
                        p = int(before_pos[b, h, j])
                        d[p] = d.get(p, 0.0) + float(col[b, h, j])
                ordered = sorted(d)
                if policy == "h2o":
                    keep = kv.h2o_keep_indices(torch.tensor([d[p] for p in ordered]), heavy, recent).tolist()
                elif policy == "streaming":
                    keep = kv.streaming_keep_indices(len(ordered), heavy, recent).tolist()
                else:
                    keep = kv.local_keep_indices(len(ordered), recent).tolist()
                expect = {ordered[i] for i in keep}
                got = set(layer.pos[b, h][layer.valid[b, h]].tolist())
                assert got == expect, (policy, step, b, h)
                assert len(got) == min(target, real)
                acc[(b, h)] = {p: d[p] for p in got}
        assert int((~layer.valid).sum(-1).min()) >= 1  # a free slot for the next token


def test_compiled_static_100_percent_equals_full_cache_tokens():
    model = tiny_model("qwen3")  # GQA, q/k norms
    ids, mask = _padded()
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    kv.enable(model)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cache = kv.H2OCache("100%", static=True, max_new_tokens=10)
    assert cache.is_compileable
    for _ in range(2):  # the second call reuses the cache: same buffers, no recompilation
        got = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                             compile_config=_compile_config(), **kv.cache_kwargs(model, cache))
        assert torch.equal(got, ref)
    assert hasattr(model, "_compiled_call")  # transformers took its compiled decoding path
    # Another batch and budget: the slot buffers' batch and slot dims are dynamic, no recompilation.
    ids2, mask2 = _padded(B=2, P=9, pads=(0, 2))
    ref2 = model.generate(input_ids=ids2, attention_mask=mask2, max_new_tokens=5, do_sample=False,
                          **kv.cache_kwargs(model, kv.H2OCache("100%")))
    got2 = model.generate(input_ids=ids2, attention_mask=mask2, max_new_tokens=5, do_sample=False,
                          compile_config=_compile_config(),
                          **kv.cache_kwargs(model, kv.H2OCache("100%", static=True, max_new_tokens=5)))
    assert torch.equal(got2, ref2)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("make", [lambda: kv.H2OCache("30%"), lambda: kv.StreamingCache(6, sink_tokens=2),
                                  lambda: kv.LocalCache("50%"), lambda: kv.RandomCache("40%", seed=1)])
def test_static_generates_what_the_dynamic_cache_generates(make):
    model = kv.enable(tiny_model("llama"))
    ids, mask = _padded()
    dyn, stat = make(), make()
    stat = kv.KVBudgetCache(stat.budget, stat.policy, static=True, max_new_tokens=8)
    outs = [model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                           **kv.cache_kwargs(model, c)) for c in (dyn, stat)]
    assert torch.equal(outs[0], outs[1])
    for i in range(2):  # same kept set in every layer, row and head
        kd, ks = dyn.kept_positions(i), stat.kept_positions(i)
        for b in range(kd.shape[0]):
            for h in range(kd.shape[1]):
                assert set(kd[b, h].tolist()) - {-1} == set(ks[b, h].tolist()) - {-1}


def test_percent_budget_counts_real_tokens_not_padding():
    model = kv.enable(tiny_model("llama"))
    ids, mask = _padded(P=20, pads=(0, 4, 12))
    for cache in (kv.H2OCache("25%"), kv.H2OCache("25%", static=True, max_new_tokens=0)):
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, **kv.cache_kwargs(model, cache))
        layer = cache.layers[1]
        valid = layer.valid if cache.static else layer.valid[:, :, : layer.length]
        assert valid.sum(-1)[:, 0].tolist() == [math.ceil(0.25 * n) for n in (20, 16, 8)]


@pytest.mark.parametrize("static", [False, True])
def test_microbatched_prefill_equals_one_forward(static):
    model = kv.enable(tiny_model("qwen2"))
    ids, mask = _padded(B=7, P=16, pads=(0, 0, 5, 0, 9, 0, 1))
    kw = {"static": True, "max_new_tokens": 6} if static else {}
    whole = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                           **kv.cache_kwargs(model, kv.H2OCache("25%", **kw)))
    cache = kv.H2OCache("25%", prefill_batch_tokens=40, **kw)  # 2 rows per micro-batch
    parts = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                           **kv.cache_kwargs(model, cache))
    assert torch.equal(whole, parts)
    assert cache.layers[0].batch == 7
    kv.disable(model)
    assert "forward" not in vars(model)


def test_microbatched_prefill_cuts_a_mask_dict():
    """``generate`` of transformers 5.17 builds the masks per layer type before the forward for a
    compileable cache: the micro-batched prompt cuts every mask of the dict to its rows."""
    model = kv.enable(tiny_model("qwen2"))
    ids, mask = _padded(B=5, P=16, pads=(0, 5, 0, 9, 1))

    def run(attention_mask, **kw):
        cache = kv.H2OCache("25%", static=True, max_new_tokens=2, **kw)
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=attention_mask, **kv.cache_kwargs(model, cache)).logits

    whole = run(mask)
    parts = run({"full_attention": mask}, prefill_batch_tokens=40)  # 2 rows per micro-batch
    assert parts.shape == whole.shape
    assert torch.allclose(parts, whole, atol=1e-5)


@pytest.mark.parametrize("static", [False, True])
def test_a_used_cache_passed_again_restarts(static):
    model = kv.enable(tiny_model("llama"))
    ids, mask = _padded()
    cache = kv.H2OCache("50%", static=static, max_new_tokens=6)
    first = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                           **kv.cache_kwargs(model, cache))
    again = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                           **kv.cache_kwargs(model, cache))
    assert torch.equal(first, again)


def test_static_cache_sized_for_fewer_new_tokens_stays_at_capacity():
    model = kv.enable(tiny_model("llama"))
    ids, mask = _padded(P=10)
    cache = kv.H2OCache("50%", static=True, max_new_tokens=2)  # capacity ceil(0.5 * 12) = 6
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=9, do_sample=False,
                         **kv.cache_kwargs(model, cache))
    assert out.shape == (3, 19)
    for layer in cache.layers:
        assert layer.capacity == 6 and int(layer.valid.sum(-1).max()) <= 6


def test_static_works_where_the_attention_does_not_hand_kwargs_to_the_cache():
    """GPT-NeoX calls ``cache.update`` without the attention kwargs (as every family did before
    transformers 5.24): enable's hooks still hand the cache to the attention, eager and compiled."""
    model = kv.enable(tiny_model("gpt_neox"))
    attn = [m for m in model.modules() if type(m).__name__ == "GPTNeoXAttention"]
    assert len(attn) == 2 and all(len(m._forward_pre_hooks) == 1 for m in attn)
    ids, mask = _padded()
    gen = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 6, "do_sample": False}
    dyn = model.generate(**gen, **kv.cache_kwargs(model, kv.H2OCache("30%")))
    for cc in ({}, {"compile_config": _compile_config()}):
        stat = kv.H2OCache("30%", static=True, max_new_tokens=6)
        assert torch.equal(model.generate(**gen, **cc, **kv.cache_kwargs(model, stat)), dyn)
        assert int(stat.layers[0].valid.sum(-1).max()) < ids.shape[1]  # it evicted
    assert hasattr(model, "_compiled_call")
    kv.disable(model)
    assert all(len(m._forward_pre_hooks) == 0 for m in attn)
    kv.enable(kv.enable(model))  # enabling twice hooks once
    assert all(len(m._forward_pre_hooks) == 1 for m in attn)


def test_static_bad_inputs():
    with pytest.raises(ValueError, match=r"max_new_tokens=None: a static cache with a percentage budget"):
        kv.H2OCache("20%", static=True)
    with pytest.raises(ValueError, match="max_new_tokens=-1 must be an integer >= 0"):
        kv.H2OCache(64, static=True, max_new_tokens=-1)
    with pytest.raises(ValueError, match="prefill_batch_tokens=0 must be an integer >= 1"):
        kv.H2OCache("20%", prefill_batch_tokens=0)
    with pytest.raises(TypeError, match="static='yes' must be True or False"):
        kv.H2OCache(64, static="yes")
    model = kv.enable(tiny_model("llama"))
    cache = kv.H2OCache(8, static=True)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 96, (1, 5)), **kv.cache_kwargs(model, cache))
        with pytest.raises(ValueError, match="a static cache decodes one token per step"):
            model(input_ids=torch.randint(0, 96, (1, 2)), position_ids=torch.tensor([[5, 6]]),
                  **kv.cache_kwargs(model, cache))


def test_compiled_reused_cache_equals_fresh_cache():
    """The serving benchmark's sequence (a short warm-up generate, then a long one on the same
    cache) under transformers' compiled decoding, with left padding and a row micro-batched
    prompt: the reused cache generates a fresh cache's tokens and the dynamic cache's, and keeps a
    free slot in every row."""
    model = kv.enable(tiny_model("llama"))
    ids, mask = _padded(B=4, P=14, pads=(0, 3, 6, 1))
    gen = {"input_ids": ids, "attention_mask": mask, "do_sample": False, "compile_config": _compile_config()}

    def static():
        return kv.H2OCache("30%", static=True, max_new_tokens=10, prefill_batch_tokens=28)  # 2 rows a batch

    cache = static()
    model.generate(**gen, max_new_tokens=3, **kv.cache_kwargs(model, cache))
    again = model.generate(**gen, max_new_tokens=10, **kv.cache_kwargs(model, cache))
    fresh = model.generate(**gen, max_new_tokens=10, **kv.cache_kwargs(model, static()))
    dyn = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10,
                         **kv.cache_kwargs(model, kv.H2OCache("30%")))
    assert hasattr(model, "_compiled_call")
    assert torch.equal(again, fresh) and torch.equal(again, dyn)
    for layer in cache.layers:
        assert bool((~layer.valid).any(-1).all()) and int(layer.valid.sum(-1).max()) <= layer.capacity


def _prefilled_layer(B=3, H=2, P=9, D=4, pads=(0, 2, 5), budget="40%", steps=6):
    cache = kv.H2OCache(budget, static=True, max_new_tokens=steps)
    layer = cache._new_layer()
    g = torch.Generator().manual_seed(3)
    valid_p = torch.ones(B, P, dtype=torch.bool)
    for b, n in enumerate(pads):
        valid_p[b, :n] = False
    k = torch.randn(B, H, P, D, generator=g)
    k[..., 0] = torch.arange(P).float()
    layer.update(k, k + 1)
    layer.finish_prompt(torch.randint(0, 3, (B, H, P), generator=g).float(), valid_p)
    return layer


def test_reorder_cache_moves_every_buffer_and_next_token_lands_in_a_free_slot():
    """Beam search reorders rows: scores, positions and validity move with their keys, in place
    (the compiled step's buffers keep their addresses), and the next token is written into a slot
    that is free in its (new) row, so no kept token is overwritten."""
    layer = _prefilled_layer()
    before = {n: getattr(layer, n).clone() for n in layer.ROW_BUFFERS}
    ptrs = {n: getattr(layer, n).data_ptr() for n in layer.ROW_BUFFERS}
    beam = torch.tensor([2, 0, 1])
    layer.reorder_cache(beam)
    for n in layer.ROW_BUFFERS:
        assert torch.equal(getattr(layer, n), before[n][beam]), n
        assert getattr(layer, n).data_ptr() == ptrs[n], n
    kept = layer.valid.clone()
    new = torch.full((3, 2, 1, 4), 100.0)
    layer.update(new, new)
    written = layer.keys[..., 0] == 100.0
    assert torch.equal(written.sum(-1), torch.ones(3, 2, dtype=torch.long))
    assert not bool((written & kept).any())  # landed in a slot that held no kept token
    assert torch.equal(layer.valid, kept | written)


def test_free_slot_follows_the_validity_mask_and_a_full_row_is_an_error():
    layer = _prefilled_layer()
    assert torch.equal(layer.free_slot(), layer.valid.to(torch.int8).argmin(-1, keepdim=True))
    layer.valid[0, 1] = False
    layer.valid[0, 1, 4] = True  # eager code changed the validity: the next write follows it
    assert layer.free_slot()[0, 1, 0] == 0
    layer.valid[2, 0] = True
    with pytest.raises(RuntimeError, match=r"row 2, head 0 holds \d+ valid tokens in \d+ slots"):
        layer.check_free_slot()


def test_inductor_compiled_steps_equal_eager_steps_over_two_generates():
    """inductor (not only aot_eager) compiles the decoding step; on float64 weights its tokens and
    kept positions equal the eager static cache's after a short generate and after a longer one on
    the same cache (the serving sequence), with padding and a micro-batched prompt. 17 slots a
    row: inductor's CPU argmin over an int8 mask is wrong from 16 slots on (the free slot read 0,
    so a kept token was overwritten from the second step on, or lay past the row)."""
    model = kv.enable(tiny_model("llama")).double()
    ids, mask = _padded(B=4, P=64, pads=(0, 5, 0, 9))
    N = 12  # 20% of 64 + 12 tokens: capacity 16, 17 slots

    def run(compiled: bool):
        cache = kv.H2OCache("20%", static=True, max_new_tokens=N, prefill_batch_tokens=128)  # 2 rows a batch
        extra = {"compile_config": _compile_config("inductor")} if compiled else {}
        out = []
        for n in (3, N):
            toks = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                  min_new_tokens=n, **extra, **kv.cache_kwargs(model, cache))
            out.append((toks, [cache.kept_positions(i) for i in range(len(cache.layers))]))
        return out

    eager, compiled = run(False), run(True)
    assert hasattr(model, "_compiled_call")
    for (te, ke), (tc, kc) in zip(eager, compiled):
        assert torch.equal(tc, te)
        for a, b in zip(kc, ke):
            assert torch.equal(a, b)
