"""Where initial 3DGS points go on a mesh (a stand-in for SfM points): numpy only, so that both the
Panda3D scene builder (``make_scenes.py``) and the Blender worker (``pbr_worker.py``, bpy's own
Python) draw them the same way."""

from __future__ import annotations

import numpy as np


def draw_on_triangles(tris: np.ndarray, focus, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` draws on triangles ``tris`` (T, 3, 3): each picks a triangle with probability
    proportional to its area, down-weighted with distance d from ``focus`` by 1 / (1 + (d / 20)^2),
    and a uniform point in it. Returns (triangle index, a, b): the point is (1-a-b) v0 + a v1 + b v2."""
    area = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=-1)
    dist = np.linalg.norm(tris.mean(1) - np.asarray(focus), axis=-1)
    w = area / (1 + (dist / 20) ** 2)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(tris), size=count, p=w / w.sum())
    a, b = rng.random(count), rng.random(count)
    flip = a + b > 1
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    return pick, a, b
