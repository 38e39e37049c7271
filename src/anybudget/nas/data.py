"""Real-image inputs for the proxies, offline: crops of photographs that scikit-image ships.

No CIFAR-10 is available on these machines, so every result states its inputs as
"32x32 crops of scikit-image sample photographs, CIFAR-10 normalisation" (``DATA_NOTE``). A crop
is a random square of side 48..(short side / 2) pixels, area-resized to ``size`` and flipped at
random; its label is the index of the photograph it came from (for the proxies that need a loss:
snip, grad_norm). Needs ``pip install 'anybudget[nas]'`` (scikit-image).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "DATA_NOTE", "PHOTOS", "crops_from", "load_photos", "photo_batch", "region_inputs"]

# Colour photographs bundled inside the scikit-image wheel (no download needed).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle")
DATA_NOTE = "32x32 crops of scikit-image sample photographs (no CIFAR-10 offline), CIFAR-10 mean/std normalisation"
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


@lru_cache(maxsize=1)
def load_photos() -> tuple[torch.Tensor, ...]:
    """The bundled photographs as uint8 tensors ``(3, H, W)``.

    ``ANYBUDGET_NAS_PHOTOS`` may name an ``.npz`` of the same arrays (name -> ``(3, H, W)``
    uint8), for machines without scikit-image.
    """
    path = os.environ.get("ANYBUDGET_NAS_PHOTOS")
    if path:
        with np.load(path) as z:
            missing = [n for n in PHOTOS if n not in z]
            if missing:
                raise ValueError(f"ANYBUDGET_NAS_PHOTOS={path} lacks {missing}; it needs {', '.join(PHOTOS)}")
            return tuple(torch.from_numpy(np.ascontiguousarray(z[n])) for n in PHOTOS)
    try:
        import skimage.data as sd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("proxy inputs need scikit-image: pip install 'anybudget[nas]'") from e
    out = []
    for name in PHOTOS:
        img = sd.stereo_motorcycle()[0] if name == "motorcycle" else getattr(sd, name)()
        out.append(torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).contiguous())
    return tuple(out)


def _check_n(name: str, n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}={n!r} must be an integer >= 1")


def photo_batch(
    n: int, *, size: int = 32, seed: int = 0, normalize: bool = True, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random crops -> ``(images (n, 3, size, size) float32, labels (n,) int64)``.

    Deterministic in ``seed``. ``normalize`` applies CIFAR-10 mean/std (the proxies' defaults
    assume CIFAR-like inputs).
    """
    _check_n("n", n)
    _check_n("size", size)
    photos = load_photos()
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for _ in range(n):
        k = int(rng.integers(len(photos)))
        p = photos[k]
        h, w = p.shape[1:]
        side = int(rng.integers(48, max(49, min(h, w) // 2 + 1)))
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = p[:, y : y + side, x : x + side].float().unsqueeze(0) / 255.0
        crop = F.interpolate(crop, size=(size, size), mode="area")[0]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        imgs.append(crop)
        labels.append(k)
    images = torch.stack(imgs)
    if normalize:
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        images = (images - mean) / std
    return images.to(device), torch.tensor(labels, dtype=torch.long, device=device)


def region_inputs(n: int = 3000, *, crop: int = 3, seed: int = 0, device=None) -> torch.Tensor:
    """Inputs of the linear-region count: ``(n, 1, crop, crop)``.

    As in the reference ``Linear_Region_Collector(input_size=(1000, 1, 3, 3), sample_batch=3)``:
    a random ``crop x crop`` window of one random channel of a normalised 32x32 image.
    """
    _check_n("n", n)
    _check_n("crop", crop)
    if crop > 32:
        raise ValueError(f"crop={crop} must be <= 32 (the images are 32x32)")
    images, _ = photo_batch(n, size=32, seed=seed)
    return crops_from(images, n, crop=crop, rng=np.random.default_rng(seed + 1)).to(device)


def crops_from(images: torch.Tensor, n: int, *, crop: int = 3, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random ``crop x crop`` windows of one random channel of random ``images (m, 3, H, W)``
    -> ``(n, 1, crop, crop)``."""
    m, c, h, w = images.shape
    pick = torch.from_numpy(rng.integers(m, size=n))
    ch = torch.from_numpy(rng.integers(c, size=n))
    ys = torch.from_numpy(rng.integers(h - crop + 1, size=n))
    xs = torch.from_numpy(rng.integers(w - crop + 1, size=n))
    idx = torch.arange(crop)
    rows = (ys[:, None] + idx)[:, :, None].expand(n, crop, crop)
    cols = (xs[:, None] + idx)[:, None, :].expand(n, crop, crop)
    out = images[pick.to(images.device)[:, None, None], ch.to(images.device)[:, None, None],
                 rows.to(images.device), cols.to(images.device)]
    return out.unsqueeze(1)
