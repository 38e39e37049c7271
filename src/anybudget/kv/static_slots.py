"""A static-shape slot store: fixed buffers, eviction on the device, decode steps that compile.

Layout: ``capacity + 1`` slots per (row, KV head), where ``capacity`` is the budget in tokens (a
percentage is sized from the prompt plus ``max_new_tokens``). After the prompt, at most
``capacity`` slots are valid and one is free. A decoding step

1. writes the new token's key/value into the first invalid slot (an ``index_put_`` at a device
   index found by a ``min`` over slot numbers in the same step: no stored index, an index in
   range by construction, and a write that inductor keeps in place),
2. attends over all slots with the validity mask and adds the attention each key received to
   its score (H2O, Zhang et al. 2023, Alg. 1),
3. if the row now holds more valid tokens than its budget, marks the lowest-priority slot outside
   the recent window invalid (ties: the later position goes, as in ``h2o_keep_indices``).

No sort, no ``.item()``, no Python-side length: shapes never change, so ``torch.compile`` (and
CUDA graphs) replay one graph per step, which updates the buffers in place (no per-step copy).
The kept set after every step equals the dynamic :class:`~anybudget.kv.slots.SlotLayer`'s (same
rule, see the tests), compiled or not.
"""

from __future__ import annotations

import math

import torch
from transformers.cache_utils import CacheLayerMixin

from anybudget.kv.policies import eviction_priority, select_victims
from anybudget.kv.slots import SharedRng, _new_priority, cache_size

__all__ = ["StaticSlotLayer"]


def _mark_static(*tensors) -> None:
    """Fixed addresses (CUDA graphs replay in place) with the batch and slot dimensions marked
    dynamic, so that one compiled step serves every batch size and budget (CUDA graphs are still
    recorded per shape)."""
    if torch.compiler.is_compiling():
        return
    for t in tensors:
        torch._dynamo.mark_static_address(t)
        if t.dim() >= 1:
            torch._dynamo.maybe_mark_dynamic(t, 0)
        if t.dim() >= 3 and t.shape[2] > 1:
            torch._dynamo.maybe_mark_dynamic(t, 2)


class StaticSlotLayer(CacheLayerMixin):
    """One layer's fixed slots: keys/values (B, H, capacity + 1, D), score, position, validity."""

    is_compileable = True
    is_sliding = False
    ROW_BUFFERS = ("keys", "values", "prio", "pos", "valid", "real_seen")  # batch-major state

    def __init__(self, budget, policy, *, max_new_tokens: int | None = None, rng: SharedRng | None = None,
                 decode_products: str = "matmul"):
        super().__init__()
        self.budget, self.policy, self.rng = budget, policy, rng
        self.decode_products = decode_products  # see kv.attention.slot_decode_attention
        self.max_new_tokens = max_new_tokens
        self.awaiting_attention = False
        self.prefilled = False
        self.window = False  # a row window on a parent layer (micro-batched prompt)
        self.batch = None

    # -- storage ---------------------------------------------------------------------------------
    def slots_for(self, prompt_len: int) -> int:
        """Capacity (valid slots at most) for a prompt of ``prompt_len`` tokens."""
        if not self.budget.is_percent:
            return int(self.budget.value)
        return cache_size(self.budget, prompt_len + self.max_new_tokens)

    def allocate(self, B, H, D, Dv, dtype, device, capacity: int) -> None:
        """(Re)allocate the buffers; keeps the existing ones (same addresses) when shapes match."""
        shape = (B, H, capacity + 1)
        if (self.is_initialized and tuple(self.prio.shape) == shape and self.keys.dtype == dtype
                and self.keys.shape[-1] == D and self.keys.device == torch.device(device)):
            self.clear()
            return
        self.dtype, self.device, self.batch, self.heads, self.capacity = dtype, torch.device(device), B, H, capacity
        self.keys = torch.zeros(*shape, D, dtype=dtype, device=device)
        self.values = torch.zeros(*shape, Dv, dtype=dtype, device=device)
        self.prio = torch.zeros(shape, dtype=torch.float32, device=device)
        self.pos = torch.zeros(shape, dtype=torch.long, device=device)
        self.valid = torch.zeros(shape, dtype=torch.bool, device=device)
        self.real_seen = torch.zeros(B, dtype=torch.long, device=device)
        self.seen = torch.zeros((), dtype=torch.long, device=device)
        _mark_static(self.keys, self.values, self.prio, self.pos, self.valid, self.real_seen, self.seen)
        self.is_initialized = True
        self.prefilled = False

    def view_rows(self, parent: StaticSlotLayer, r0: int, r1: int) -> None:
        """Make this layer a window on rows [r0, r1) of ``parent`` (micro-batched prefill: writes
        land in the parent's buffers, no copy)."""
        for name in self.ROW_BUFFERS:
            setattr(self, name, getattr(parent, name)[r0:r1])
        for name in ("dtype", "device", "heads", "capacity", "seen"):
            setattr(self, name, getattr(parent, name))
        self.batch, self.is_initialized, self.prefilled, self.window = r1 - r0, True, False, True

    def clear(self) -> None:
        """Empty every slot in place (the buffers keep their addresses: compiled graphs stay valid)."""
        self.valid.zero_()
        self.prio.zero_()
        self.real_seen.zero_()
        self.seen.zero_()
        self.prefilled = False
        self.awaiting_attention = False

    def lazy_initialization(self, key_states, value_states) -> None:
        B, H, q, D = key_states.shape
        self.allocate(B, H, D, value_states.shape[-1], key_states.dtype, key_states.device, self.slots_for(q))

    # -- update: prompt or one decoding step ------------------------------------------------------
    def update(self, key_states, value_states, *args, **kwargs):
        if not self.prefilled:
            if not self.window:
                self.lazy_initialization(key_states, value_states)
            self.awaiting_attention = True
            if key_states.shape[0] != self.batch:
                raise ValueError(f"this static cache holds a batch of {self.batch} sequences but got "
                                 f"{key_states.shape[0]}; use a new cache for each batch")
            self._prompt = (key_states, value_states)
            return key_states, value_states
        if key_states.shape[2] != 1:
            raise ValueError(f"a static cache decodes one token per step after its prompt; got {key_states.shape[2]} "
                             "new tokens (pass the whole prompt in the first call)")
        self.awaiting_attention = True
        at = self._rows_at(self.free_slot())
        self.keys.index_put_(at, key_states[:, :, 0])
        self.values.index_put_(at, value_states[:, :, 0])
        self.pos.index_put_(at, self.seen.expand(at[2].shape))
        self.valid.index_put_(at, torch.ones((), dtype=torch.bool, device=self.device))
        B = self.valid.shape[0]  # the buffers' own size symbol, not the ``batch`` attribute's
        pos_q = self.seen.expand(B, 1)
        p = _new_priority(self, pos_q, torch.ones(B, 1, dtype=torch.bool, device=self.device))
        self.prio.index_put_(at, p[:, :, 0].expand(at[2].shape) if p is not None
                             else torch.zeros((), dtype=torch.float32, device=self.device))
        self.real_seen.add_(1)
        self.seen.add_(1)
        return self.keys, self.values

    @property
    def decoding(self) -> bool:
        return self.prefilled

    # -- after the prompt's attention -------------------------------------------------------------
    def finish_prompt(self, colsum: torch.Tensor | None, new_valid: torch.Tensor | None) -> None:
        """Keep the best ``capacity`` prompt tokens (per row: its own budget of real tokens)."""
        k, v = self._prompt
        self._prompt = None
        self.awaiting_attention = False
        B, H, P, _ = k.shape
        dev = k.device
        valid_q = new_valid if new_valid is not None else torch.ones(B, P, dtype=torch.bool, device=dev)
        pos_q = torch.arange(P, device=dev).expand(B, P)
        self.real_seen.zero_()
        init = _new_priority(self, pos_q, valid_q)
        prio = torch.zeros(B, H, P, dtype=torch.float32, device=dev)
        if init is not None:
            prio += init
        if colsum is not None:
            prio += colsum
        real = valid_q.sum(-1)
        tb = self._row_budget(real)
        recent = self.policy.split(tb)[1]
        validH, posH = valid_q[:, None, :].expand(B, H, P), pos_q[:, None, :].expand(B, H, P)
        order = select_victims(eviction_priority(prio, posH, validH, P, recent), posH, P)
        n = min(P, self.capacity)
        kept = order[..., P - n:]
        rank = torch.arange(P - n, P, device=dev)
        limit = (P - tb).view(-1, 1, 1) if isinstance(tb, torch.Tensor) else P - tb
        self.keys[:, :, :n] = k.gather(2, kept.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1]))
        self.values[:, :, :n] = v.gather(2, kept.unsqueeze(-1).expand(-1, -1, -1, v.shape[-1]))
        self.prio[:, :, :n] = prio.gather(-1, kept)
        self.pos[:, :, :n] = kept
        self.valid[:, :, :n] = validH.gather(-1, kept) & (rank >= limit)
        self.valid[:, :, n:] = False
        self.prio[:, :, n:] = 0.0
        self.real_seen.copy_(real)
        self.seen.fill_(P)
        self.prefilled = True
        if not torch.compiler.is_compiling():
            self.check_free_slot()

    def _row_budget(self, real):
        """Slots each row may keep: its percentage of its real tokens (at most the capacity, which
        a generation longer than ``max_new_tokens`` reaches), or the token budget."""
        if not self.budget.is_percent:
            return self.capacity
        return cache_size(self.budget, real).clamp(max=self.capacity)

    def evict(self) -> None:
        """After a decoding step's attention: free one slot of every row over its budget."""
        self.awaiting_attention = False
        tb = self._row_budget(self.real_seen)
        recent = self.policy.split(tb)[1]
        prio = eviction_priority(self.prio, self.pos, self.valid, self.seen, recent)
        victim = select_victims(torch.where(self.valid, prio, math.inf), self.pos, 1)
        limit = tb.view(-1, 1, 1) if isinstance(tb, torch.Tensor) else tb
        excess = self.valid.sum(-1, keepdim=True) > limit
        at = self._rows_at(victim)
        self.valid.index_put_(at, self.valid.gather(-1, victim)[..., 0] & ~excess[..., 0])

    def free_slot(self) -> torch.Tensor:
        """(B, H, 1) index of each row's first invalid slot (the last slot if a row had none, which
        the prompt's check and every step's eviction rule out): a plain ``amin`` over slot numbers,
        so the index is in range whatever the compiler does. Not ``argmin`` of the mask as int8 or
        bool: inductor's argmin over those types returns wrong indices (CPU: 0 for every row,
        pytorch#184893, #191499; CUDA bool: #174069), which overwrote a kept token every step."""
        S = self.valid.shape[-1]
        slot = torch.arange(S, device=self.valid.device)
        return torch.where(self.valid, S - 1, slot).amin(-1, keepdim=True)

    def _rows_at(self, idx: torch.Tensor):
        """``index_put_`` indices of slot ``idx`` (B, H, 1) in every (row, head). ``index_put_``,
        not ``scatter_``: inductor turns a functional ``index_put`` on a buffer that the step
        mutates into an in-place write (``scatter`` would copy the whole buffer every step)."""
        B, H = idx.shape[:2]
        rows = torch.arange(B, device=idx.device).view(B, 1)
        heads = torch.arange(H, device=idx.device).view(1, H)
        return rows, heads, idx[..., 0]

    def check_free_slot(self) -> None:
        """Raise if a row holds ``capacity + 1`` valid tokens (its next token would overwrite one);
        the invariant every step relies on, checked on the host after a prompt (eager only)."""
        full = self.valid.all(-1)
        if bool(full.any()):
            b, h = (int(i) for i in full.nonzero()[0])
            raise RuntimeError(f"static slot layer: row {b}, head {h} holds {self.valid.shape[-1]} valid tokens in "
                               f"{self.valid.shape[-1]} slots (capacity {self.capacity} + 1 free slot expected); "
                               "the cache state is inconsistent")

    def key_mask(self) -> torch.Tensor:
        return self.valid

    def scores_view(self) -> torch.Tensor:
        return self.prio

    # -- HF Cache API -------------------------------------------------------------------------------
    def get_seq_length(self):
        return self.seen if self.is_initialized and self.prefilled else 0

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        # 0 = "no mask": during decoding the slots carry their own validity (see kv.hf._padding_mask).
        return (0, 0) if self.is_initialized and self.prefilled else (query_length, 0)

    def get_max_length(self) -> int:
        return self.capacity if self.is_initialized else -1

    def reset(self) -> None:
        if self.is_initialized:
            self.clear()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: reorder every row buffer in place (the addresses stay, and the scores,
        positions and validity move with their keys; the base class would move keys/values only)."""
        if not self.is_initialized:
            return
        for name in self.ROW_BUFFERS:
            t = getattr(self, name)
            t.copy_(t.index_select(0, beam_idx.to(t.device)))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a budgeted KV cache evicts tokens and cannot be cropped (assisted decoding)")

    def used_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        return int(self.valid.sum()) * (self.keys.shape[-1] + self.values.shape[-1]) * self.keys.element_size()
