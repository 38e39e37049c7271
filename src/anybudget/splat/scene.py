"""A 3D Gaussian Splatting scene in the storage conventions of the reference 3DGS code.

Every Gaussian has a mean, a log-scale per axis, a quaternion (w, x, y, z; not necessarily
normalised), an opacity logit and spherical-harmonics colour coefficients: ``sh_dc`` (degree 0)
and ``sh_rest`` (degrees 1..D, ``(N, (D+1)^2 - 1, 3)``, coefficient-major in memory; the ``.ply``
stores them channel-major, see :mod:`anybudget.splat.ply`). Activations are the 3DGS ones:
``exp`` for scales, ``sigmoid`` for opacity, normalisation for quaternions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

__all__ = ["SH_C0", "GaussianScene", "rgb_to_sh", "sh_coeffs", "sh_to_rgb"]

SH_C0 = 0.28209479177387814  # Y_0^0; a colour c is stored as (c - 0.5) / SH_C0


def sh_coeffs(degree: int) -> int:
    """Number of SH coefficients per channel up to ``degree``: (degree + 1) ** 2."""
    return (degree + 1) ** 2


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: torch.Tensor) -> torch.Tensor:
    return sh * SH_C0 + 0.5


@dataclass
class GaussianScene:
    """N Gaussians; all tensors float32 on one device.

    means ``(N, 3)``; log_scales ``(N, 3)``; quats ``(N, 4)`` w-first; opacity_logits ``(N,)``;
    sh_dc ``(N, 3)``; sh_rest ``(N, K, 3)`` with K in {0, 3, 8, 15} (SH degree 0..3);
    normals ``(N, 3)`` (unused by rendering, zeros in 3DGS files, kept for a lossless round trip);
    extra: any further per-Gaussian ``.ply`` columns, in file order, kept verbatim.
    """

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh_dc: torch.Tensor
    sh_rest: torch.Tensor
    normals: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        shapes = {
            "means": (self.means, (n, 3)),
            "log_scales": (self.log_scales, (n, 3)),
            "quats": (self.quats, (n, 4)),
            "opacity_logits": (self.opacity_logits, (n,)),
            "sh_dc": (self.sh_dc, (n, 3)),
        }
        if self.normals is not None:
            shapes["normals"] = (self.normals, (n, 3))
        for name, (t, shape) in shapes.items():
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {shape} for N={n}")
        if self.sh_rest.dim() != 3 or self.sh_rest.shape[0] != n or self.sh_rest.shape[2] != 3:
            raise ValueError(f"sh_rest has shape {tuple(self.sh_rest.shape)}; expected (N={n}, K, 3)")
        if self.sh_rest.shape[1] not in (0, 3, 8, 15):
            raise ValueError(
                f"sh_rest has K={self.sh_rest.shape[1]} coefficients per channel; "
                "allowed 0, 3, 8 or 15 (SH degree 0..3)"
            )
        for name, t in self.extra.items():
            if t.shape[0] != n or t.dim() != 1:
                raise ValueError(f"extra[{name!r}] has shape {tuple(t.shape)}; expected ({n},)")

    # ---- sizes -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_gaussians(self) -> int:
        return len(self)

    @property
    def sh_degree(self) -> int:
        return {0: 0, 3: 1, 8: 2, 15: 3}[int(self.sh_rest.shape[1])]

    @property
    def device(self) -> torch.device:
        return self.means.device

    # ---- activations -----------------------------------------------------------------------
    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> torch.Tensor:
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def sh(self) -> torch.Tensor:
        """All SH coefficients ``(N, (D+1)^2, 3)``, degree 0 first (gsplat's ``colors`` layout)."""
        return torch.cat([self.sh_dc[:, None, :], self.sh_rest], dim=1)

    # ---- copies ----------------------------------------------------------------------------
    def _map(self, fn) -> GaussianScene:
        return GaussianScene(
            means=fn(self.means), log_scales=fn(self.log_scales), quats=fn(self.quats),
            opacity_logits=fn(self.opacity_logits), sh_dc=fn(self.sh_dc), sh_rest=fn(self.sh_rest),
            normals=None if self.normals is None else fn(self.normals),
            extra={k: fn(v) for k, v in self.extra.items()},
        )

    def subset(self, index: torch.Tensor) -> GaussianScene:
        """The Gaussians selected by a boolean mask or an index tensor, in that order."""
        return self._map(lambda t: t[index])

    def detach(self) -> GaussianScene:
        return self._map(lambda t: t.detach().clone())

    def to(self, device) -> GaussianScene:
        return self._map(lambda t: t.to(device))

    def with_sh_degree(self, degree: int) -> GaussianScene:
        """A copy that keeps SH coefficients up to ``degree`` (drops the higher bands)."""
        if not 0 <= degree <= self.sh_degree:
            raise ValueError(f"degree={degree} is out of range; allowed 0..{self.sh_degree}")
        return dataclasses.replace(self.detach(), sh_rest=self.sh_rest[:, : sh_coeffs(degree) - 1].detach().clone())

    def equal(self, other: GaussianScene) -> bool:
        """Bit-exact equality of every tensor (NaNs compare equal to NaNs with the same bits)."""
        def same(a, b):
            if a is None or b is None:
                return a is None and b is None
            return a.shape == b.shape and a.dtype == b.dtype and bool(
                torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))
                if a.dtype == torch.float32 else torch.equal(a, b)
            )
        return (
            all(same(getattr(self, f), getattr(other, f)) for f in
                ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest", "normals"))
            and list(self.extra) == list(other.extra)
            and all(same(self.extra[k], other.extra[k]) for k in self.extra)
        )

    @classmethod
    def from_points(cls, points: torch.Tensor, colors: torch.Tensor, sh_degree: int = 3,
                    scale: torch.Tensor | float = 0.01, opacity: float = 0.1) -> GaussianScene:
        """Initial Gaussians at ``points`` ``(N, 3)`` with RGB ``colors`` in [0, 1] (3DGS init:
        identity rotation, opacity 0.1, isotropic scale; pass per-point ``scale`` (N,) from the
        mean distance to the 3 nearest neighbours as 3DGS does, see :func:`knn_scale`)."""
        n = points.shape[0]
        pts = points.float()
        s = torch.as_tensor(scale, dtype=torch.float32).expand(n) if not torch.is_tensor(scale) or scale.dim() == 0 else scale.float()
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        return cls(
            means=pts.clone(), log_scales=torch.log(s.clamp_min(1e-7))[:, None].repeat(1, 3),
            quats=quats.to(pts.device),
            opacity_logits=torch.full((n,), float(torch.logit(torch.tensor(opacity))), device=pts.device),
            sh_dc=rgb_to_sh(colors.float()), sh_rest=torch.zeros(n, sh_coeffs(sh_degree) - 1, 3, device=pts.device),
            normals=torch.zeros(n, 3, device=pts.device),
        )


def knn_scale(points: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Root of the mean squared distance to the ``k`` nearest neighbours (3DGS's initial scale)."""
    out = []
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i:i + chunk], points)
        d2 = d.topk(k + 1, largest=False).values[:, 1:] ** 2
        out.append(d2.mean(-1).clamp_min(1e-7).sqrt())
    return torch.cat(out)
