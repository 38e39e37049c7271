"""Significance pruning (LightGaussian Sec. 3.2): drop the ``ratio`` least significant Gaussians,
then recover quality by fine-tuning the survivors (the paper: 5,000 iterations after pruning a
30k-iteration scene by 66%).

``rule="paper"`` removes exactly ``round(ratio * N)`` Gaussians (ties broken by index).
``rule="reference"`` is the released code's threshold: the score at ascending sorted index
``int(ratio * (N - 1))``, removing every Gaussian at or below it (ties may remove more).
"""

from __future__ import annotations

import torch

from anybudget.splat.scene import GaussianScene

__all__ = ["check_ratio", "prune", "prune_mask"]

RULES = ("paper", "reference")


def check_ratio(ratio: float, name: str = "ratio") -> float:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"{name}={ratio!r} is out of range; a ratio is a fraction in [0, 1)")
    return float(ratio)


def prune_mask(scores: torch.Tensor, ratio: float, rule: str = "paper") -> torch.Tensor:
    """Boolean ``(N,)``: True for the Gaussians kept when pruning ``ratio`` of them by ``scores``."""
    ratio = check_ratio(ratio)
    n = scores.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=scores.device)
    if ratio == 0.0 or n == 0:
        return keep
    if rule == "paper":
        drop = torch.argsort(scores, stable=True)[: round(ratio * n)]
        keep[drop] = False
        return keep
    if rule == "reference":
        threshold = torch.sort(scores).values[int(ratio * (n - 1))]
        return scores > threshold
    raise ValueError(f"rule={rule!r}; allowed {', '.join(RULES)}")


def prune(scene: GaussianScene, scores: torch.Tensor, ratio: float, rule: str = "paper") -> GaussianScene:
    """``scene`` without its ``ratio`` least significant Gaussians (order of the rest kept)."""
    if scores.shape != (len(scene),):
        raise ValueError(f"scores has shape {tuple(scores.shape)}; expected ({len(scene)},)")
    return scene.subset(prune_mask(scores, ratio, rule).to(scene.device)).detach()
