"""Tiny scenes and cameras for the splat tests."""

import math

import torch

from anybudget.splat.cameras import Camera, look_at
from anybudget.splat.scene import GaussianScene


def random_scene(n=64, degree=3, seed=0, spread=0.6, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return GaussianScene(
        means=(torch.rand(n, 3, generator=g) - 0.5) * 2 * spread,
        log_scales=torch.log(0.03 + 0.08 * torch.rand(n, 3, generator=g)),
        quats=torch.randn(n, 4, generator=g),
        opacity_logits=torch.randn(n, generator=g),
        sh_dc=torch.randn(n, 3, generator=g) * 0.8,
        sh_rest=torch.randn(n, k, 3, generator=g) * 0.1,
        normals=torch.zeros(n, 3),
    ).to(device)


def orbit_cameras(count=4, size=24, radius=3.0, fov=None, seed=0):
    fov = math.radians(50) if fov is None else fov
    cams = []
    for i in range(count):
        a = 2 * math.pi * i / count + 0.3 * seed
        eye = torch.tensor([radius * math.cos(a), 0.8, radius * math.sin(a)])
        f = 0.5 * size / math.tan(0.5 * fov)
        cams.append(Camera(world_to_cam=look_at(eye, torch.zeros(3)), fx=f, fy=f, cx=size / 2,
                           cy=size / 2, width=size, height=size, name=f"v{i}"))
    return cams
