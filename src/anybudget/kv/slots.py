"""Per-layer slot stores of the budgeted KV caches: built with a budget and a policy, never calling
back into the cache that owns them.

:class:`SlotLayer` (dynamic) keeps ``length`` used slots, grown on demand and compacted on
eviction; a decoding step's eviction moves one slot. :class:`StaticSlotLayer` preallocates
``capacity + 1`` slots once: a decoding step writes the new token into the free slot, attends over
all slots with a validity mask, and frees the lowest-priority slot on the device (no sort, no
host read, no Python state that changes per step), so a step can run under ``torch.compile`` and
CUDA graphs. Both keep exactly the tokens the policy's reference (``*_keep_indices``) keeps.

Budget per row: a percentage is of the row's *real* tokens seen (left padding is not counted);
a token count is a fixed number of slots. Padding slots are never attended and evicted first.

The attention reaches the layer that was just updated through the cache that
:func:`anybudget.kv.enable`'s hooks add to the attention's kwargs (``cache.layers[layer_idx]``):
no module-level state, nothing stored on tensors.
"""

from __future__ import annotations

import math

import torch
from transformers.cache_utils import DynamicLayer

from anybudget.kv.policies import eviction_priority, select_victims

__all__ = ["SharedRng", "SlotLayer", "cache_size"]


def cache_size(budget, seen):
    """Slots a layer may keep after ``seen`` tokens: ``ceil(p * seen)`` (at least 1) for a
    percentage, the token count otherwise. ``seen``: int or long tensor (per row)."""
    if not budget.is_percent:
        return int(budget.value)
    if isinstance(seen, torch.Tensor):
        return torch.ceil(seen.double() * budget.fraction - 1e-9).long().clamp(min=1)
    return max(1, math.ceil(budget.fraction * seen - 1e-9))


class SharedRng:
    """One seeded generator shared by the layers of a cache (the random policy draws in layer order)."""

    def __init__(self, seed: int):
        self.seed, self.gen = seed, None

    def get(self, device) -> torch.Generator:
        if self.gen is None or self.gen.device != torch.device(device):
            self.gen = torch.Generator(device=device).manual_seed(self.seed)
        return self.gen


def _new_priority(layer, pos_q, valid_q):
    """(B, H, q) float32 priority of new tokens from the policy (broadcast over heads), or None (zeros)."""
    rank = None
    if getattr(layer.policy, "name", "") == "streaming":
        rank = layer.real_seen[:, None] + torch.cumsum(valid_q.long(), dim=-1) - 1  # index among real tokens
    gen = layer.rng.get(pos_q.device) if layer.rng is not None and layer.policy.name == "random" else None
    p = layer.policy.initial_priority(pos_q, rank, valid_q, gen, heads=layer.heads)
    return p if p is None or p.dim() == 3 else p[:, None, :]


class SlotLayer(DynamicLayer):
    """One layer's slots: keys/values (B, H, cap, D) plus per-slot score, position, validity."""

    is_compileable = False

    def __init__(self, budget, policy, *, rng: SharedRng | None = None, fast_single_eviction: bool = True):
        super().__init__()
        self.budget, self.policy, self.rng = budget, policy, rng
        self.fast_single_eviction = fast_single_eviction
        self.length = 0  # used slots
        self.seen = 0  # tokens seen (= the original sequence length so far, padding included)
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
        self.real_seen = torch.zeros(B, dtype=torch.long, device=self.device)  # real tokens per row
        self.any_padding = False  # host-side: was a padding token ever inserted (then masks are needed)
        self.is_initialized = True

    def _buffers(self):
        return ("keys", "values", "prio", "pos", "valid")

    def _headroom(self, size: int) -> int:
        # Percent budgets grow with the sequence; fixed ones only need room for the next chunk.
        return max(64, size // 4) if self.budget.is_percent else 64

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
                f"this cache holds a batch of {self.batch} sequences but got {key_states.shape[0]}; "
                "use a new cache for each batch (each generate call)"
            )
        q = key_states.shape[2]
        need = self.length + q
        if need > self.capacity:
            self._resize(need + self._headroom(need))
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
        k, v = self.keys[:, :, :need], self.values[:, :, :need]
        return k, v

    # -- called by anybudget's attention -------------------------------------------------------
    def mark_new_tokens(self, new_valid: torch.Tensor | None) -> None:
        """Record which of the new tokens are real (not padding) and give them their priority."""
        q, L = self.new_tokens, self.length
        sl = slice(L - q, L)
        if new_valid is not None:
            self.valid[:, :, sl] = new_valid[:, None, :]
            self.any_padding = True
            valid_q = new_valid
        else:
            valid_q = torch.ones(self.batch, q, dtype=torch.bool, device=self.device)
        p = _new_priority(self, self.pos[:, 0, sl], valid_q)
        if p is not None:
            self.prio[:, :, sl] = p
        self.real_seen += valid_q.sum(-1) if new_valid is not None else q

    def key_mask(self) -> torch.Tensor | None:
        """(B, H, length) bool, False = padding; None while no padding was ever inserted."""
        return self.valid[:, :, : self.length] if self.any_padding else None

    def add_scores(self, colsum: torch.Tensor) -> None:
        self.scores_view().add_(colsum)

    def scores_view(self) -> torch.Tensor:
        """The running scores of the used slots, (B, H, length) float32, for in-place accumulation."""
        return self.prio[:, :, : self.length]

    def _targets(self):
        """(cache size for all rows, per-row sizes or None): rows count only real tokens."""
        T = cache_size(self.budget, self.seen)
        tb = cache_size(self.budget, self.real_seen) if self.any_padding and self.budget.is_percent else None
        return T, tb

    def evict(self) -> None:
        self.awaiting_attention = False
        T, tb = self._targets()
        L = self.length
        if L <= T and tb is None:
            return
        recent = self.policy.split(tb if tb is not None else T)[1]
        if self.new_tokens == 1 and self.fast_single_eviction and L - T <= 1:
            if L - T == 1:
                prio = eviction_priority(self.prio[:, :, :L], self.pos[:, :, :L], self.valid[:, :, :L], self.seen, recent)
                self._move_last_into(select_victims(prio, self.pos[:, :, :L], 1), L)
            if tb is not None:
                self._trim_one(tb, recent)
            self._shrink()
            return
        prio = eviction_priority(self.prio[:, :, :L], self.pos[:, :, :L], self.valid[:, :, :L], self.seen, recent)
        order = select_victims(prio, self.pos[:, :, :L], L)  # every slot, victims first
        if tb is not None:  # rows with fewer real tokens: their extra victims become invalid in place
            v = self.valid[:, :, :L]
            keep_rank = torch.arange(L, device=self.device) >= (L - tb).view(-1, 1, 1)
            v.scatter_(-1, order, v.gather(-1, order) & keep_rank)
        E = L - T
        if E > 0:
            self._compact(order[..., :E], T, L)
        self._shrink()

    def _compact(self, victims, target: int, L: int) -> None:
        keep = torch.ones_like(self.valid[:, :, :L])
        keep.scatter_(-1, victims, False)
        # Fill the holes left in [0, target) with the kept slots of [target, L).
        P = min(L - target, target)
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

    def _move_last_into(self, victim, L: int) -> None:
        """A decoding step's eviction (one victim per row and head): the last slot's token moves
        into the victim's slot; same slot layout as the general path."""
        for name in self._buffers():
            buf = getattr(self, name)
            last = buf[:, :, L - 1 : L].clone()
            idx = victim if buf.dim() == 3 else victim.unsqueeze(-1).expand(*victim.shape, buf.shape[-1])
            buf.scatter_(2, idx, last)
        self.length = L - 1

    def _trim_one(self, tb, recent) -> None:
        """Rows holding one real token more than their own budget mark their lowest one invalid."""
        L = self.length
        valid, pos = self.valid[:, :, :L], self.pos[:, :, :L]
        prio = eviction_priority(self.prio[:, :, :L], pos, valid, self.seen, recent)
        victim = select_victims(torch.where(valid, prio, math.inf), pos, 1)
        excess = valid.sum(-1, keepdim=True) > tb.view(-1, 1, 1)
        valid.scatter_(-1, victim, valid.gather(-1, victim) & ~excess)

    def _shrink(self) -> None:
        # Give back what a long prompt needed once it is evicted (keeps peak memory per layer).
        n = self.length + self._headroom(self.length)
        if self.capacity > 2 * n:
            self._resize(n)

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
        raise NotImplementedError("a budgeted KV cache evicts tokens and cannot be cropped (assisted decoding)")

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

    @classmethod
    def concat(cls, parts: list[SlotLayer]) -> SlotLayer:
        """One layer holding the rows of ``parts`` (micro-batches of one prefill, in order); the
        parts' buffers are released as they are copied."""
        first = parts[0]
        out = cls(first.budget, first.policy, rng=first.rng, fast_single_eviction=first.fast_single_eviction)
        L = first.length
        if any(p.length != L or p.seen != first.seen for p in parts):
            raise ValueError("micro-batches of one prefill must hold equal lengths")
        for attr in ("dtype", "device", "heads", "seen", "length", "is_initialized"):
            setattr(out, attr, getattr(first, attr))
        out.any_padding = any(p.any_padding for p in parts)
        out.real_seen = torch.cat([p.real_seen for p in parts])
        cap = L + out._headroom(L)
        for name in first._buffers():
            buf = getattr(first, name)
            dest = buf.new_empty(sum(p.batch for p in parts), buf.shape[1], cap, *buf.shape[3:])
            r = 0
            for p in parts:
                dest[r:r + p.batch, :, :L] = getattr(p, name)[:, :, :L]
                r += p.batch
                setattr(p, name, None)
            setattr(out, name, dest)
        out.batch = out.keys.shape[0]
        return out

    def used_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        per_slot = (self.keys[:, :, :1].numel() * self.keys.element_size()
                    + self.values[:, :, :1].numel() * self.values.element_size())
        return self.length * per_slot
