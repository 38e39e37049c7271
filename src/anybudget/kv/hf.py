"""Hugging Face integration: anybudget's attention function, registered through transformers'
public ``AttentionInterface`` / ``AttentionMaskInterface`` (no model file is patched).

The mask function hands the attention the plain 2-D padding mask: the evicted cache's slots no
longer line up with positions, so the attention builds its own mask from the cache's per-slot
validity (and causality among the new tokens, which always sit in the newest slots).

The attention finds its layer's slots through the call's kwargs: :func:`enable` puts a forward
pre-hook on every attention module that adds the call's anybudget cache under :data:`CACHE_KEY`,
and the attention module hands its kwargs on to the attention function, which reads
``cache.layers[module.layer_idx]``. This works on every transformers 5.x (the cache's ``update``
needs no kwargs) and under ``torch.compile`` (no tensor attributes, no module-level state).
"""

from __future__ import annotations

import contextlib

import torch

from anybudget.kv.attention import budget_attention, masked_sdpa
from anybudget.kv.cache import KVBudgetCache
from anybudget.kv.prefill import microbatched_forward
from anybudget.kv.static_slots import StaticSlotLayer

ATTN_NAME = "anybudget"
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gpt_neox")
CACHE_KEY = "anybudget_cache"  # the attention kwarg that carries the call's anybudget cache
_CACHE_ARGS = ("cache", "past_key_values", "layer_past")  # the cache's name in attention modules' forward

__all__ = ["ATTN_NAME", "CACHE_KEY", "SUPPORTED", "cache_kwargs", "disable", "enable", "enabled"]


def _pass_cache(module, args, kwargs):
    """Forward pre-hook of an attention module: add the call's anybudget cache to its kwargs, which
    the module hands on to the attention function (transformers 5.24 or older alike)."""
    for name in _CACHE_ARGS:
        cache = kwargs.get(name)
        if isinstance(cache, KVBudgetCache):
            return args, {**kwargs, CACHE_KEY: cache}
    return None


def _attention_modules(model):
    """The model's attention modules: ``*Attention`` modules with an integer ``layer_idx``."""
    return [m for m in model.modules()
            if type(m).__name__.endswith("Attention") and isinstance(getattr(m, "layer_idx", None), int)]


def _layer_slots(module, kwargs):
    """The slot layer of ``module``'s layer in the call's anybudget cache, or None."""
    cache = kwargs.get(CACHE_KEY)
    if cache is None:
        return None
    idx = module.layer_idx
    return cache.layers[idx] if idx < len(cache.layers) else None


def _padding_mask(*args, attention_mask=None, kv_length=None, **kwargs):
    """Mask interface: pass the 2-D (batch, tokens) padding mask through untouched; nothing when
    the cache reports ``kv_length == 0`` (a static cache decoding: its slots carry their validity,
    and a mask that grows by one column per step would change the compiled step's shapes)."""
    if kv_length == 0:
        return None
    return attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None


def _all_real(pad: torch.Tensor) -> bool:
    """Whether a (batch, tokens) padding mask has no padding. All layers of one forward get the
    same mask tensor, so the answer is kept on the tensor itself (with its version, in case it is
    changed in place) and the device-to-host read happens once per forward, not once per layer."""
    memo = getattr(pad, "_anybudget_all_real", None)
    if memo is None or memo[0] != pad._version:
        memo = (pad._version, bool(pad.all()))
        pad._anybudget_all_real = memo
    return memo[1]


def anybudget_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for anybudget caches; plain causal attention for any other cache (or none).

    query: (B, Hq, q, D); key/value: (B, Hkv, L, D) as returned by the cache's update().
    Returns (B, q, Hq, D) like transformers' own attention functions, and no weights.
    """
    slots = _layer_slots(module, kwargs)
    if isinstance(slots, StaticSlotLayer) and slots.prefilled and slots.awaiting_attention:
        out, _ = budget_attention(query, key, value, scale=scaling, key_mask=slots.valid, colsum_out=slots.prio,
                                  needs_scores=slots.policy.needs_scores, decode_slots=True,
                                  products=slots.decode_products)
        slots.evict()
        return out.transpose(1, 2).contiguous(), None
    q_len, L = query.shape[2], key.shape[2]
    pad = attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None
    if pad is not None and _all_real(pad):
        pad = None  # no padding anywhere: no masks, and no host sync in the layers
    new_valid = pad[:, -q_len:].bool() if pad is not None and pad.shape[-1] >= q_len else None
    if slots is None or not slots.awaiting_attention:
        key_mask = pad[:, -L:].bool() if pad is not None and pad.shape[-1] >= L else None
        out = masked_sdpa(query, key, value, scale=scaling, key_mask=key_mask)
        return out.transpose(1, 2).contiguous(), None
    needs = slots.policy.needs_scores
    if isinstance(slots, StaticSlotLayer):  # the prompt: attend over it, then keep the best slots
        out, col = budget_attention(query, key, value, scale=scaling, key_mask=new_valid, needs_scores=needs,
                                    decode_slots=False)
        slots.finish_prompt(col, new_valid)
        return out.transpose(1, 2).contiguous(), None
    slots.mark_new_tokens(new_valid)
    # The column sums are added straight into the layer's running scores (in the kernel on GPU).
    out, _ = budget_attention(query, key, value, scale=scaling, key_mask=slots.key_mask(),
                              colsum_out=slots.scores_view() if needs else None, needs_scores=needs,
                              decode_slots=False)
    out = out.transpose(1, 2).contiguous()
    slots.evict()
    return out, None


def cache_kwargs(model, cache) -> dict:
    """``{"cache": cache}`` where the model's forward takes ``cache`` (recent transformers, which
    deprecate ``past_key_values``), else ``{"past_key_values": cache}``; for ``model(...)`` and
    ``model.generate(...)`` alike."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, anybudget_attention)
    AttentionMaskInterface.register(ATTN_NAME, _padding_mask)


def _check_model(model) -> None:
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt not in SUPPORTED:
        raise ValueError(
            f"model type {mt!r} is not supported by anybudget.kv; supported families: "
            f"{', '.join(SUPPORTED)} (Llama, Mistral, Qwen2, Qwen3, GPT-NeoX)"
        )


def enable(model):
    """Route ``model``'s attention through anybudget so its budgeted caches can evict. Returns model.

    Exact for any other cache (plain causal attention with the padding mask). Adds a forward
    pre-hook to each attention module that hands the call's anybudget cache to the attention
    function (see the module doc), and wraps the instance's ``forward`` so that big prompts into an
    empty anybudget cache are prefilled in row micro-batches (:mod:`anybudget.kv.prefill`);
    :func:`disable` removes both.
    """
    _check_model(model)
    _register()
    if "_anybudget_hooks" not in vars(model):
        model._anybudget_hooks = [m.register_forward_pre_hook(_pass_cache, with_kwargs=True)
                                  for m in _attention_modules(model)]
    if not hasattr(model, "_anybudget_prev_attn"):
        model._anybudget_prev_attn = model.config._attn_implementation
    model.set_attn_implementation(ATTN_NAME)
    if not getattr(model.forward, "_anybudget_wrapped", False):
        # Big prompts in row micro-batches. The wrapper is made once per model and kept, so that a
        # compiled forward sees the same function after disable/enable (no recompilation).
        if "_anybudget_forward" not in vars(model):
            model._anybudget_forward = microbatched_forward(model.forward)
        model.forward = model._anybudget_forward
    return model


def disable(model):
    """Restore the attention implementation ``model`` had before :func:`enable` (and remove its hooks)."""
    for handle in vars(model).pop("_anybudget_hooks", ()):
        handle.remove()
    prev = getattr(model, "_anybudget_prev_attn", None)
    if prev is not None:
        model.set_attn_implementation(prev)
        del model._anybudget_prev_attn
    if "forward" in vars(model) and getattr(model.forward, "_anybudget_wrapped", False):
        del model.forward
    return model


@contextlib.contextmanager
def enabled(model):
    """``with anybudget.kv.enabled(model): model.generate(..., past_key_values=H2OCache("20%"))``"""
    was = hasattr(model, "_anybudget_prev_attn")
    enable(model)
    try:
        yield model
    finally:
        if not was:
            disable(model)
