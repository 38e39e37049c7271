"""The captured greedy loop (kv.greedy_generate) generates exactly what ``model.generate`` does with
the same cache: full budget, evicting budgets, transformers' StaticCache, left padding, EOS; and its
step reads nothing back to the host (so a CUDA graph can replay it)."""

import pytest
import torch
from kv_helpers import tiny_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache, StaticCache

from anybudget import kv
from anybudget.kv.decode_loop import finish_at_eos


def _prompt(B=3, P=12, pads=(0, 3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 96, (B, P), generator=g)
    mask = torch.ones_like(ids)
    for b, n in enumerate(pads[:B]):
        mask[b, :n], ids[b, :n] = 0, 0
    return ids, mask


def _generate(model, ids, mask, cache, n, **kw):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                          **kv.cache_kwargs(model, cache), **kw)


@pytest.fixture(scope="module")
def model():
    m = tiny_model("llama")
    m.generation_config.eos_token_id = None  # fixed length unless a test names an EOS
    m.generation_config.pad_token_id = 0
    return m


@pytest.mark.parametrize("budget,padded", [("100%", False), ("100%", True), ("20%", False), ("20%", True), (5, True)])
def test_static_h2o_equals_generate(model, budget, padded):
    """Same kind of fresh cache in both: tokens equal exactly (at 20% and 5 tokens the cache evicts
    at every step, so the eviction path is the same one)."""
    n = 10
    ids, mask = _prompt() if padded else _prompt(pads=())
    kv.enable(model)
    ref = _generate(model, ids, mask if padded else None, kv.H2OCache(budget, static=True, max_new_tokens=n), n)
    kv.disable(model)
    cache = kv.H2OCache(budget, static=True, max_new_tokens=n)
    got = kv.greedy_generate(model, ids, cache, n, attention_mask=mask if padded else None)
    assert got.shape == (3, 12 + n) and torch.equal(got, ref)
    assert not hasattr(model, "_anybudget_prev_attn")  # anybudget's attention for the call only
    if budget != "100%":  # evictions happened: rows hold fewer tokens than they have seen
        assert int(cache.layers[0].valid.sum(-1).max()) < 12 + n - 1


def test_microbatched_prefill_equals_generate(model):
    """A prompt of more rows x tokens than ``prefill_batch_tokens`` is prefilled in row micro-batches
    inside the library (one row at a time here), then decoded as one batch."""
    n = 7
    ids, mask = _prompt(seed=5)
    kv.enable(model)
    ref = _generate(model, ids, mask, kv.H2OCache("20%", static=True, max_new_tokens=n, prefill_batch_tokens=12), n)
    kv.disable(model)
    got = kv.greedy_generate(model, ids, kv.H2OCache("20%", static=True, max_new_tokens=n, prefill_batch_tokens=12), n,
                             attention_mask=mask)
    assert torch.equal(got, ref)


def test_other_policies_and_reuse_of_a_cache(model):
    n = 8
    ids, mask = _prompt(seed=1)
    kv.enable(model)
    ref = _generate(model, ids, mask, kv.StreamingCache(6, sink_tokens=2, static=True, max_new_tokens=n), n)
    cache = kv.StreamingCache(6, sink_tokens=2, static=True, max_new_tokens=n)
    for _ in range(2):  # the second call resets the cache (same buffers)
        assert torch.equal(kv.greedy_generate(model, ids, cache, n, attention_mask=mask), ref)
    assert hasattr(model, "_anybudget_prev_attn")  # an enabled model stays enabled
    kv.disable(model)


@pytest.mark.parametrize("padded", [False, True])
def test_hf_static_cache_equals_generate(model, padded):
    n = 9
    ids, mask = _prompt() if padded else _prompt(pads=())
    ref = _generate(model, ids, mask, StaticCache(config=model.config, max_cache_len=12 + n), n)
    kv.enable(model)  # switched off for the call (a StaticCache needs the model's own attention)
    cache = StaticCache(config=model.config, max_cache_len=12 + n + 3)
    for _ in range(2):  # the second call resets the cache in place
        got = kv.greedy_generate(model, ids, cache, n, attention_mask=mask)
        assert torch.equal(got, ref)
    assert hasattr(model, "_anybudget_prev_attn")
    kv.disable(model)


def test_hf_static_cache_with_eager_attention_equals_generate():
    """Eager attention: the step's mask is additive (0 / dtype min), as transformers builds it."""
    m = tiny_model("llama")
    m.set_attn_implementation("eager")
    m.generation_config.eos_token_id, m.generation_config.pad_token_id = None, 0
    n = 8
    ids, mask = _prompt(seed=6)
    ref = _generate(m, ids, mask, StaticCache(config=m.config, max_cache_len=12 + n), n)
    got = kv.greedy_generate(m, ids, StaticCache(config=m.config, max_cache_len=12 + n), n, attention_mask=mask)
    assert torch.equal(got, ref)


def test_eos_pads_finished_rows_and_trims_like_generate(model):
    """With an EOS id, finished rows read pad after their EOS and the output ends where generate's does."""
    n = 12
    ids, mask = _prompt(seed=2)
    free = kv.greedy_generate(model, ids, kv.H2OCache("100%", static=True, max_new_tokens=n), n, attention_mask=mask)
    eos = int(free[0, 12 + 3])  # a token row 0 emits at step 3
    ref = _generate(model, ids, mask, StaticCache(config=model.config, max_cache_len=12 + n), n,
                    eos_token_id=eos, pad_token_id=0)
    for cache in (StaticCache(config=model.config, max_cache_len=12 + n), kv.H2OCache("100%", static=True, max_new_tokens=n)):
        got = kv.greedy_generate(model, ids, cache, n, attention_mask=mask, eos_token_id=eos, pad_token_id=0)
        assert torch.equal(got, ref)
    # the post-processing alone: pads after the first EOS, trims after every row's first EOS
    t = torch.tensor([[9, 1, 7, 2, 7], [9, 7, 3, 3, 3]])
    assert finish_at_eos(t, 1, [7], 0).tolist() == [[9, 1, 7], [9, 7, 0]]
    assert finish_at_eos(t, 1, [2], 0).tolist() == [[9, 1, 7, 2, 0], [9, 7, 3, 3, 3]]
    assert torch.equal(finish_at_eos(t, 1, [], 0), t)


class _HostReads(TorchDispatchMode):
    """Records ops that read a device value back to the host (a sync: not allowed in a capture)."""

    # lift_fresh: ``torch.tensor(...)`` from host data, a host-to-device copy on CUDA (not capturable)
    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "item", "equal", "is_nonzero", "lift_fresh")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(s in func.__name__ for s in self.SYNCING):
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("which", ["h2o", "hf_static"])
def test_the_step_reads_nothing_back_to_the_host(model, which, monkeypatch):
    """Whole decoding steps, with transformers' capture branches on (it asks torch whether a stream
    is capturing): no op in them reads a device value (``.item()``, ``bool()``, ``nonzero``)."""
    import anybudget.kv.decode_loop as loop

    n, ids = 6, _prompt(pads=())[0]
    cache = (kv.H2OCache("20%", static=True, max_new_tokens=n) if which == "h2o"
             else StaticCache(config=model.config, max_cache_len=12 + n))
    modes, real = [], loop._run_steps

    def watched(run, *a):
        def each():
            modes.append(_HostReads())
            with modes[-1]:
                run()
        return real(each, *a)

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(loop, "_run_steps", watched)
    out = loop.greedy_generate(model, ids, cache, n)
    assert out.shape == (3, 12 + n) and len(modes) == n - 1
    assert all(m.seen == [] for m in modes), [m.seen for m in modes]
    with _HostReads() as probe:  # the probe sees a host read and a tensor made from host data
        bool(torch.ones(2).any())
        torch.tensor([1, 2])
    assert probe.seen == ["_local_scalar_dense.default", "lift_fresh.default"]


class _TracedGraph:
    """A CUDA graph's semantics on the CPU: the step's Python runs once (``make_fx`` records its aten
    ops, in-place writes to the loop's and the cache's tensors included, and fails on a host read);
    every replay reruns the recorded ops only. The trace executes the step once (a capture does
    not), so the first replay is skipped: the same number of steps run."""

    def __init__(self, fn, warmup=2):
        from torch.fx.experimental.proxy_tensor import make_fx

        for _ in range(warmup):
            fn()
        self.gm, self.skip = make_fx(fn)(), True

    def replay(self):
        if not self.skip:
            self.gm()
        self.skip = False


@pytest.mark.parametrize("which", ["h2o_20", "h2o_5_tokens", "hf_static"])
def test_replayed_steps_equal_generate(model, which, monkeypatch):
    """Replays of one recorded step (no Python per step: a Python-side counter or branch that
    changes per step would be frozen, as in a CUDA graph) still generate generate's tokens."""
    import anybudget.kv.decode_loop as loop

    n = 9
    ids, mask = _prompt(seed=4)

    def make():
        return {"h2o_20": lambda: kv.H2OCache("20%", static=True, max_new_tokens=n),
                "h2o_5_tokens": lambda: kv.H2OCache(5, static=True, max_new_tokens=n),
                "hf_static": lambda: StaticCache(config=model.config, max_cache_len=12 + n)}[which]()

    ours = which != "hf_static"
    if ours:
        kv.enable(model)
    ref = _generate(model, ids, mask, make(), n)
    kv.disable(model)
    monkeypatch.setattr(loop, "_graphs_on", lambda dev: True)
    monkeypatch.setattr(loop, "capture", _TracedGraph)
    stats = {}
    got = loop.greedy_generate(model, ids, make(), n, attention_mask=mask, stats=stats)
    assert torch.equal(got, ref)
    assert stats["replays"] == n - 1 - 2 and stats["warmup_steps"] == 2 and stats["decode_ms_per_step"] > 0


def test_compiled_step_equals_eager(model):
    n = 6
    ids, mask = _prompt(seed=3)
    ref = kv.greedy_generate(model, ids, kv.H2OCache("20%", static=True, max_new_tokens=n), n, attention_mask=mask)
    torch._dynamo.reset()
    got = kv.greedy_generate(model, ids, kv.H2OCache("20%", static=True, max_new_tokens=n), n, attention_mask=mask,
                             compile={"backend": "aot_eager"}, stats=(stats := {}))
    assert torch.equal(got, ref)
    assert stats["decode_ms_per_step"] > 0 and stats["replays"] == 0 and stats["prefill_s"] > 0


def test_bad_inputs_name_the_argument(model):
    ids = _prompt(pads=())[0]
    with pytest.raises(ValueError, match="cache=DynamicCache.*static=True.*StaticCache"):
        kv.greedy_generate(model, ids, DynamicCache(), 4)
    with pytest.raises(ValueError, match="cache=H2OCache.*static cache"):
        kv.greedy_generate(model, ids, kv.H2OCache("20%"), 4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=rf"max_new_tokens={bad!r} is out of range; it must be an integer >= 1"):
            kv.greedy_generate(model, ids, kv.H2OCache("20%", static=True, max_new_tokens=4), bad)
    with pytest.raises(ValueError, match="max_cache_len=14 is too short.*needs >= 15"):
        kv.greedy_generate(model, ids, StaticCache(config=model.config, max_cache_len=14), 4)
    with pytest.raises(ValueError, match="attention_mask of shape"):
        kv.greedy_generate(model, ids, kv.H2OCache("20%", static=True, max_new_tokens=4), 4,
                           attention_mask=torch.ones(3, 5))
    flex = tiny_model("llama")
    flex.set_attn_implementation("flex_attention")
    with pytest.raises(ValueError, match="model attention 'flex_attention'.*sdpa, eager"):
        kv.greedy_generate(flex, ids, StaticCache(config=flex.config, max_cache_len=20), 4)
    with pytest.raises(ValueError, match="warmup_steps=0"):
        kv.greedy_generate(model, ids, kv.H2OCache("20%", static=True, max_new_tokens=4), 4, warmup_steps=0)


def test_what_a_capture_cannot_run_is_refused_by_name(model):
    from anybudget.kv.decode_loop import _check_capturable

    rnd = kv.RandomCache("20%", static=True, max_new_tokens=4)
    with pytest.raises(ValueError, match="cache=RandomCache: .*own CUDA generator"):
        _check_capturable(rnd, False, "cuda")
    _check_capturable(rnd, False, "cpu")  # eager steps on the CPU: no capture, nothing to refuse
    h2o = kv.H2OCache("20%", static=True, max_new_tokens=4)
    for bad in ({"mode": "reduce-overhead"}, {"mode": "max-autotune"}, {"options": {"triton.cudagraphs": True}}):
        with pytest.raises(ValueError, match="compile=.*inductor's own CUDA graphs"):
            _check_capturable(h2o, bad, "cuda")
    _check_capturable(h2o, {"mode": "max-autotune-no-cudagraphs"}, "cuda")
    _check_capturable(h2o, True, "cuda")


def test_generation_config_logits_processors_are_refused(model):
    ids = _prompt(pads=())[0]
    model.generation_config.repetition_penalty = 1.05
    try:
        with pytest.raises(ValueError, match=r"logits processors \(repetition_penalty=1.05\)"):
            kv.greedy_generate(model, ids, kv.H2OCache("20%", static=True, max_new_tokens=4), 4)
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert kv.greedy_generate(model, ids, kv.H2OCache("20%", static=True, max_new_tokens=4), 4).shape[1] >= ids.shape[1]


def test_one_new_token_is_the_prefill_argmax(model):
    ids, mask = _prompt(seed=7)
    ref = _generate(model, ids, mask, StaticCache(config=model.config, max_cache_len=13), 1)
    got = kv.greedy_generate(model, ids, StaticCache(config=model.config, max_cache_len=13), 1, attention_mask=mask,
                             stats=(stats := {}))
    assert got.shape == (3, 13) and torch.equal(got, ref) and stats["replays"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("which", ["h2o_20", "h2o_20_triton", "hf_static"])
def test_captured_loop_equals_generate_gpu(which):
    """CUDA: the real capture and replays (fp32 tiny Llama) give generate's tokens."""
    m = tiny_model("llama").cuda()
    m.generation_config.eos_token_id, m.generation_config.pad_token_id = None, 0
    n = 12
    ids, mask = (t.cuda() for t in _prompt(seed=8))

    def make():
        if which == "hf_static":
            return StaticCache(config=m.config, max_cache_len=12 + n)
        return kv.H2OCache("20%", static=True, max_new_tokens=n,
                           decode_products="triton" if which.endswith("triton") else None)

    if which != "hf_static":
        kv.enable(m)
    ref = _generate(m, ids, mask, make(), n, disable_compile=True)  # the same eager kernels
    kv.disable(m)
    got = kv.greedy_generate(m, ids, make(), n, attention_mask=mask, stats=(stats := {}))
    assert stats["replays"] == n - 1 - 2 and stats["decode_ms_per_step"] > 0
    assert torch.equal(got, ref)
