"""Image losses and metrics of 3DGS: L1, SSIM (11x11 Gaussian window, sigma 1.5), PSNR."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["l1", "photometric_loss", "psnr", "ssim"]


def _window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of images ``(H, W, 3)`` in [0, 1], zero-padded as in 3DGS."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    w = _window(window, sigma, a.device, a.dtype)
    pad = window // 2
    mu_x, mu_y = F.conv2d(x, w, padding=pad, groups=3), F.conv2d(y, w, padding=pad, groups=3)
    sxx = F.conv2d(x * x, w, padding=pad, groups=3) - mu_x**2
    syy = F.conv2d(y * y, w, padding=pad, groups=3) - mu_y**2
    sxy = F.conv2d(x * y, w, padding=pad, groups=3) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def photometric_loss(render: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """3DGS Eq. 7: (1 - lambda) L1 + lambda (1 - SSIM), lambda = 0.2."""
    return (1 - lambda_dssim) * l1(render, target) + lambda_dssim * (1 - ssim(render, target))
