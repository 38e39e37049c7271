"""Quality and speed of a scene on held-out views: PSNR, SSIM, LPIPS where available, FPS, and side-by-side PNGs."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from anybudget.io import atomic_path
from anybudget.splat.cameras import Camera
from anybudget.splat.losses import psnr, ssim
from anybudget.splat.render import render, render_gsplat_batch
from anybudget.splat.scene import GaussianScene

__all__ = ["evaluate", "lpips_metric", "measure_fps", "side_by_side_png"]


@torch.no_grad()
def measure_fps(scene: GaussianScene, views: list[Camera], background=None, backend: str = "auto",
                repeats: int = 3, warmup: int = 1, batch: int = 1, min_seconds: float = 0.0) -> float:
    """Frames per second of rendering ``views`` (at least ``repeats`` passes after ``warmup``, and
    more until ``min_seconds`` have passed, so that a fast scene is not timed over a few ms; CUDA-synced).

    batch > 1 renders that many views per gsplat call (CUDA only): the rasteriser's own throughput,
    without the fixed host work of one call per frame, which bounds small scenes at high FPS."""
    if batch < 1:
        raise ValueError(f"batch={batch}; allowed >= 1")
    cams = [v.to(scene.device) for v in views]
    if batch > 1:
        if not scene.means.is_cuda:
            raise ValueError("batch > 1 needs a CUDA scene and gsplat")
        groups = [cams[i : i + batch] for i in range(0, len(cams), batch)]

        def one_pass():
            for g in groups:
                render_gsplat_batch(scene, g, background)
    else:
        def one_pass():
            for c in cams:
                render(scene, c, background, backend=backend)
    sync = torch.cuda.synchronize if scene.means.is_cuda else (lambda: None)
    for _ in range(warmup):
        one_pass()
    sync()
    t0 = time.perf_counter()
    passes = 0
    while passes < repeats or time.perf_counter() - t0 < min_seconds:
        one_pass()
        passes += 1
        if passes >= repeats:
            sync()
    sync()
    return passes * len(cams) / (time.perf_counter() - t0)


def lpips_metric(device, net: str = "vgg"):
    """LPIPS (Zhang et al. 2018) as 3DGS and LightGaussian report it (``net="vgg"``), or ``(None, reason)``.

    Needs the ``lpips`` package and its backbone's ImageNet weights, which torchvision fetches once
    into its hub cache; offline without that cache LPIPS is unavailable and the reason says so.
    Returns ``(fn, None)`` with ``fn(img, gt) -> float`` for ``(H, W, 3)`` images in [0, 1].
    """
    if net not in ("vgg", "alex", "squeeze"):
        raise ValueError(f"net={net!r}; allowed 'vgg', 'alex' or 'squeeze'")
    try:
        import lpips
    except ImportError:
        return None, "pip install lpips (LPIPS is optional)"
    try:
        model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    except Exception as e:  # the backbone's weights: a download that fails offline
        return None, f"lpips could not load its {net} backbone weights ({type(e).__name__}: {e})"[:300]

    def fn(img: torch.Tensor, gt: torch.Tensor) -> float:
        x, y = (t.permute(2, 0, 1)[None].float() * 2 - 1 for t in (img, gt))  # lpips takes [-1, 1], NCHW
        return float(model(x.to(device), y.to(device)))

    return fn, None


@torch.no_grad()
def evaluate(scene: GaussianScene, views: list[Camera], background=None, backend: str = "auto",
             fps_repeats: int = 3, lpips=False) -> dict:
    """Mean PSNR / SSIM over ``views`` (with images), FPS, and the Gaussian count; with ``lpips=True`` also
    mean LPIPS (VGG) where :func:`lpips_metric` can build it, else ``lpips: None`` and ``lpips_unavailable``.
    ``lpips`` may also be the ``(fn, reason)`` pair :func:`lpips_metric` returned, to load it once for many scenes."""
    if not views or any(v.image is None for v in views):
        raise ValueError("views must be non-empty and carry images (load them with images=True)")
    lp_fn, lp_why = lpips if isinstance(lpips, tuple) else lpips_metric(scene.device) if lpips else (None, None)
    ps, ss, lp = [], [], []
    for v in views:
        img = render(scene, v.to(scene.device), background, backend=backend).image.clamp(0, 1)
        gt = v.image.to(img.device)
        ps.append(psnr(img, gt))
        ss.append(float(ssim(img, gt)))
        if lp_fn is not None:
            lp.append(lp_fn(img, gt))
    fps = measure_fps(scene, views, background, backend, fps_repeats) if fps_repeats else None
    out = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "fps": fps, "num_gaussians": len(scene),
           "views": len(views)}
    if lpips is not False:
        out["lpips"] = float(np.mean(lp)) if lp else None
        if lp_why:
            out["lpips_unavailable"] = lp_why
    return out


@torch.no_grad()
def side_by_side_png(scenes: dict[str, GaussianScene], views: list[Camera], path: str | os.PathLike,
                     count: int = 3, background=None, backend: str = "auto", colors: int | None = 256) -> None:
    """A PNG grid: one row per view, ground truth then each scene's render, left to right.

    colors: the picture is stored with a palette of this many colours (a third of the bytes of
    full RGB; it is for looking at, the PSNR numbers come from the float renders); None keeps RGB.
    """
    from PIL import Image

    rows = []
    for v in views[:count]:
        tiles = [v.image.cpu()] if v.image is not None else []
        for s in scenes.values():
            tiles.append(render(s, v.to(s.device), background, backend=backend).image.clamp(0, 1).cpu())
        rows.append(torch.cat(tiles, dim=1))
    grid = (torch.cat(rows, dim=0).numpy() * 255).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        img = Image.fromarray(grid)
        if colors is not None:
            img = img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        img.save(tmp, format="PNG", optimize=True)
