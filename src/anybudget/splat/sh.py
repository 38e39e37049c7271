"""Real spherical harmonics up to degree 3, in the basis and sign convention of 3DGS / gsplat."""

from __future__ import annotations

import torch

__all__ = ["eval_sh", "sh_colors"]

_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
       0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def eval_sh(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Radiance sum_lm c_lm Y_lm(d): sh ``(N, K>=(degree+1)^2, 3)``, dirs ``(N, 3)`` unit -> ``(N, 3)``."""
    if not 0 <= degree <= 3:
        raise ValueError(f"degree={degree} is out of range; allowed 0..3")
    if sh.shape[1] < (degree + 1) ** 2:
        raise ValueError(f"sh has {sh.shape[1]} coefficients; degree {degree} needs {(degree + 1) ** 2}")
    out = _C0 * sh[:, 0]
    if degree == 0:
        return out
    x, y, z = (dirs[:, i : i + 1] for i in range(3))
    out = out - _C1 * y * sh[:, 1] + _C1 * z * sh[:, 2] - _C1 * x * sh[:, 3]
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (out + _C2[0] * xy * sh[:, 4] + _C2[1] * yz * sh[:, 5] + _C2[2] * (2 * zz - xx - yy) * sh[:, 6]
           + _C2[3] * xz * sh[:, 7] + _C2[4] * (xx - yy) * sh[:, 8])
    if degree == 2:
        return out
    return (out + _C3[0] * y * (3 * xx - yy) * sh[:, 9] + _C3[1] * xy * z * sh[:, 10]
            + _C3[2] * y * (4 * zz - xx - yy) * sh[:, 11] + _C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
            + _C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + _C3[5] * z * (xx - yy) * sh[:, 14]
            + _C3[6] * x * (xx - 3 * yy) * sh[:, 15])


def sh_colors(degree: int, sh: torch.Tensor, means: torch.Tensor, campos: torch.Tensor) -> torch.Tensor:
    """View-dependent RGB of each Gaussian seen from ``campos``: ``max(SH(d) + 0.5, 0)`` (3DGS)."""
    dirs = torch.nn.functional.normalize(means - campos[None], dim=-1)
    return (eval_sh(degree, sh, dirs) + 0.5).clamp_min(0.0)
