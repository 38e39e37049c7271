"""Write multi-view datasets in the NeRF-synthetic layout (``transforms_{split}.json`` + PNGs) and
a COLMAP ``points3D.txt`` of initial points, so that 3DGS loaders (ours, the reference, gsplat's
examples) read them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from anybudget.io import atomic_path, atomic_write_text
from anybudget.splat.cameras import Camera

__all__ = ["write_png", "write_points3d", "write_transforms"]


def write_png(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> None:
    """An ``(H, W, 3|4)`` image in [0, 1] (float) or uint8 as PNG, atomically."""
    from PIL import Image

    arr = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def write_transforms(folder: str | os.PathLike, split: str, cams: list[Camera], images_subdir: str | None = None) -> Path:
    """``folder/transforms_{split}.json`` for ``cams`` (camera-to-world in the OpenGL convention,
    ``camera_angle_x`` from ``fx``; ``fl_x, fl_y, cx, cy, w, h`` too); images are expected at
    ``{images_subdir or split}/{cam.name}.png``."""
    frames = []
    for cam in cams:
        c2w = torch.linalg.inv(cam.world_to_cam.double().cpu())
        c2w[:3, 1:3] *= -1  # OpenCV -> OpenGL axes
        frames.append({"file_path": f"./{images_subdir or split}/{cam.name}", "transform_matrix": c2w.tolist()})
    c = cams[0]
    meta = {"camera_angle_x": 2 * math.atan(0.5 * c.width / c.fx), "fl_x": c.fx, "fl_y": c.fy, "cx": c.cx,
            "cy": c.cy, "w": c.width, "h": c.height, "frames": frames}
    path = Path(folder) / f"transforms_{split}.json"
    atomic_write_text(path, json.dumps(meta, indent=1))
    return path


def write_points3d(path: str | os.PathLike, points: torch.Tensor, colors: torch.Tensor) -> None:
    """A COLMAP ``points3D.txt`` (no tracks) of ``points (N, 3)`` with ``colors (N, 3)`` in [0, 1]."""
    rgb = (colors.clamp(0, 1) * 255).round().to(torch.int64).tolist()
    lines = ["# 3D point list: POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]"]
    for i, (p, c) in enumerate(zip(points.tolist(), rgb)):
        lines.append(f"{i + 1} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f} {c[0]} {c[1]} {c[2]} 0")
    atomic_write_text(path, "\n".join(lines) + "\n")
