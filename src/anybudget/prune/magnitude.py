"""Magnitude pruning: global or layer-wise, exact counts, the paper's linear schedule and the
geometric one; which matrices are prunable is a list of regular expressions over parameter names.

Chen et al. 2020, Sec. 3: prune the pre-trained weights of BERT's encoder (Q, K, V, attention
output, intermediate, output) and the pooler by one global magnitude threshold, 10% of the
original weights per IMP round; embeddings, biases, LayerNorm and task heads are never pruned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from anybudget.prune.masks import Mask, check_sparsity

__all__ = [
    "BERT_PRUNABLE",
    "full_mask",
    "geometric_sparsity",
    "linear_sparsity",
    "magnitude_prune",
    "prunable_names",
    "random_prune",
    "schedule",
]

# The paper's set (the reference code's pruning_model(): 12 layers x 6 matrices + pooler = 73).
BERT_PRUNABLE = (
    r"(^|\.)encoder\.layer\.\d+\.attention\.self\.(query|key|value)\.weight$",
    r"(^|\.)encoder\.layer\.\d+\.attention\.output\.dense\.weight$",
    r"(^|\.)encoder\.layer\.\d+\.intermediate\.dense\.weight$",
    r"(^|\.)encoder\.layer\.\d+\.output\.dense\.weight$",
    r"(^|\.)pooler\.dense\.weight$",
)


def prunable_names(model: nn.Module, patterns: Iterable[str] = BERT_PRUNABLE) -> list[str]:
    """Names of the parameters matching any of ``patterns`` (``re.search``), in model order."""
    pats = [re.compile(p) for p in patterns]
    names = [n for n, _ in model.named_parameters() if any(p.search(n) for p in pats)]
    if not names:
        raise ValueError(f"patterns={list(patterns)!r} match no parameter of the model")
    return names


def full_mask(model: nn.Module, patterns: Iterable[str] = BERT_PRUNABLE) -> Mask:
    """All-True mask over the prunable parameters (sparsity 0)."""
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool, device="cpu")
            for n in prunable_names(model, patterns)}


def linear_sparsity(round: int, rate: float = 0.1) -> float:
    """The paper's schedule: after ``round`` rounds, ``rate * round`` of the ORIGINAL weights are
    pruned (the reference code's ``amount=1/(10-r)`` of the remainder gives 10%, 20%, ... 90%)."""
    return round * rate


def geometric_sparsity(round: int, rate: float = 0.2) -> float:
    """Classic LTH schedule: ``rate`` of the REMAINING weights per round: 1 - (1 - rate)^round."""
    return 1.0 - (1.0 - rate) ** round


def schedule(kind: str, rounds: int, rate: float | None = None) -> list[float]:
    """Target sparsity after each round 1..rounds for ``kind`` in {"linear", "geometric"}."""
    if kind == "linear":
        r = 0.1 if rate is None else rate
        out = [linear_sparsity(i, r) for i in range(1, rounds + 1)]
    elif kind == "geometric":
        r = 0.2 if rate is None else rate
        out = [geometric_sparsity(i, r) for i in range(1, rounds + 1)]
    else:
        raise ValueError(f"schedule={kind!r} is unknown; allowed: 'linear' (paper), 'geometric'")
    for i, s in enumerate(out, 1):
        check_sparsity(round(s, 12), f"sparsity after round {i} (rounds={rounds}, rate={rate})")
    return [round(s, 12) for s in out]


def _select_lowest(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` lowest ``scores`` among ``alive`` entries (ties: lower index first)."""
    idx = torch.nonzero(alive, as_tuple=False).flatten()
    if k <= 0 or idx.numel() == 0:
        return idx[:0]
    order = torch.argsort(scores[idx], stable=True)
    return idx[order[:k]]


@torch.no_grad()
def magnitude_prune(
    weights: dict[str, torch.Tensor],
    mask: Mask,
    sparsity: float,
    scope: str = "global",
) -> Mask:
    """New mask with exactly ``round(sparsity * n)`` entries pruned, removing the smallest |w|
    among the entries still kept (pruned entries stay pruned).

    weights: ``{name: tensor}`` for every name in ``mask`` (usually the trained weights).
    scope: "global" (one threshold over all tensors, the paper) or "layerwise" (each tensor to
    ``sparsity``). Raises ValueError if ``sparsity`` is below the mask's current sparsity.
    """
    sparsity = check_sparsity(sparsity)
    missing = [k for k in mask if k not in weights]
    if missing:
        raise ValueError(f"weights lacks {len(missing)} masked name(s), e.g. {missing[:3]}")
    names = list(mask)
    if scope == "global":
        groups = [names]
    elif scope == "layerwise":
        groups = [[n] for n in names]
    else:
        raise ValueError(f"scope={scope!r} is unknown; allowed: 'global' (paper), 'layerwise'")
    new = {n: mask[n].clone().cpu() for n in names}
    for group in groups:
        alive = torch.cat([new[n].flatten() for n in group])
        scores = torch.cat([weights[n].detach().abs().float().cpu().flatten() for n in group])
        target = round(sparsity * alive.numel())
        already = int((~alive).sum())
        if target < already:
            raise ValueError(
                f"sparsity={sparsity} is below the mask's current sparsity "
                f"{already / alive.numel():.4f}; pruning never grows weights back"
            )
        alive[_select_lowest(scores, alive, target - already)] = False
        start = 0
        for n in group:
            k = new[n].numel()
            new[n] = alive[start:start + k].view_as(new[n]).clone()
            start += k
    return new


@torch.no_grad()
def random_prune(mask: Mask, sparsity: float, generator: torch.Generator | None = None,
                 scope: str = "global") -> Mask:
    """Random-pruning control: like ``magnitude_prune`` but with uniform random scores."""
    weights = {n: torch.rand(m.shape, generator=generator) for n, m in mask.items()}
    return magnitude_prune(weights, mask, sparsity, scope=scope)
