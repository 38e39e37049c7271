"""KV caches that stay inside a budget: H2O, StreamingLLM, local window, random.

They plug into Hugging Face generation like any cache::

    anybudget.kv.enable(model)                      # route attention through anybudget
    cache = H2OCache(budget="20%")                  # or 512 tokens, or Budget("kv=20%")
    model.generate(**inputs, past_key_values=cache)

How it works. ``update`` appends the new keys/values (already rotated at their true positions)
to a per-layer slot buffer. anybudget's attention then attends over the buffer (the newest slots
are the current queries' own keys, causally masked), adds each key's attention column sum to its
accumulated score (float32, H2O), and evicts down to the budget *immediately, layer by layer*,
during prefill and at every decoding step (H2O's real-drop setting: an evicted token never
returns). So at most one layer holds the whole prompt at a time. Eviction replaces the victims'
slots with kept slots from the tail (O(evicted) copies, not a compaction of the whole cache).

Budget: a percentage is of the tokens seen so far (cache size ``ceil(p * seen)``, the H2O
lm-eval "ratio" setting); a token count is a fixed cache size. Left padding: padding keys are
masked, scored -inf, evicted first, never used as sinks; a percentage counts each row's real
tokens only.

Serving: ``H2OCache("20%", static=True, max_new_tokens=128)`` preallocates fixed slots and evicts
on the device (:mod:`anybudget.kv.static_slots`); it declares itself compileable, so
``model.generate`` runs its decoding steps under ``torch.compile`` (CUDA graphs on a GPU), as it
does for ``cache_implementation="static"``. Large batches: a prompt of more than
``prefill_batch_tokens`` (rows x tokens) is prefilled in row micro-batches inside the library
(see :func:`anybudget.kv.hf.enable`). One cache holds one generation: passing it to ``generate``
again starts it afresh.
"""

from __future__ import annotations

from transformers.cache_utils import Cache

from anybudget.budget import Budget, BudgetError, Quantity
from anybudget.kv.attention import check_decode_products
from anybudget.kv.policies import H2O, Local, Random, Streaming, make_policy, split_budget
from anybudget.kv.slots import SharedRng, SlotLayer, cache_size
from anybudget.kv.static_slots import StaticSlotLayer

__all__ = ["H2OCache", "KVBudgetCache", "LocalCache", "RandomCache", "StreamingCache", "make_cache", "parse_kv_budget"]

BudgetLayer = SlotLayer  # the name of earlier releases

def parse_kv_budget(budget) -> Quantity:
    """``"20%"``, ``"kv=20%"``, ``512``, ``Budget("kv=20%")`` -> the kv Quantity; clear errors otherwise."""
    if isinstance(budget, Budget):
        return budget.require("kv")
    if isinstance(budget, Quantity):
        return Budget({"kv": budget})["kv"]
    if isinstance(budget, bool) or not isinstance(budget, (str, int)):
        raise BudgetError(
            f"budget={budget!r} is not understood; a KV budget is a percentage in (0, 100] like '20%' "
            "or a token count like 512 (or a Budget with a kv key)"
        )
    if isinstance(budget, str) and "=" in budget:
        return Budget(budget).require("kv")
    return Budget({"kv": budget if isinstance(budget, int) else budget.strip()})["kv"]


class KVBudgetCache(Cache):
    """A Hugging Face cache that keeps at most ``budget`` tokens per layer and KV head.

    budget: ``"20%"`` (of each row's real tokens seen), ``512`` (tokens) or a Budget with ``kv``.
    policy: a policy object of :mod:`anybudget.kv.policies` or its name (default H2O).
    static: preallocated slots, device-side eviction, compiled decoding (see the module doc);
    a percentage budget then needs ``max_new_tokens`` to size the slots.
    prefill_batch_tokens: prompts of more rows x tokens are prefilled in row micro-batches.
    decode_products: how a static decoding step forms its attention (``"matmul"``, default;
    ``"auto"``/``"reduce"``; ``"triton"``: see ``kv.attention.slot_decode_attention``).
    Use a named subclass (:class:`H2OCache`, ...) and call ``anybudget.kv.enable(model)`` once.
    """

    # A decoding step's eviction (one victim per row and head) skips the sorts; same result as the
    # general path (tests compare both). False forces the general path.
    fast_single_eviction = True
    # How a static decoding step forms q K^T and P V (``kv.attention.slot_decode_attention``):
    # "matmul" = the cuBLAS path (the one timed on the GPU, kv_serving.json); "auto" = fused
    # reductions while compiled (K and V read once; matmul in eager); "triton" = the Triton decode
    # kernel as one custom op (output and scores, K and V read once). Both opt-in until serving.py's
    # h2o_20_reduce / h2o_20_triton rows have timed them against "matmul" on a GPU.
    decode_products = "matmul"

    def __init__(self, budget="20%", policy="h2o", *, static: bool = False, max_new_tokens: int | None = None,
                 prefill_batch_tokens: int = 65536, seed: int = 0, decode_products: str | None = None,
                 **policy_kwargs):
        self.budget = parse_kv_budget(budget)
        if decode_products is not None:
            check_decode_products(decode_products, "decode_products")
            self.decode_products = decode_products
        if isinstance(policy, str) and policy == "random":
            policy_kwargs.setdefault("seed", seed)
        self.policy = make_policy(policy, **policy_kwargs) if isinstance(policy, str) else policy
        if not isinstance(static, bool):
            raise TypeError(f"static={static!r} must be True or False")
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                           or max_new_tokens < 0):
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
        if static and self.budget.is_percent and max_new_tokens is None:
            raise ValueError(f"max_new_tokens=None: a static cache with a percentage budget ({self.budget}) needs "
                             "max_new_tokens (the same as generate's) to size its slots; or give a token budget")
        if isinstance(prefill_batch_tokens, bool) or not isinstance(prefill_batch_tokens, int) or prefill_batch_tokens < 1:
            raise ValueError(f"prefill_batch_tokens={prefill_batch_tokens!r} must be an integer >= 1")
        self.static, self.max_new_tokens, self.prefill_batch_tokens = static, max_new_tokens, prefill_batch_tokens
        self.seed = getattr(self.policy, "seed", seed)
        self._rng = SharedRng(self.seed)
        super().__init__(layer_class_to_replicate=self._new_layer)

    def _new_layer(self):
        if self.static:
            return StaticSlotLayer(self.budget, self.policy, max_new_tokens=self.max_new_tokens, rng=self._rng,
                                   decode_products=self.decode_products)
        return SlotLayer(self.budget, self.policy, rng=self._rng, fast_single_eviction=self.fast_single_eviction)

    def spawn(self) -> KVBudgetCache:
        """An empty cache of the same budget and policy (a micro-batch of a prompt)."""
        return KVBudgetCache(self.budget, self.policy, static=self.static, max_new_tokens=self.max_new_tokens,
                             prefill_batch_tokens=self.prefill_batch_tokens, seed=self.seed,
                             decode_products=self.decode_products)

    def __repr__(self):
        extra = f", static=True, max_new_tokens={self.max_new_tokens}" if self.static else ""
        return f"{type(self).__name__}(budget={self.budget}, policy={self.policy}{extra})"

    @property
    def needs_scores(self) -> bool:
        return self.policy.needs_scores

    @property
    def is_compileable(self) -> bool:
        return self.static

    @property
    def holds_tokens(self) -> bool:
        return any(getattr(layer, "is_initialized", False) for layer in self.layers)

    # generate() marks a cache the user passed; a used one starts afresh (one cache, one generation).
    @property
    def _is_user_defined(self) -> bool:
        return getattr(self, "_user_defined", False)

    @_is_user_defined.setter
    def _is_user_defined(self, value: bool) -> None:
        if value and self.holds_tokens:
            self.reset()
        self._user_defined = value

    def reset(self) -> None:
        """Forget everything (a static cache keeps its buffers, so compiled steps stay valid)."""
        if self.static:
            for layer in self.layers:
                layer.reset()
        else:
            self.layers = []

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        layers = self.layers
        if (layer_idx < len(layers) and layers[layer_idx].awaiting_attention) or (
                0 < layer_idx <= len(layers) and layers[layer_idx - 1].awaiting_attention):
            raise RuntimeError(
                f"{type(self).__name__} needs anybudget's attention to evict: call "
                "anybudget.kv.enable(model) before generating with it"
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        if layer_idx >= len(self.layers):
            return query_length, 0
        return self.layers[layer_idx].get_mask_sizes(query_length)

    # -- policy (kept for callers of earlier releases) ------------------------------------------
    def _cache_size(self, seen: int) -> int:
        return cache_size(self.budget, seen)

    def _split(self, cache_size: int) -> tuple[int, int]:
        """(heavy_budget, recent_budget) for a cache of ``cache_size`` slots."""
        return self.policy.split(cache_size)

    # -- reporting --------------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes of the keys and values currently kept (all layers)."""
        return sum(layer.used_bytes() for layer in self.layers)

    def kept_positions(self, layer_idx: int = 0):
        """Original positions kept by one layer: (B, H, slots) sorted ascending (for inspection and
        tests); slots that hold no token (padding, free slots of a static cache) read -1, first."""
        import torch

        layer = self.layers[layer_idx]
        n = layer.valid.shape[-1] if isinstance(layer, StaticSlotLayer) else layer.length
        return torch.sort(torch.where(layer.valid[:, :, :n], layer.pos[:, :, :n], -1), dim=-1).values


class H2OCache(KVBudgetCache):
    """H2O (Zhang et al., NeurIPS 2023, Alg. 1): heavy hitters by accumulated attention + recent window.

    budget: ``"20%"`` (of tokens seen), ``512`` (tokens) or a Budget with ``kv``.
    recent_ratio: share of the cache given to the recent window; the paper's default split is 1:1.
    Scores are per KV head: the sum over its group's query heads (the reference code scores query
    heads after ``repeat_kv`` and so cannot run GQA models; kvpress averages the group likewise).
    ``static=True, max_new_tokens=N``: the compiled serving path (see :class:`KVBudgetCache`).
    """

    def __init__(self, budget="20%", recent_ratio: float = 0.5, **kwargs):
        super().__init__(budget, H2O(recent_ratio), **kwargs)


class StreamingCache(KVBudgetCache):
    """StreamingLLM (Xiao et al., ICLR 2024): ``sink_tokens`` first tokens + a recent window.

    Keys keep the positions they were rotated with (H2O's convention); StreamingLLM's in-cache
    re-positioning, needed only to run past the trained context, is not applied.
    """

    def __init__(self, budget="20%", sink_tokens: int = 4, **kwargs):
        super().__init__(budget, Streaming(sink_tokens), **kwargs)


class LocalCache(KVBudgetCache):
    """Local window: the newest ``budget`` tokens only."""

    def __init__(self, budget="20%", **kwargs):
        super().__init__(budget, Local(), **kwargs)


class RandomCache(KVBudgetCache):
    """Control: the recent window of H2O plus a uniformly random set of older tokens.

    Each token draws a random priority once, on arrival; the kept older tokens are the highest of
    those, so evictions stay consistent over steps (a persistent random subset).
    """

    def __init__(self, budget="20%", recent_ratio: float = 0.5, seed: int = 0, **kwargs):
        super().__init__(budget, Random(recent_ratio, seed), **kwargs)


_CACHES = {"h2o": H2OCache, "streaming": StreamingCache, "local": LocalCache, "random": RandomCache}


def make_cache(policy: str, budget="20%", **kwargs) -> Cache:
    """A cache for ``policy`` in ``full, h2o, streaming, local, random`` (full = DynamicCache)."""
    from transformers import DynamicCache

    if policy == "full":
        return DynamicCache()
    if policy not in _CACHES:
        raise ValueError(f"policy={policy!r} is unknown; choose one of full, h2o, streaming, local, random")
    return _CACHES[policy](budget, **kwargs)


__all__ += ["BudgetLayer", "split_budget"]
