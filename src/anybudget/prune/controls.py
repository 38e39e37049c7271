"""The paper's controls for an IMP subnetwork at the same sparsity, and the winning criterion.

Chen et al. 2020, Sec. 3-4: a subnetwork is *matching* ("winning") if its performance, mean over
runs, is within one standard deviation of the full pre-trained model's mean. Controls:
random pruning (random mask, pre-trained weights), random re-initialisation (IMP mask, random
weights), one-shot magnitude pruning of the pre-trained weights (no training before pruning),
and shuffled weights (IMP mask, each matrix's pre-trained values permuted within the matrix).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
from torch import nn

from anybudget.prune.magnitude import BERT_PRUNABLE, full_mask, magnitude_prune, random_prune
from anybudget.prune.masks import Mask, apply_mask, check_sparsity, mask_sparsity

__all__ = ["CONTROLS", "control", "sparsest_winning", "winning"]

CONTROLS = ("imp", "random_pruning", "random_reinit", "oneshot", "shuffled")


@torch.no_grad()
def control(
    kind: str,
    make_model: Callable[[], nn.Module],
    imp_mask: Mask | None = None,
    sparsity: float | None = None,
    seed: int = 0,
    patterns: Sequence[str] = BERT_PRUNABLE,
) -> tuple[nn.Module, Mask]:
    """``(model, mask)`` ready to fine-tune for one of ``CONTROLS`` at the IMP mask's sparsity.

    kind "imp": theta_0 with the IMP mask. "random_pruning": theta_0, a random mask of the same
    global sparsity. "random_reinit": freshly initialised weights (the model's own init, seeded)
    with the IMP mask. "oneshot": theta_0 with a global magnitude mask of theta_0 itself.
    "shuffled": the IMP mask on theta_0 whose prunable matrices are randomly permuted entrywise.
    """
    if kind not in CONTROLS:
        raise ValueError(f"kind={kind!r} is unknown; allowed: {', '.join(CONTROLS)}")
    model = make_model()
    if imp_mask is None and kind in ("imp", "random_reinit", "shuffled"):
        raise ValueError(f"kind={kind!r} needs imp_mask")
    s = check_sparsity(mask_sparsity(imp_mask) if imp_mask is not None else sparsity)
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    if kind == "imp":
        mask = imp_mask
    elif kind == "random_pruning":
        mask = random_prune(full_mask(model, patterns), s, generator=g)
    elif kind == "oneshot":
        mask = magnitude_prune({n: params[n] for n in full_mask(model, patterns)},
                               full_mask(model, patterns), s)
    elif kind == "random_reinit":
        torch.manual_seed(seed)
        fresh = type(model)(model.config)  # the architecture's own initialisation
        model.load_state_dict(fresh.state_dict())
        mask = imp_mask
    else:  # shuffled
        mask = imp_mask
        for n in mask:
            p = params[n]
            perm = torch.randperm(p.numel(), generator=g)
            p.copy_(p.flatten()[perm.to(p.device)].view_as(p))
    apply_mask(model, mask)
    return model, mask


def winning(subnet: Sequence[float], full: Sequence[float], ddof: int = 1) -> bool:
    """True if mean(subnet) >= mean(full) - std(full) (std with ``ddof``; one run: std 0)."""
    if len(subnet) == 0 or len(full) == 0:
        raise ValueError(f"need scores for both: subnet has {len(subnet)}, full has {len(full)}")
    mu = statistics.fmean(full)
    sd = 0.0
    if len(full) > ddof:
        sd = (sum((x - mu) ** 2 for x in full) / (len(full) - ddof)) ** 0.5
    return statistics.fmean(subnet) >= mu - sd


def sparsest_winning(levels: dict[float, Sequence[float]], full: Sequence[float], ddof: int = 1,
                     contiguous: bool = False) -> float | None:
    """The highest sparsity whose scores win (``contiguous``: every lower level must win too)."""
    best = None
    for s in sorted(levels):
        if winning(levels[s], full, ddof):
            best = s
        elif contiguous:
            break
    return best
