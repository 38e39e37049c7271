"""LightGaussian global significance (Fan et al., NeurIPS 2024, Sec. 3.2, Eq. 2):

    GS_j = sum_{views} sum_{pixels i} 1(G_j hits r_i) * o_j * T_ij * gamma(Sigma_j),
    gamma(Sigma_j) = V_norm(Sigma_j) ** beta,  beta = 0.1,

where ``o_j`` is the activated opacity, ``T_ij`` the transmittance in front of G_j along ray i, and
a "hit" is a contribution the 3DGS forward pass actually makes (alpha >= 1/255, before T < 1e-4).
As in the reference rasterizer the raw opacity is used, not alpha (alpha also carries the Gaussian
falloff); ``score="alpha_t"`` is that variant. The reference code's other options are here too:
``opacity_t`` (no volume term), ``hit_count`` and ``opacity``.

Volume normalisation: the paper divides each volume by the "90% largest" volume and clips to
[0, 1] (``volume_norm="paper"``: the 90th-percentile volume). The released code divides by
``sorted_descending(volume)[int(0.9 N)]`` -- the 10th percentile -- without clipping
(``volume_norm="reference"``). With beta = 0.1 both only reorder Gaussians of similar hit sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from anybudget.splat.cameras import Camera
from anybudget.splat.render import rasterize_gsplat
from anybudget.splat.render_ref import render_reference
from anybudget.splat.scene import GaussianScene

__all__ = [
    "SCORES",
    "SignificanceConfig",
    "global_significance",
    "hit_statistics",
    "significance",
    "volume_factor",
]

SCORES = ("lightgaussian", "alpha_t", "opacity_t", "hit_count", "opacity")
VOLUME_NORMS = ("paper", "reference")


@dataclass(frozen=True)
class SignificanceConfig:
    """Args:
        score: 'lightgaussian' (paper: sum o*T times volume**beta), 'alpha_t' (sum alpha*T times
            volume**beta), 'opacity_t' (sum o*T), 'hit_count' (pixels hit), 'opacity' (o alone).
        beta: volume exponent (paper 0.1).
        volume_norm: 'paper' (90th-percentile volume, clipped to [0, 1]) or 'reference'
            (the released code's index int(0.9 N) of the descending sort, unclipped).
    """

    score: str = "lightgaussian"
    beta: float = 0.1
    volume_norm: str = "paper"

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"score={self.score!r}; allowed {', '.join(SCORES)}")
        if self.volume_norm not in VOLUME_NORMS:
            raise ValueError(f"volume_norm={self.volume_norm!r}; allowed {', '.join(VOLUME_NORMS)}")
        if not self.beta >= 0:
            raise ValueError(f"beta={self.beta} must be >= 0")


@torch.no_grad()
def hit_statistics(scene: GaussianScene, views: list[Camera], background=None,
                   progress: bool = False) -> dict[str, torch.Tensor]:
    """Per-Gaussian sums over every pixel of every view: ``opacity_t``, ``alpha_t``, ``hits``
    (each ``(N,)``), from the tiled reference pass (it runs on whatever device the scene is on;
    on CUDA this is the documented equivalent of LightGaussian's modified CUDA rasterizer)."""
    n, dev = len(scene), scene.device
    acc = {k: torch.zeros(n, dtype=torch.float64, device=dev) for k in ("opacity_t", "alpha_t", "hits")}
    for cam in tqdm(views, desc="significance", disable=not progress):
        out = render_reference(scene, cam.to(dev), background, stats=True)
        acc["opacity_t"] += out.opacity_t.double()
        acc["alpha_t"] += out.alpha_t.double()
        acc["hits"] += out.hits.double()
    return acc


def alpha_t_gsplat(scene: GaussianScene, views: list[Camera], background=None) -> torch.Tensor:
    """``sum alpha_j T_j`` per Gaussian through gsplat (CUDA): the rendered image is linear in a
    per-Gaussian colour, ``dC/dc_j = alpha_j T_j`` at each pixel, so the gradient of the summed red
    channel with respect to all-ones colours is exactly the alpha-variant significance."""
    s = scene.detach()
    total = torch.zeros(len(s), dtype=torch.float64, device=s.device)
    for cam in views:
        colors = torch.ones(len(s), 3, device=s.device, requires_grad=True)
        img, _, _ = rasterize_gsplat(s, [cam], background, None, colors=colors)
        img[..., 0].sum().backward()
        total += colors.grad[:, 0].double()
    return total


def volume_factor(scales: torch.Tensor, beta: float = 0.1, volume_norm: str = "paper") -> torch.Tensor:
    """gamma = V_norm ** beta from activated scales ``(N, 3)``; V = product of the three scales."""
    volume = scales.double().prod(-1)
    if volume_norm == "paper":
        ref = torch.quantile(volume, 0.9)
        v = (volume / ref).clamp(0.0, 1.0)
    elif volume_norm == "reference":
        ref = torch.sort(volume, descending=True).values[int(0.9 * len(volume))]
        v = volume / ref
    else:
        raise ValueError(f"volume_norm={volume_norm!r}; allowed {', '.join(VOLUME_NORMS)}")
    return v.pow(beta)


def global_significance(opacity_t: torch.Tensor, scales: torch.Tensor, beta: float = 0.1,
                        volume_norm: str = "paper") -> torch.Tensor:
    """GS_j = (sum_i o_j T_ij) * V_norm_j ** beta: opacity_t ``(N,)``, scales ``(N, 3)`` -> ``(N,)``."""
    return opacity_t.double() * volume_factor(scales, beta, volume_norm)


def significance(scene: GaussianScene, views: list[Camera], config: SignificanceConfig = SignificanceConfig(),
                 background=None, progress: bool = False) -> torch.Tensor:
    """The score of ``config.score`` for every Gaussian of ``scene`` over ``views`` (float64)."""
    if config.score == "opacity":
        return scene.opacities.detach().double()
    stats = hit_statistics(scene.detach(), views, background, progress)
    if config.score == "hit_count":
        return stats["hits"]
    if config.score == "opacity_t":
        return stats["opacity_t"]
    base = stats["opacity_t"] if config.score == "lightgaussian" else stats["alpha_t"]
    return base * volume_factor(scene.scales.detach(), config.beta, config.volume_norm)
