"""Which cached tokens to keep: pure functions of scores and budgets.

Every policy keeps a *recent window* (the newest ``recent_budget`` tokens) plus ``heavy_budget``
tokens chosen among the older ones by a priority. The policies differ only in that priority:

==========  ====================================================================================
h2o         accumulated attention each key received (H2O, Zhang et al. 2023, Sec. 3.2 / Alg. 1:
            keep the heavy hitters ``argtopk(sum_t softmax(q_t K^T))`` plus the recent window)
streaming   the first ``sink_tokens`` tokens (StreamingLLM's attention sinks, Xiao et al. 2024)
local       nothing: recent window only
random      a uniformly random subset of the older tokens (control)
full        keep everything
==========  ====================================================================================

Positions are indices along the sequence dimension; results are sorted ascending.

The ``*_keep_indices`` functions are the readable reference. The caches use the policy objects
below (:class:`H2O`, :class:`Streaming`, :class:`Local`, :class:`Random`, :class:`Full`): each
says how a cache of ``size`` slots splits into heavy and recent parts and which priority a new
token starts with; :func:`select_victims` is the one eviction rule all of them share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POLICIES = ("full", "h2o", "streaming", "local", "random")

__all__ = [
    "H2O",
    "POLICIES",
    "Full",
    "Local",
    "Random",
    "Streaming",
    "eviction_priority",
    "full_keep_indices",
    "h2o_keep_indices",
    "local_keep_indices",
    "make_policy",
    "random_keep_indices",
    "select_victims",
    "split_budget",
    "streaming_keep_indices",
]


def _check_budgets(heavy_budget: int, recent_budget: int) -> None:
    for name, v in (("heavy_budget", heavy_budget), ("recent_budget", recent_budget)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name}={v!r} must be an integer >= 0")


def split_budget(cache_size: int, recent_ratio: float) -> tuple[int, int]:
    """Split a cache of ``cache_size`` tokens into (heavy_budget, recent_budget).

    ``recent_budget = floor(recent_ratio * cache_size)``; the rest is heavy. The paper's default
    ``recent_ratio=0.5`` is its 1:1 split (e.g. 10% heavy + 10% recent = a 20% KV budget).
    """
    if not 0.0 <= recent_ratio <= 1.0:
        raise ValueError(f"recent_ratio={recent_ratio!r} is out of range; it must be in [0, 1]")
    recent = int(math.floor(recent_ratio * cache_size))
    return cache_size - recent, recent


def h2o_keep_indices(scores: torch.Tensor, heavy_budget: int, recent_budget: int) -> torch.Tensor:
    """H2O: the ``recent_budget`` newest positions plus the ``heavy_budget`` highest-scoring older ones.

    scores: (..., seq) accumulated attention per cached position (float; ``-inf`` marks a position
    that must never be kept in preference to a real one, e.g. padding).
    Returns: (..., min(seq, heavy_budget + recent_budget)) long, sorted ascending. If everything
    fits, every position is kept. Ties go to the earlier position (deterministic).
    """
    _check_budgets(heavy_budget, recent_budget)
    seq = scores.shape[-1]
    if heavy_budget + recent_budget >= seq:
        return full_keep_indices(seq, scores.shape[:-1], scores.device)
    recent = min(recent_budget, seq)
    older = seq - recent
    lead = scores.shape[:-1]
    recent_idx = torch.arange(older, seq, device=scores.device).expand(*lead, recent)
    if heavy_budget == 0:
        return recent_idx.contiguous()
    cand = scores[..., :older].float()
    # Tie-break toward earlier positions: stable sort of -score keeps index order among equals.
    order = torch.sort(-cand, dim=-1, stable=True).indices[..., :heavy_budget]
    heavy_idx = torch.sort(order, dim=-1).values
    return torch.cat([heavy_idx, recent_idx], dim=-1)


def streaming_keep_indices(seq_len: int, sink_tokens: int, recent_budget: int, device=None) -> torch.Tensor:
    """StreamingLLM: the first ``sink_tokens`` positions plus the ``recent_budget`` newest. Returns (keep,)."""
    _check_budgets(sink_tokens, recent_budget)
    if sink_tokens + recent_budget >= seq_len:
        return torch.arange(seq_len, device=device)
    return torch.cat([
        torch.arange(sink_tokens, device=device),
        torch.arange(seq_len - recent_budget, seq_len, device=device),
    ])


def local_keep_indices(seq_len: int, recent_budget: int, device=None) -> torch.Tensor:
    """Local window: the ``recent_budget`` newest positions. Returns (keep,)."""
    return streaming_keep_indices(seq_len, 0, recent_budget, device)


def random_keep_indices(
    seq_len: int, heavy_budget: int, recent_budget: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Control: the ``recent_budget`` newest positions plus ``heavy_budget`` older ones drawn uniformly."""
    _check_budgets(heavy_budget, recent_budget)
    if heavy_budget + recent_budget >= seq_len:
        return torch.arange(seq_len, device=device)
    older = seq_len - recent_budget
    pick = torch.randperm(older, generator=generator)[:heavy_budget].sort().values.to(device)
    return torch.cat([pick, torch.arange(older, seq_len, device=device)])


def full_keep_indices(seq_len: int, lead_shape=(), device=None) -> torch.Tensor:
    """Everything: ``arange(seq_len)`` broadcast to ``(*lead_shape, seq_len)``."""
    return torch.arange(seq_len, device=device).expand(*lead_shape, seq_len).contiguous()


# -- policy objects: what the caches use -------------------------------------------------------------
def _split_ratio(size, recent_ratio: float):
    """``split_budget`` for an int or a long tensor of sizes (per row, on the device)."""
    if isinstance(size, torch.Tensor):
        recent = torch.floor(size.double() * recent_ratio).long()
        return size - recent, recent
    return split_budget(size, recent_ratio)


def _check_ratio(recent_ratio) -> None:
    if isinstance(recent_ratio, bool) or not isinstance(recent_ratio, (int, float)) or not 0.0 <= recent_ratio <= 1.0:
        raise ValueError(f"recent_ratio={recent_ratio!r} is out of range; it must be in [0, 1]")


@dataclass(frozen=True)
class H2O:
    """H2O (Zhang et al., NeurIPS 2023, Sec. 3.2 / Alg. 1): heavy hitters by accumulated attention
    plus the recent window; ``recent_ratio=0.5`` is the paper's 1:1 split."""

    recent_ratio: float = 0.5
    name = "h2o"
    needs_scores = True

    def __post_init__(self):
        _check_ratio(self.recent_ratio)

    def split(self, size):
        """(heavy, recent) slots of a cache of ``size`` slots (int or per-row long tensor)."""
        return _split_ratio(size, self.recent_ratio)

    def initial_priority(self, pos, rank, valid, generator=None, heads: int = 1):
        """Priority of new tokens, float32 (B, q) or (B, heads, q); None means 0 (H2O: scores are
        added later). ``pos``, ``rank`` (index among the row's real tokens), ``valid``: (B, q)."""
        return


@dataclass(frozen=True)
class Streaming:
    """StreamingLLM (Xiao et al., ICLR 2024, Sec. 3.2): the first ``sink_tokens`` real tokens
    (attention sinks; the paper uses 4) plus the recent window."""

    sink_tokens: int = 4
    name = "streaming"
    needs_scores = False

    def __post_init__(self):
        if isinstance(self.sink_tokens, bool) or not isinstance(self.sink_tokens, int) or self.sink_tokens < 0:
            raise ValueError(f"sink_tokens={self.sink_tokens!r} must be an integer >= 0")

    def split(self, size):
        if isinstance(size, torch.Tensor):
            heavy = size.clamp(max=self.sink_tokens)
        else:
            heavy = min(self.sink_tokens, size)
        return heavy, size - heavy

    def initial_priority(self, pos, rank, valid, generator=None, heads: int = 1):
        # Sinks outrank everything; the rest are ordered oldest-first (never chosen while sinks exist).
        sink = valid & (rank < self.sink_tokens)
        return torch.where(sink, torch.ones_like(pos, dtype=torch.float32), -pos.float() - 1.0)


@dataclass(frozen=True)
class Local:
    """Local window: the newest ``size`` tokens only."""

    name = "local"
    needs_scores = False

    def split(self, size):
        return (torch.zeros_like(size) if isinstance(size, torch.Tensor) else 0), size

    def initial_priority(self, pos, rank, valid, generator=None, heads: int = 1):
        return None


@dataclass(frozen=True)
class Random:
    """Control: H2O's recent window plus older tokens kept by a random priority drawn once on
    arrival (a persistent uniformly random subset)."""

    recent_ratio: float = 0.5
    seed: int = 0
    name = "random"
    needs_scores = False

    def __post_init__(self):
        _check_ratio(self.recent_ratio)

    def split(self, size):
        return _split_ratio(size, self.recent_ratio)

    def initial_priority(self, pos, rank, valid, generator=None, heads: int = 1):
        # One draw per (row, KV head, token): each head keeps its own random subset.
        return torch.rand((pos.shape[0], heads, pos.shape[1]), generator=generator, device=pos.device)


@dataclass(frozen=True)
class Full:
    """Keep everything (no eviction)."""

    name = "full"
    needs_scores = False

    def split(self, size):
        return size, (torch.zeros_like(size) if isinstance(size, torch.Tensor) else 0)

    def initial_priority(self, pos, rank, valid, generator=None, heads: int = 1):
        return None


_POLICY_CLASSES = {"h2o": H2O, "streaming": Streaming, "local": Local, "random": Random, "full": Full}


def make_policy(name: str, **kwargs):
    """The policy object of ``name`` in ``full, h2o, streaming, local, random``."""
    if name not in _POLICY_CLASSES:
        raise ValueError(f"policy={name!r} is unknown; choose one of {', '.join(POLICIES)}")
    return _POLICY_CLASSES[name](**kwargs)


def eviction_priority(prio, pos, valid, seen, recent):
    """The priority eviction compares: padding / free slots -inf (go first), the recent window
    (positions ``>= seen - recent``; ``seen``, ``recent`` ints or per-row (B,) tensors) +inf (never)."""
    if isinstance(recent, torch.Tensor):
        recent = recent.view(-1, *([1] * (pos.dim() - 1)))
    if isinstance(seen, torch.Tensor):
        seen = seen.view(-1, *([1] * (pos.dim() - 1))) if seen.dim() else seen
    p = torch.where(valid, prio, -math.inf)
    return torch.where(pos >= seen - recent, math.inf, p)


def select_victims(prio: torch.Tensor, pos: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` slots to evict along the last dim: lowest priority first, and among equal
    priorities the later position first (so the earlier one is kept, as in ``h2o_keep_indices``).

    prio: (..., L) from :func:`eviction_priority`; pos: (..., L) the slots' positions.
    ``n == 1`` (a decoding step) needs no sort: one ``amin`` and one ``argmax``. Returns (..., n).
    """
    if n == 1:
        low = prio.amin(-1, keepdim=True)
        return torch.where(prio == low, pos, -1).argmax(-1, keepdim=True)
    by_pos = torch.argsort(pos, dim=-1, descending=True)
    order = torch.sort(prio.gather(-1, by_pos), dim=-1, stable=True).indices
    return by_pos.gather(-1, order[..., :n])
