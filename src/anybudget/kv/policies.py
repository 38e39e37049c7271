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
"""

from __future__ import annotations

import math

import torch

POLICIES = ("full", "h2o", "streaming", "local", "random")

__all__ = [
    "POLICIES",
    "h2o_keep_indices",
    "streaming_keep_indices",
    "local_keep_indices",
    "random_keep_indices",
    "full_keep_indices",
    "split_budget",
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
