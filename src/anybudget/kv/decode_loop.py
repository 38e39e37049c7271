"""A captured greedy decoding loop: one CUDA graph per generation, replayed with no host sync.

``model.generate`` spends a few ms per token on the host (its Python loop, a device-to-host read
per token for the stopping criteria, launches, the compiled graph's input checks). Here a decoding
step is a function of fixed device tensors (the current tokens, their positions, the output
column), so it is captured once in a ``torch.cuda.CUDAGraph`` and replayed ``max_new_tokens - 1``
times; the host waits once, at the end. On the CPU the same step runs eagerly in the loop (the
tests hold it against ``generate``).

    cache = kv.H2OCache("20%", static=True, max_new_tokens=128)
    out = kv.greedy_generate(model, input_ids, cache, 128, attention_mask=mask)

End of sequence: every row decodes ``max_new_tokens`` tokens (a fixed-length loop cannot stop
early without reading the device). After the loop, each row's tokens after its first generated
EOS are replaced by the pad token (``pad_token_id``, else the first EOS id) and, if every row
generated an EOS, the columns after the last row's first EOS are dropped: the tokens and the
length ``generate(do_sample=False)`` returns with the same EOS and pad ids (rows are independent,
so a finished row's extra tokens change nothing in the others).

Plain greedy only: the step takes the argmax of the logits. A model whose ``generation_config``
asks ``generate`` for logits processors (repetition penalty, suppressed or bad words, a minimum
length, no-repeat n-grams) is refused, since ``generate`` would return other tokens.
"""

from __future__ import annotations

import contextlib
import time

import torch

from anybudget.cudagraph import capture
from anybudget.kv.cache import KVBudgetCache
from anybudget.kv.hf import cache_kwargs, disable, enable

__all__ = ["greedy_generate"]

_MASKED_ATTENTION = ("sdpa", "eager")  # what the step's own 4-D mask for transformers' StaticCache feeds


# generation_config fields whose non-default values make generate(do_sample=False) apply a logits processor
_PROCESSORS = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
               "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "min_new_tokens": (None, 0),
               "min_length": (None, 0), "encoder_repetition_penalty": (None, 1.0), "sequence_bias": (None,)}
# torch.compile settings that record inductor's own CUDA graphs, which cannot run inside our capture
_OWN_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def _check_capturable(cache, compile, device_type: str) -> None:
    """What a CUDA-graph capture of the step refuses: a cache that draws from its own generator
    (RandomCache: an unregistered CUDA generator cannot advance in a capture), inductor's own
    CUDA graphs inside ours, and a sliding-window StaticCache (its length is a host int)."""
    if device_type != "cuda":
        return
    if isinstance(cache, KVBudgetCache) and cache.policy.name == "random":
        raise ValueError("cache=RandomCache: its evictions draw from the cache's own CUDA generator, which a "
                         "captured step cannot advance; greedy_generate supports the H2O, StreamingLLM and local "
                         "policies (RandomCache is a control for quality runs: use it with model.generate)")
    if isinstance(compile, dict) and (compile.get("mode") in _OWN_GRAPH_MODES
                                      or (compile.get("options") or {}).get("triton.cudagraphs")):
        raise ValueError(f"compile={compile!r}: inductor's own CUDA graphs cannot run inside greedy_generate's "
                         "capture; use mode 'default' or 'max-autotune-no-cudagraphs' (compile=True)")
    layers = getattr(cache, "layers", None) or []
    if not isinstance(cache, KVBudgetCache) and any(getattr(layer, "is_sliding", False) for layer in layers):
        raise ValueError("cache: a StaticCache with sliding-window layers keeps its length on the host, so a "
                         "captured step cannot advance it; use a model without sliding windows or model.generate")


def _check(model, input_ids, cache, max_new_tokens, attention_mask, warmup_steps):
    gc = model.generation_config
    asked = [f"{k}={getattr(gc, k)!r}" for k, ok in _PROCESSORS.items()
             if hasattr(gc, k) and getattr(gc, k) not in ok]
    if asked:
        raise ValueError(f"model.generation_config asks for logits processors ({', '.join(asked)}) that "
                         "greedy_generate does not apply (plain argmax); reset them, e.g. "
                         "model.generation_config.repetition_penalty = 1.0, or use model.generate")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is out of range; it must be an integer >= 1")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"warmup_steps={warmup_steps!r} is out of range; it must be an integer >= 1")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 1:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids of shape {shape}: expected a (batch, prompt) tensor with prompt >= 1")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    static = isinstance(cache, KVBudgetCache) and cache.static
    from transformers import StaticCache

    if not (static or isinstance(cache, StaticCache)):
        raise ValueError(
            f"cache={type(cache).__name__}: greedy_generate replays fixed shapes and needs a static cache; pass an "
            "anybudget cache with static=True (e.g. kv.H2OCache('20%', static=True, max_new_tokens=128)) or "
            "transformers' StaticCache(config=model.config, max_cache_len=prompt + max_new_tokens)")
    if isinstance(cache, StaticCache):
        room = min(layer.max_cache_len for layer in cache.layers)
        need = input_ids.shape[1] + max_new_tokens - 1  # the last token is never fed back
        if room < need:
            raise ValueError(f"cache: a StaticCache of max_cache_len={room} is too short for a prompt of "
                             f"{input_ids.shape[1]} + max_new_tokens={max_new_tokens} (needs >= {need})")
        impl = getattr(model, "_anybudget_prev_attn", model.config._attn_implementation)  # the model's own
        if impl not in _MASKED_ATTENTION:
            raise ValueError(f"model attention {impl!r}: greedy_generate with a StaticCache supports "
                             f"{', '.join(_MASKED_ATTENTION)} (model.set_attn_implementation('sdpa'))")


@contextlib.contextmanager
def _attention_for(model, cache):
    """anybudget's attention for its caches, the model's own for transformers' StaticCache (each
    switched for the call only and restored after)."""
    was = hasattr(model, "_anybudget_prev_attn")
    ours = isinstance(cache, KVBudgetCache)
    if ours and not was:
        enable(model)
    elif not ours and was:
        disable(model)
    try:
        yield
    finally:
        if ours and not was:
            disable(model)
        elif not ours and was:
            enable(model)


def _eos_ids(model, eos_token_id):
    ids = model.generation_config.eos_token_id if eos_token_id is None else eos_token_id
    if ids is None or ids is False:
        return []
    return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]


def finish_at_eos(tokens: torch.Tensor, prompt_len: int, eos: list[int], pad: int) -> torch.Tensor:
    """``tokens`` (B, prompt + new) as ``generate`` returns them: a row's tokens after its first
    generated EOS become ``pad``; columns after every row's first EOS are dropped."""
    if not eos:
        return tokens
    new = tokens[:, prompt_len:]
    hit = torch.isin(new, torch.tensor(eos, device=new.device))
    after = (hit.cumsum(1) - hit.long()) > 0  # an EOS came strictly before
    new = new.masked_fill(after, pad)
    ended = hit.any(1)
    if bool(ended.all()):
        last = int(hit.long().argmax(1).max())
        new = new[:, : last + 1]
    return torch.cat([tokens[:, :prompt_len], new], 1)


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, cache, max_new_tokens: int, attention_mask=None, *,
                    compile: bool | dict = False, eos_token_id=None, pad_token_id=None, warmup_steps: int = 2,
                    stats: dict | None = None) -> torch.LongTensor:
    """Greedy decoding through a static cache with a captured step; returns (batch, prompt + new) ids.

    model: a causal LM of transformers (``anybudget.kv.SUPPORTED`` families for anybudget caches).
    input_ids: (batch, prompt); attention_mask: (batch, prompt) 1/0, left padding.
    cache: an anybudget cache built with ``static=True`` or transformers' ``StaticCache`` (reset
    here: one cache holds one generation). anybudget's attention is switched on for its caches
    (and off for a StaticCache) for the call only.
    max_new_tokens: tokens decoded per row (>= 1); EOS handling: see the module doc.
    compile: ``True``: torch.compile the step (mode ``"max-autotune-no-cudagraphs"``: the graph
    is ours) before capture; a dict: torch.compile's keyword arguments.
    warmup_steps: decoding steps run eagerly on a side stream before the capture (CUDA); they
    are real steps of the generation.
    stats: filled with ``prefill_s``, ``warmup_steps``, ``capture_s`` (warm-up + compile +
    capture, host seconds), ``replays`` and ``decode_ms_per_step`` (CUDA events around the
    replays / replays; on the CPU the loop's wall time / steps).
    """
    _check(model, input_ids, cache, max_new_tokens, attention_mask, warmup_steps)
    _check_capturable(cache, compile, input_ids.device.type)
    eos = _eos_ids(model, eos_token_id)
    pad = pad_token_id if pad_token_id is not None else model.generation_config.pad_token_id
    pad = int(pad if pad is not None else (eos[0] if eos else 0))
    dev = input_ids.device
    B, P = input_ids.shape
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(dev).long()
    stats = {} if stats is None else stats
    ck = cache_kwargs(model, cache)
    ours = isinstance(cache, KVBudgetCache)
    with _attention_for(model, cache):
        cache.reset()
        t0 = time.perf_counter()
        # prefill: positions as generate gives them (left padding: each row counts its real tokens)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        logits = model(input_ids=input_ids, attention_mask=mask if attention_mask is not None or not ours else None,
                       position_ids=pos, use_cache=True, logits_to_keep=1, **ck).logits
        tokens = torch.empty(B, P + max_new_tokens, dtype=torch.long, device=dev)
        tokens[:, :P] = input_ids
        tokens[:, P] = logits[:, -1].argmax(-1)
        # the step's state: fixed addresses, advanced on the device
        tok = tokens[:, P:P + 1].clone()
        pos = pos[:, -1:] + 1
        at = torch.full((1,), P, dtype=torch.long, device=dev)  # tokens in the cache (the new token's slot)
        full = None
        if not ours:  # transformers' StaticCache: the step builds the mask generate would (padding & causal)
            room = min(layer.max_cache_len for layer in cache.layers)
            full = torch.ones(B, room, dtype=torch.bool, device=dev)
            full[:, :P] = mask.bool()
            slots = torch.arange(room, device=dev)
            neg = torch.finfo(next(model.parameters()).dtype).min
            additive = model.config._attn_implementation == "eager"
        stats["prefill_s"] = _sync_time(dev, t0)

        def step():
            am = None
            if full is not None:
                m = (full & (slots <= at))[:, None, None, :]
                am = torch.where(m, 0.0, neg).to(next(model.parameters()).dtype) if additive else m
            out = model(input_ids=tok, attention_mask=am, position_ids=pos, use_cache=True, logits_to_keep=1, **ck)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            at.add_(1)
            tokens.index_copy_(1, at, nxt)
            tok.copy_(nxt)
            pos.add_(1)

        run = step
        if compile:
            run = torch.compile(step, **(compile if isinstance(compile, dict)
                                         else {"mode": "max-autotune-no-cudagraphs"}))
        _run_steps(run, max_new_tokens - 1, dev, warmup_steps, stats)
    return finish_at_eos(tokens, P, eos, pad)


def _graphs_on(dev) -> bool:
    """Whether the steps are captured and replayed (CUDA) or run eagerly (the tests emulate a
    capture on the CPU by patching this and :func:`capture`)."""
    return dev.type == "cuda"


def _run_steps(run, steps: int, dev, warmup_steps: int, stats: dict) -> None:
    """``steps`` calls of ``run``: with graphs, ``warmup_steps`` of them on a side stream, one
    capture, the rest as replays with no host sync until the end; else (CPU, or too few steps)
    eagerly."""
    t0 = time.perf_counter()
    if _graphs_on(dev) and steps > warmup_steps:
        graph = capture(run, warmup=warmup_steps)
        replays = steps - warmup_steps
        stats.update(warmup_steps=warmup_steps, capture_s=_sync_time(dev, t0), replays=replays)
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        if dev.type == "cuda":
            end.record()
            end.synchronize()
            stats["decode_ms_per_step"] = start.elapsed_time(end) / replays
        else:
            stats["decode_ms_per_step"] = (time.perf_counter() - t0) * 1e3 / replays
        return
    for _ in range(steps):
        run()
    stats.update(warmup_steps=0, capture_s=0.0, replays=0)
    stats["decode_ms_per_step"] = _sync_time(dev, t0) * 1e3 / steps if steps else float("nan")


def _sync_time(dev, t0: float) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0
