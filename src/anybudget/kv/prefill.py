"""Prompt forwards of large batches in row micro-batches, inside the library.

A prompt's forward holds activations for every row and token at once (the MLP alone several
times ``rows x tokens x intermediate``), which is what runs a large batch out of memory, long
before a budgeted cache does. :func:`microbatched_forward` wraps a causal LM's ``forward`` (done by
:func:`anybudget.kv.enable`): a prompt of more than ``cache.prefill_batch_tokens`` rows x tokens
going into an empty anybudget cache is run ``prefill_batch_tokens // tokens`` rows at a time, each
micro-batch into its own cache, and the caches are joined layer by layer (a static cache's rows are
written straight into its fixed buffers). Every row sees exactly the computation it would alone,
so results equal the single forward's. Decoding steps and other caches pass straight through.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["microbatched_forward"]


_ROW_MAJOR = ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "token_type_ids")


def _rows(name: str, value, r0: int, r1: int, B: int):
    """Rows [r0, r1) of a batch-major input (a (1, tokens) position tensor is shared as is). An
    ``attention_mask`` may be a dict of masks per layer type, which transformers' ``generate``
    builds before the forward for a compileable cache (transformers 5.17): each mask is cut."""
    if name == "attention_mask" and isinstance(value, dict):
        return {k: _rows(name, v, r0, r1, B) for k, v in value.items()}
    if name in _ROW_MAJOR and isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == B:
        return value[r0:r1]
    return value


def _join_static(parent, part0, B: int) -> None:
    """Allocate (or reuse) ``parent``'s static layers for all ``B`` rows and copy ``part0``'s rows in."""
    while len(parent.layers) < len(part0.layers):
        parent.layers.append(parent._new_layer())
    for mine, src in zip(parent.layers, part0.layers):
        mine.allocate(B, src.heads, src.keys.shape[-1], src.values.shape[-1], src.dtype, src.device, src.capacity)
        n = src.batch
        for name in mine.ROW_BUFFERS:
            getattr(mine, name)[:n].copy_(getattr(src, name))
        mine.seen.copy_(src.seen)


def microbatched_forward(forward):
    """Wrap a causal LM ``forward`` so that big prompts into an empty anybudget cache run in row
    micro-batches (see the module doc)."""
    from anybudget.kv.cache import KVBudgetCache
    from anybudget.kv.slots import SlotLayer

    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        key = "cache" if "cache" in kwargs else "past_key_values"
        cache = kwargs.get(key)
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if (args or ids is None or not isinstance(cache, KVBudgetCache) or ids.shape[1] == 1
                or ids.shape[0] * ids.shape[1] <= cache.prefill_batch_tokens or ids.shape[0] == 1
                or cache.get_seq_length() != 0):
            return forward(*args, **kwargs)
        B, P = ids.shape[:2]
        mb = max(1, cache.prefill_batch_tokens // P)
        logits, out = [], None
        parts = []
        for r0 in range(0, B, mb):
            r1 = min(B, r0 + mb)
            part = cache.spawn()
            if cache.static and r0 > 0:  # write into the parent's rows directly
                for mine in cache.layers:
                    layer = part._new_layer()
                    layer.view_rows(mine, r0, r1)
                    part.layers.append(layer)
            sub = {k: _rows(k, v, r0, r1, B) for k, v in kwargs.items()}
            sub[key] = part
            out = forward(**sub)
            logits.append(out.logits)
            if cache.static and r0 == 0:
                _join_static(cache, part, B)
            elif not cache.static:
                parts.append(part)
        if cache.static:
            for layer in cache.layers:
                layer.prefilled, layer.awaiting_attention = True, False
        else:
            cache.layers = [SlotLayer.concat([p.layers[i] for p in parts]) for i in range(len(parts[0].layers))]
        out.logits = torch.cat(logits, 0)
        if "cache" in out or hasattr(out, "cache"):
            out.cache = cache
        if "past_key_values" in out:
            out.past_key_values = cache
        return out

    wrapped._anybudget_wrapped = True
    return wrapped
