"""One ``render`` call: gsplat's CUDA rasterizer when it is installed and the scene is on CUDA,
the PyTorch reference (:mod:`anybudget.splat.render_ref`) otherwise. Same conventions on both
(OpenCV cameras, pixel centres at +0.5, near plane 0.2, 0.3 px low-pass, classic 3DGS alpha)."""

from __future__ import annotations

import importlib.util

import torch

from anybudget.splat.cameras import Camera
from anybudget.splat.render_ref import RenderOutput, render_reference
from anybudget.splat.scene import GaussianScene

__all__ = ["BACKENDS", "has_gsplat", "rasterize_gsplat", "render", "render_gsplat", "render_gsplat_batch"]

BACKENDS = ("auto", "reference", "gsplat")


def has_gsplat() -> bool:
    return importlib.util.find_spec("gsplat") is not None


def rasterize_gsplat(scene: GaussianScene, cams: list[Camera], background, sh_degree: int | None, near: float = 0.2,
                     colors: torch.Tensor | None = None):
    """One gsplat ``rasterization`` call (classic mode, unpacked) of ``cams``, which share one size: the
    scene's SH at ``sh_degree``, or per-Gaussian ``colors (N, 3)`` in their place (``sh_degree`` None).
    Returns gsplat's ``(colors, alphas, meta)``."""
    try:
        from gsplat import rasterization
    except ImportError as e:
        raise ImportError("backend='gsplat' needs gsplat: pip install 'anybudget[splat]'") from e
    dev = scene.means.device
    bg = torch.zeros(3, device=dev) if background is None else torch.as_tensor(background, dtype=torch.float32, device=dev)
    return rasterization(
        scene.means, scene.rotations, scene.scales, scene.opacities, scene.sh if colors is None else colors,
        torch.stack([c.world_to_cam for c in cams]).to(dev), torch.stack([c.K for c in cams]).to(dev),
        cams[0].width, cams[0].height, near_plane=near, sh_degree=None if colors is not None else sh_degree,
        backgrounds=bg[None].expand(len(cams), 3), packed=False, rasterize_mode="classic",
    )


def render_gsplat(scene: GaussianScene, cam: Camera, background=None, sh_degree: int | None = None,
                  near: float = 0.2) -> RenderOutput:
    """gsplat ``rasterization`` (classic mode, unpacked so ``means2d`` is per Gaussian; here
    ``means2d`` keeps gsplat's ``(1, N, 2)`` shape so that its ``.grad`` is populated)."""
    deg = scene.sh_degree if sh_degree is None else min(sh_degree, scene.sh_degree)
    colors, alphas, meta = rasterize_gsplat(scene, [cam], background, deg, near)
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()  # (1, N, 2); the trainer reads .grad of this very tensor
    radii = meta["radii"][0]
    if radii.dim() == 2:  # gsplat >= 1.5 gives per-axis radii
        radii = radii.max(-1).values
    return RenderOutput(colors[0], alphas[0, ..., 0], means2d, radii.long())


@torch.no_grad()
def render_gsplat_batch(scene: GaussianScene, cams: list[Camera], background=None, near: float = 0.2) -> torch.Tensor:
    """Images ``(C, H, W, 3)`` of ``cams`` (all the same size) from one gsplat call; used to time the
    rasteriser without the per-call host work of C separate calls."""
    if not cams or len({(c.width, c.height) for c in cams}) != 1:
        raise ValueError("cams must be non-empty and share one width and height")
    return rasterize_gsplat(scene, cams, background, scene.sh_degree, near)[0]


def render(scene: GaussianScene, cam: Camera, background=None, sh_degree: int | None = None,
           backend: str = "auto") -> RenderOutput:
    """Render ``scene`` from ``cam``; ``backend`` in 'auto' (gsplat on CUDA if installed),
    'reference' or 'gsplat'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; allowed {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "gsplat" if scene.means.is_cuda and has_gsplat() else "reference"
    if backend == "gsplat":
        return render_gsplat(scene, cam, background, sh_degree)
    return render_reference(scene, cam, background, sh_degree)
