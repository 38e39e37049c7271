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
masked, scored -inf, evicted first, never used as sinks; percentages count padded positions.
"""

from __future__ import annotations

import contextvars
import math

import torch
from transformers.cache_utils import Cache, DynamicLayer

from anybudget.budget import Budget, BudgetError, Quantity

__all__ = ["KVBudgetCache", "H2OCache", "StreamingCache", "LocalCache", "RandomCache", "make_cache", "parse_kv_budget"]

# The layer whose update() ran last and whose attention has not run yet. Set by BudgetLayer.update,
# consumed by anybudget's attention function, which is always called right after update().
PENDING: contextvars.ContextVar = contextvars.ContextVar("anybudget_kv_pending", default=None)

_INF = float("inf")


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


class BudgetLayer(DynamicLayer):
    """One layer's slots: keys/values (B, H, cap, D) plus per-slot score, position, validity."""

    def __init__(self, cache: "KVBudgetCache", idx: int):
        super().__init__()
        self.cache, self.idx = cache, idx
        self.length = 0  # used slots
        self.seen = 0  # tokens seen (= the original sequence length so far)
        self.awaiting_attention = False

    # -- storage ---------------------------------------------------------------------------
    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        B, H, _, D = key_states.shape
        self.batch, self.heads = B, H
        self.keys = torch.empty(B, H, 0, D, dtype=key_states.dtype, device=self.device)
        self.values = torch.empty(B, H, 0, value_states.shape[-1], dtype=value_states.dtype, device=self.device)
        self.prio = torch.empty(B, H, 0, dtype=torch.float32, device=self.device)
        self.pos = torch.empty(B, H, 0, dtype=torch.long, device=self.device)
        self.valid = torch.empty(B, H, 0, dtype=torch.bool, device=self.device)
        self.real_seen = torch.zeros(B, dtype=torch.long, device=self.device)  # valid tokens per row
        self.any_padding = False  # host-side: was a padding token ever inserted (then masks are needed)
        self.is_initialized = True

    def _buffers(self):
        return ("keys", "values", "prio", "pos", "valid")

    def _resize(self, cap: int) -> None:
        for name in self._buffers():
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:2], cap, *old.shape[3:])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    @property
    def capacity(self) -> int:
        return self.keys.shape[2] if self.is_initialized else 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[0] != self.batch:
            raise ValueError(
                f"this {type(self.cache).__name__} holds a batch of {self.batch} sequences but got "
                f"{key_states.shape[0]}; use a new cache for each batch (each generate call)"
            )
        prev = PENDING.get()
        if self.awaiting_attention or (prev is not None and prev.cache is self.cache and prev.awaiting_attention):
            raise RuntimeError(
                f"{type(self.cache).__name__} needs anybudget's attention to evict: call "
                "anybudget.kv.enable(model) before generating with it"
            )
        q = key_states.shape[2]
        need = self.length + q
        if need > self.capacity:
            self._resize(need + self.cache._headroom(need))
        sl = slice(self.length, need)
        self.keys[:, :, sl] = key_states
        self.values[:, :, sl] = value_states
        self.pos[:, :, sl] = torch.arange(self.seen, self.seen + q, device=self.device)
        self.valid[:, :, sl] = True
        self.prio[:, :, sl] = 0.0
        self.length = need
        self.seen += q
        self.new_tokens = q
        self.awaiting_attention = True
        PENDING.set(self)
        return self.keys[:, :, :need], self.values[:, :, :need]

    # -- called by anybudget's attention -------------------------------------------------------
    def mark_new_tokens(self, new_valid: torch.Tensor | None) -> None:
        """Record which of the new tokens are real (not padding) and give them their priority."""
        q, L = self.new_tokens, self.length
        sl = slice(L - q, L)
        if new_valid is not None:
            self.valid[:, :, sl] = new_valid[:, None, :]
            self.any_padding = True
        self.cache._initial_priority(self, sl, new_valid)
        nv = new_valid.sum(-1) if new_valid is not None else torch.full_like(self.real_seen, q)
        self.real_seen += nv

    def key_mask(self) -> torch.Tensor | None:
        """(B, H, length) bool, False = padding; None while no padding was ever inserted."""
        return self.valid[:, :, : self.length] if self.any_padding else None

    def add_scores(self, colsum: torch.Tensor) -> None:
        self.scores_view().add_(colsum)

    def scores_view(self) -> torch.Tensor:
        """The running scores of the used slots, (B, H, length) float32, for in-place accumulation."""
        return self.prio[:, :, : self.length]

    def evict(self) -> None:
        self.awaiting_attention = False
        target = self.cache._cache_size(self.seen)
        L = self.length
        if L <= target:
            return
        heavy, recent = self.cache._split(target)
        E = L - target
        prio = self.prio[:, :, :L]
        pos = self.pos[:, :, :L]
        prio = torch.where(self.valid[:, :, :L], prio, -_INF)
        prio = torch.where(pos >= self.seen - recent, _INF, prio)
        if E == 1 and self.cache.fast_single_eviction:
            self._evict_one(prio, pos, L)
            return
        # Victims: lowest priority first; among equal priorities the later position goes first,
        # matching h2o_keep_indices (which keeps the earlier one).
        by_pos = torch.argsort(pos, dim=-1, descending=True)
        order = torch.sort(prio.gather(-1, by_pos), dim=-1, stable=True).indices
        victims = by_pos.gather(-1, order[..., :E])
        keep = torch.ones_like(self.valid[:, :, :L])
        keep.scatter_(-1, victims, False)
        # Fill the holes left in [0, target) with the kept slots of [target, L).
        P = min(E, target)
        if P > 0:
            holes = torch.sort(keep[..., :target].to(torch.int8), dim=-1, stable=True).indices[..., :P]
            movers = torch.sort((~keep[..., target:]).to(torch.int8), dim=-1, stable=True).indices[..., :P] + target
            n_holes = (~keep[..., :target]).sum(-1, keepdim=True)
            src = torch.where(torch.arange(P, device=self.device) < n_holes, movers, holes)
            for name in self._buffers():
                buf = getattr(self, name)
                if buf.dim() == 4:
                    idx_s = src.unsqueeze(-1).expand(*src.shape, buf.shape[-1])
                    idx_d = holes.unsqueeze(-1).expand(*holes.shape, buf.shape[-1])
                else:
                    idx_s, idx_d = src, holes
                buf.scatter_(2, idx_d, buf.gather(2, idx_s))
        self.length = target
        self._shrink()

    def _shrink(self) -> None:
        # Give back what a long prompt needed once it is evicted (keeps peak memory per layer).
        n = self.length + self.cache._headroom(self.length)
        if self.capacity > 2 * n:
            self._resize(n)

    def _evict_one(self, prio: torch.Tensor, pos: torch.Tensor, L: int) -> None:
        """A decoding step's eviction (one victim per row and head) without sorting.

        Same victim and same slot layout as the general path: the victim is the lowest priority,
        the later position among equals; the last slot's token moves into the victim's slot.
        """
        low = prio.amin(-1, keepdim=True)
        victim = torch.where(prio == low, pos, -1).argmax(-1, keepdim=True)  # (B, H, 1)
        for name in self._buffers():
            buf = getattr(self, name)
            last = buf[:, :, L - 1 : L].clone()
            idx = victim if buf.dim() == 3 else victim.unsqueeze(-1).expand(*victim.shape, buf.shape[-1])
            buf.scatter_(2, idx, last)
        self.length = L - 1
        self._shrink()

    # -- HF Cache API -------------------------------------------------------------------------
    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = None
        self.length = self.seen = 0
        self.awaiting_attention = False
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"{type(self.cache).__name__} evicts tokens and cannot be cropped (assisted decoding)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self.is_initialized:
            return
        for name in self._buffers():
            setattr(self, name, getattr(self, name)[indices])
        self.real_seen = self.real_seen[indices]
        self.batch = self.keys.shape[0]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx.to(self.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if not self.is_initialized:
            return
        for name in self._buffers():
            setattr(self, name, getattr(self, name).repeat_interleave(repeats, dim=0))
        self.real_seen = self.real_seen.repeat_interleave(repeats, dim=0)
        self.batch = self.keys.shape[0]

    # -- accounting ---------------------------------------------------------------------------
    def used_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        per_slot = (self.keys[:, :, :1].numel() * self.keys.element_size()
                    + self.values[:, :, :1].numel() * self.values.element_size())
        return self.length * per_slot


class KVBudgetCache(Cache):
    """A Hugging Face cache that keeps at most ``budget`` tokens per layer and KV head.

    Use a policy subclass (:class:`H2OCache`, :class:`StreamingCache`, :class:`LocalCache`,
    :class:`RandomCache`) and call ``anybudget.kv.enable(model)`` once.
    """

    policy = "full"
    needs_scores = False
    # A decoding step's eviction (one victim per row and head) skips the sorts; same result as the
    # general path (tests compare both). False forces the general path.
    fast_single_eviction = True

    def __init__(self, budget="20%", *, recent_ratio: float = 0.5, sink_tokens: int = 4, seed: int = 0):
        self.budget = parse_kv_budget(budget)
        if isinstance(recent_ratio, bool) or not isinstance(recent_ratio, (int, float)) or not 0.0 <= recent_ratio <= 1.0:
            raise ValueError(f"recent_ratio={recent_ratio!r} is out of range; it must be in [0, 1]")
        if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
            raise ValueError(f"sink_tokens={sink_tokens!r} must be an integer >= 0")
        self.recent_ratio = float(recent_ratio)
        self.sink_tokens = sink_tokens
        self.seed = seed
        self._generator: torch.Generator | None = None
        super().__init__(layer_class_to_replicate=self._new_layer)

    def _new_layer(self):
        return BudgetLayer(self, len(self.layers))

    def __repr__(self):
        return f"{type(self).__name__}(budget={self.budget}, recent_ratio={self.recent_ratio}, sink_tokens={self.sink_tokens})"

    # -- policy ---------------------------------------------------------------------------------
    def _cache_size(self, seen: int) -> int:
        if self.budget.is_percent:
            return max(1, math.ceil(self.budget.fraction * seen - 1e-9))
        return int(self.budget.value)

    def _headroom(self, size: int) -> int:
        # Percent budgets grow with the sequence; fixed ones only need room for the next chunk.
        return max(64, size // 4) if self.budget.is_percent else 64

    def _split(self, cache_size: int) -> tuple[int, int]:
        """(heavy_budget, recent_budget) for a cache of ``cache_size`` slots."""
        from anybudget.kv.policies import split_budget

        return split_budget(cache_size, self.recent_ratio)

    def _initial_priority(self, layer: BudgetLayer, sl: slice, new_valid) -> None:
        """Priority of newly inserted slots (H2O: 0, then accumulated attention is added)."""

    # -- reporting --------------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes of the keys and values currently kept (all layers)."""
        return sum(layer.used_bytes() for layer in self.layers)

    def kept_positions(self, layer_idx: int = 0) -> torch.Tensor:
        """Original positions kept by one layer: (B, H, kept) sorted ascending (for inspection/tests)."""
        layer = self.layers[layer_idx]
        return torch.sort(layer.pos[:, :, : layer.length], dim=-1).values


class H2OCache(KVBudgetCache):
    """H2O (Zhang et al., NeurIPS 2023, Alg. 1): heavy hitters by accumulated attention + recent window.

    budget: ``"20%"`` (of tokens seen), ``512`` (tokens) or a Budget with ``kv``.
    recent_ratio: share of the cache given to the recent window; the paper's default split is 1:1.
    Scores are per KV head: the sum over its group's query heads (the reference code scores query
    heads after ``repeat_kv`` and so cannot run GQA models; kvpress averages the group likewise).
    """

    policy = "h2o"
    needs_scores = True

    def __init__(self, budget="20%", recent_ratio: float = 0.5):
        super().__init__(budget, recent_ratio=recent_ratio)


class StreamingCache(KVBudgetCache):
    """StreamingLLM (Xiao et al., ICLR 2024): ``sink_tokens`` first tokens + a recent window.

    Keys keep the positions they were rotated with (H2O's convention); StreamingLLM's in-cache
    re-positioning, needed only to run past the trained context, is not applied.
    """

    policy = "streaming"

    def __init__(self, budget="20%", sink_tokens: int = 4):
        super().__init__(budget, sink_tokens=sink_tokens)

    def _split(self, cache_size):
        heavy = min(self.sink_tokens, cache_size)
        return heavy, cache_size - heavy

    def _initial_priority(self, layer, sl, new_valid):
        B, q = layer.batch, sl.stop - sl.start
        valid = new_valid if new_valid is not None else torch.ones(B, q, dtype=torch.bool, device=layer.device)
        rank = layer.real_seen[:, None] + torch.cumsum(valid.long(), dim=-1) - 1  # index among real tokens
        sink = valid & (rank < self.sink_tokens)
        # Sinks outrank everything; the rest are ordered oldest-first (never chosen while sinks exist).
        p = torch.where(sink, torch.full_like(rank, 1, dtype=torch.float32), -layer.pos[:, 0, sl].float() - 1.0)
        layer.prio[:, :, sl] = p[:, None, :]


class LocalCache(KVBudgetCache):
    """Local window: the newest ``budget`` tokens only."""

    policy = "local"

    def __init__(self, budget="20%"):
        super().__init__(budget)

    def _split(self, cache_size):
        return 0, cache_size


class RandomCache(KVBudgetCache):
    """Control: the recent window of H2O plus a uniformly random set of older tokens.

    Each token draws a random priority once, on arrival; the kept older tokens are the highest of
    those, so evictions stay consistent over steps (a persistent random subset).
    """

    policy = "random"

    def __init__(self, budget="20%", recent_ratio: float = 0.5, seed: int = 0):
        super().__init__(budget, recent_ratio=recent_ratio, seed=seed)

    def _initial_priority(self, layer, sl, new_valid):
        if self._generator is None or self._generator.device != layer.device:
            self._generator = torch.Generator(device=layer.device).manual_seed(self.seed)
        shape = (layer.batch, layer.heads, sl.stop - sl.start)
        layer.prio[:, :, sl] = torch.rand(shape, generator=self._generator, device=layer.device)


_CACHES = {"h2o": H2OCache, "streaming": StreamingCache, "local": LocalCache, "random": RandomCache}


def make_cache(policy: str, budget="20%", **kwargs) -> Cache:
    """A cache for ``policy`` in ``full, h2o, streaming, local, random`` (full = DynamicCache)."""
    from transformers import DynamicCache

    if policy == "full":
        return DynamicCache()
    if policy not in _CACHES:
        raise ValueError(f"policy={policy!r} is unknown; choose one of full, h2o, streaming, local, random")
    return _CACHES[policy](budget, **kwargs)
