"""Pinhole cameras and their images, from NeRF-synthetic ``transforms_*.json`` or COLMAP text.

Convention (OpenCV, as 3DGS and gsplat use internally): ``world_to_cam`` maps world points to a
camera frame with x right, y down, z forward; pixel centres sit at ``(i + 0.5, j + 0.5)`` and a
camera-frame point ``(x, y, z)`` projects to ``(fx x / z + cx, fy y / z + cy)``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "Camera",
    "find_points",
    "load_colmap_text",
    "load_image",
    "load_nerf_synthetic",
    "load_views",
    "look_at",
    "read_colmap_points",
]


@dataclass(frozen=True)
class Camera:
    """One calibrated view: ``world_to_cam (4, 4)``, intrinsics in pixels, optional ``image
    (H, W, 3)`` in [0, 1]."""

    world_to_cam: torch.Tensor
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    image: torch.Tensor | None = None
    name: str = ""

    @property
    def position(self) -> torch.Tensor:
        r, t = self.world_to_cam[:3, :3], self.world_to_cam[:3, 3]
        return -r.T @ t

    @property
    def K(self) -> torch.Tensor:
        return torch.tensor([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def to(self, device) -> Camera:
        return replace(self, world_to_cam=self.world_to_cam.to(device),
                       image=None if self.image is None else self.image.to(device))

    def with_pose(self, world_to_cam: torch.Tensor) -> Camera:
        """The same intrinsics at another pose, without an image (a pseudo view)."""
        return replace(self, world_to_cam=world_to_cam, image=None, name=self.name + "~")


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """``world_to_cam (4, 4)`` of a camera at ``eye`` looking at ``target`` (OpenCV axes)."""
    eye, target = torch.as_tensor(eye, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
    fwd = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.linalg.cross(fwd, torch.tensor(up, dtype=torch.float32))
    if right.norm() < 1e-6:  # looking along `up`: pick another helper axis
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))
    right = torch.nn.functional.normalize(right, dim=0)
    down = torch.linalg.cross(fwd, right)
    w2c = torch.eye(4)
    w2c[:3, :3] = torch.stack([right, down, fwd])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def load_image(path: str | os.PathLike, background=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """An image ``(H, W, 3)`` float32 in [0, 1]; RGBA is composited over ``background``."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow ships with the splat extra
        raise ImportError("reading images needs pillow: pip install 'anybudget[splat]'") from e
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB"), dtype=np.float32) / 255.0
    img = torch.from_numpy(arr)
    if img.shape[-1] == 4:
        a = img[..., 3:]
        img = img[..., :3] * a + torch.tensor(background, dtype=torch.float32) * (1 - a)
    return img.contiguous()


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        return im.size


def load_nerf_synthetic(folder: str | os.PathLike, split: str = "train", images: bool = True,
                        background=(0.0, 0.0, 0.0)) -> list[Camera]:
    """Cameras of ``folder/transforms_{split}.json`` (Blender/NeRF convention: ``transform_matrix``
    is camera-to-world with x right, y up, z backward; ``camera_angle_x`` the horizontal FOV)."""
    folder = Path(folder)
    path = folder / f"transforms_{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"split={split!r}: {path} does not exist")
    meta = json.loads(path.read_text())
    cams = []
    for i, frame in enumerate(meta.get("frames", [])):
        if "transform_matrix" not in frame or "file_path" not in frame:
            raise ValueError(f"{path}: frame {i} lacks 'transform_matrix' or 'file_path'")
        c2w = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
        if c2w.shape != (4, 4):
            raise ValueError(f"{path}: frame {i} transform_matrix has shape {tuple(c2w.shape)}; expected (4, 4)")
        c2w[:3, 1:3] *= -1  # OpenGL (y up, z back) -> OpenCV (y down, z forward)
        w2c = torch.linalg.inv(c2w).float()
        img_path = folder / frame["file_path"]
        if not img_path.suffix:  # NeRF-synthetic omits the extension (".png")
            img_path = next((img_path.with_suffix(x) for x in (".png", ".jpg", ".jpeg")
                             if img_path.with_suffix(x).exists()), img_path.with_suffix(".png"))
        img = load_image(img_path, background) if images else None
        if img is not None:
            h, w = img.shape[:2]
        elif "w" in meta and "h" in meta:
            w, h = int(meta["w"]), int(meta["h"])
        else:
            w, h = _image_size(img_path)
        if "fl_x" in meta:
            fx = float(meta["fl_x"])
            fy = float(meta.get("fl_y", fx))
        elif "camera_angle_x" in meta:
            fx = 0.5 * w / math.tan(0.5 * float(meta["camera_angle_x"]))
            fy = 0.5 * h / math.tan(0.5 * float(meta["camera_angle_y"])) if "camera_angle_y" in meta else fx
        else:
            raise ValueError(f"{path}: no 'camera_angle_x' or 'fl_x'")
        cams.append(Camera(w2c, fx, fy, float(meta.get("cx", w / 2)), float(meta.get("cy", h / 2)),
                           w, h, img, name=Path(frame["file_path"]).name))
    if not cams:
        raise ValueError(f"{path}: no frames")
    return cams


def _colmap_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _qvec_to_rotmat(q) -> torch.Tensor:
    w, x, y, z = (float(v) for v in q)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ], dtype=torch.float32)


def load_colmap_text(sparse: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                     images: bool = True) -> list[Camera]:
    """Cameras of a COLMAP text model (``cameras.txt`` + ``images.txt``), sorted by image name.

    Only undistorted models (PINHOLE, SIMPLE_PINHOLE) are accepted, as in 3DGS.
    """
    sparse = Path(sparse)
    intr = {}
    for ln in _colmap_lines(sparse / "cameras.txt"):
        p = ln.split()
        cid, model, w, h, params = int(p[0]), p[1], int(p[2]), int(p[3]), [float(v) for v in p[4:]]
        if model == "SIMPLE_PINHOLE" and len(params) == 3:
            intr[cid] = (params[0], params[0], params[1], params[2], w, h)
        elif model == "PINHOLE" and len(params) == 4:
            intr[cid] = (*params, w, h)
        else:
            raise ValueError(f"{sparse / 'cameras.txt'}: camera {cid} model {model!r} with {len(params)} "
                             "params; allowed PINHOLE (4) or SIMPLE_PINHOLE (3): undistort first")
    lines = (sparse / "images.txt").read_text().splitlines()
    cams, i = [], 0
    while i < len(lines):
        ln = lines[i].strip()
        if not ln or ln.startswith("#"):
            i += 1
            continue
        p = ln.split()
        if len(p) < 10:
            raise ValueError(f"{sparse / 'images.txt'}: line {i + 1} has {len(p)} fields; expected "
                             "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        i += 2  # the next line lists the 2D points (may be empty)
        cid = int(p[8])
        if cid not in intr:
            raise ValueError(f"{sparse / 'images.txt'}: image {p[9]!r} uses unknown camera {cid}")
        w2c = torch.eye(4)
        w2c[:3, :3] = _qvec_to_rotmat(p[1:5])
        w2c[:3, 3] = torch.tensor([float(v) for v in p[5:8]])
        fx, fy, cx, cy, w, h = intr[cid]
        img = None
        if images:
            if images_dir is not None:
                folder = Path(images_dir)
            else:  # <root>/sparse/0 or <root>/sparse -> <root>/images
                folder = next((p / "images" for p in (sparse.parent, sparse.parent.parent) if (p / "images").is_dir()),
                              sparse.parent / "images")
            img = load_image(folder / p[9])
        cams.append(Camera(w2c, fx, fy, cx, cy, w, h, img, name=p[9]))
    return sorted(cams, key=lambda c: c.name)


def find_points(folder: str | os.PathLike) -> Path | None:
    """The folder holding ``points3D.txt`` in a dataset (``sparse/0``, ``sparse`` or the root)."""
    for sparse in (Path(folder) / "sparse" / "0", Path(folder) / "sparse", Path(folder)):
        if (sparse / "points3D.txt").is_file():
            return sparse
    return None


def read_colmap_points(sparse: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``(N, 3)`` and colours ``(N, 3)`` in [0, 1] from ``points3D.txt``."""
    pts, cols = [], []
    for ln in _colmap_lines(Path(sparse) / "points3D.txt"):
        p = ln.split()
        pts.append([float(v) for v in p[1:4]])
        cols.append([int(v) / 255.0 for v in p[4:7]])
    return torch.tensor(pts, dtype=torch.float32).reshape(-1, 3), torch.tensor(cols, dtype=torch.float32).reshape(-1, 3)


def load_views(folder: str | os.PathLike, split: str = "train", images: bool = True,
               test_every: int = 8, background=(0.0, 0.0, 0.0)) -> list[Camera]:
    """Cameras of a dataset folder, NeRF-synthetic if ``transforms_{split}.json`` is there, else
    COLMAP text under ``sparse/0`` or ``sparse`` (split: every ``test_every``-th image is a test
    view, the Mip-NeRF 360 convention 3DGS uses; ``split="all"`` keeps all)."""
    folder = Path(folder)
    if (folder / f"transforms_{split}.json").is_file():
        return load_nerf_synthetic(folder, split, images, background)
    for sparse in (folder / "sparse" / "0", folder / "sparse", folder):
        if (sparse / "cameras.txt").is_file():
            cams = load_colmap_text(sparse, folder / "images", images)
            if split == "all":
                return cams
            if split not in ("train", "test"):
                raise ValueError(f"split={split!r}; a COLMAP folder has 'train', 'test' or 'all'")
            return [c for i, c in enumerate(cams) if (i % test_every == 0) == (split == "test")]
    raise FileNotFoundError(f"{folder}: neither transforms_{split}.json nor a COLMAP sparse/0/cameras.txt")
