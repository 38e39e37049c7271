"""Reference 3DGS rasterizer in plain PyTorch: differentiable, any device, tile-based like CUDA.

Kerbl et al. 2023, Sec. 4 and 6: EWA projection Sigma' = J W Sigma W^T J^T (+0.3 I low-pass),
16x16 tiles holding every Gaussian whose 3-sigma square touches them, front-to-back per pixel
``C = sum_j c_j a_j T_j`` with ``a_j = min(0.99, o_j exp(-power))``, skipping ``a_j < 1/255`` and
stopping before ``T`` would fall below 1e-4. The same pass accumulates, per Gaussian, the
LightGaussian significance terms (``sum o_j T_j``, ``sum a_j T_j``, hit count) over the pixels it
hits. Tiles are batched (padded to the longest list in a batch) so that memory stays below
``max_elements`` floats per intermediate; fine for small scenes on a CPU, usable on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from anybudget.splat.cameras import Camera
from anybudget.splat.scene import GaussianScene
from anybudget.splat.sh import sh_colors

__all__ = ["ALPHA_MIN", "TILE", "T_MIN", "RenderOutput", "project", "render_reference"]

TILE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4


@dataclass
class RenderOutput:
    """image ``(H, W, 3)``; alpha ``(H, W)``; means2d ``(N, 2)`` pixels (its gradient drives 3DGS
    densification); radii ``(N,)`` pixels (0 = culled); the per-Gaussian sums over hit pixels when
    requested: opacity_t ``sum o_j T_j``, alpha_t ``sum a_j T_j``, hits (count)."""

    image: torch.Tensor
    alpha: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor
    opacity_t: torch.Tensor | None = None
    alpha_t: torch.Tensor | None = None
    hits: torch.Tensor | None = None


def _quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))


def project(scene: GaussianScene, cam: Camera, near: float = 0.2, eps2d: float = 0.3):
    """EWA splatting of every Gaussian: ``means2d (N, 2)``, ``conics (N, 3)`` = (a, b, c) of the
    inverse 2D covariance, ``depth (N,)``, ``radii (N,)`` (int, 0 where culled)."""
    w2c = cam.world_to_cam.to(scene.means)
    rot, t = w2c[:3, :3], w2c[:3, 3]
    p = scene.means @ rot.T + t
    z = p[:, 2]
    in_front = z > near
    zs = torch.where(in_front, z, torch.ones_like(z))
    lim_x, lim_y = 1.3 * 0.5 * cam.width / cam.fx, 1.3 * 0.5 * cam.height / cam.fy
    tx = (p[:, 0] / zs).clamp(-lim_x, lim_x) * zs  # 3DGS clamps the Jacobian's point to 1.3x FOV
    ty = (p[:, 1] / zs).clamp(-lim_y, lim_y) * zs
    zero = torch.zeros_like(zs)
    jac = torch.stack([
        cam.fx / zs, zero, -cam.fx * tx / zs**2,
        zero, cam.fy / zs, -cam.fy * ty / zs**2,
    ], dim=-1).reshape(-1, 2, 3)
    m = _quat_to_rotmat(scene.quats) * scene.scales[:, None, :]  # R S
    tw = jac @ rot
    cov2 = tw @ (m @ m.transpose(1, 2)) @ tw.transpose(1, 2)
    a, b, c = cov2[:, 0, 0] + eps2d, cov2[:, 0, 1], cov2[:, 1, 1] + eps2d
    det = a * c - b * b
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.1))
    means2d = torch.stack([cam.fx * p[:, 0] / zs + cam.cx, cam.fy * p[:, 1] / zs + cam.cy], dim=-1)
    # a Gaussian whose covariance or projection is not finite (huge scales far from the camera) is
    # culled, as gsplat's projection does; its radius would otherwise be an undefined integer
    finite = torch.isfinite(lam) & torch.isfinite(det) & torch.isfinite(means2d).all(-1)
    ok = in_front & (det > 0) & finite
    det_s = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)
    # radii are capped (2^30 px) before the integer cast, which is undefined for huge floats
    radii = torch.ceil(3 * torch.sqrt(torch.where(ok, lam.detach(), torch.zeros_like(lam)))).clamp(max=float(1 << 30))
    return means2d, conics, z, radii.to(torch.int64)


def _tile_pairs(means2d, radii, depth, width, height):
    """(tile id, Gaussian id) for every tile a Gaussian's 3-sigma square touches, sorted by tile,
    then front to back."""
    gx, gy = math.ceil(width / TILE), math.ceil(height / TILE)
    m, r = means2d.detach(), radii.to(means2d.dtype)  # project() leaves radius 0 where means2d is not finite
    x0 = ((m[:, 0] - r) / TILE).floor().clamp(0, gx).long()
    x1 = ((m[:, 0] + r) / TILE).ceil().clamp(0, gx).long()
    y0 = ((m[:, 1] - r) / TILE).floor().clamp(0, gy).long()
    y1 = ((m[:, 1] + r) / TILE).ceil().clamp(0, gy).long()
    nx, ny = (x1 - x0) * (radii > 0), (y1 - y0) * (radii > 0)
    per = nx * ny
    gid = torch.repeat_interleave(torch.arange(len(per), device=m.device), per)
    if gid.numel() == 0:
        return gid, gid, gx, gy
    first = torch.cumsum(per, 0) - per
    local = torch.arange(gid.numel(), device=m.device) - first[gid]
    tx = x0[gid] + local % nx[gid]
    ty = y0[gid] + torch.div(local, nx[gid], rounding_mode="floor")
    tile = ty * gx + tx
    rank = torch.empty(len(depth), dtype=torch.long, device=m.device)  # depth order of every Gaussian
    rank[torch.argsort(depth.detach(), stable=True)] = torch.arange(len(depth), device=m.device)
    order = torch.argsort(tile * len(depth) + rank[gid])
    return tile[order], gid[order], gx, gy


def render_reference(scene: GaussianScene, cam: Camera, background=None, sh_degree: int | None = None,
                     stats: bool = False, near: float = 0.2, max_elements: int | None = None) -> RenderOutput:
    """Render ``scene`` from ``cam``; differentiable w.r.t. every scene tensor. ``max_elements``
    caps the floats of one (tiles x pixels x Gaussians) intermediate (2^22 on CPU, 2^26 on CUDA)."""
    dev, n = scene.means.device, len(scene)
    if max_elements is None:
        max_elements = 1 << 26 if dev.type == "cuda" else 1 << 22
    deg = scene.sh_degree if sh_degree is None else min(sh_degree, scene.sh_degree)
    bg = torch.zeros(3, device=dev) if background is None else torch.as_tensor(background, dtype=torch.float32, device=dev)
    means2d, conics, depth, radii = project(scene, cam, near)
    if means2d.requires_grad:
        means2d.retain_grad()  # its gradient is the 3DGS densification signal
    colors = sh_colors(deg, scene.sh, scene.means, cam.position.to(dev))
    opac = scene.opacities
    H, W = cam.height, cam.width
    tiles, gids, gx, gy = _tile_pairs(means2d, radii, depth, W, H)
    pad = lambda t: torch.cat([t, torch.zeros_like(t[:1])])
    m2, con, col, op = pad(means2d), pad(conics), pad(colors), pad(opac)
    img = bg.expand(H * W, 3)
    alpha_img = torch.zeros(H * W, device=dev)
    acc = [torch.zeros(n + 1, device=dev) for _ in range(3)] if stats else None
    counts = torch.bincount(tiles, minlength=gx * gy)
    starts = torch.cumsum(counts, 0) - counts
    live = torch.nonzero(counts).flatten()
    live = live[torch.argsort(counts[live])]
    lx = torch.arange(TILE * TILE, device=dev) % TILE
    ly = torch.arange(TILE * TILE, device=dev) // TILE
    pix_vals, alpha_vals, pix_ids = [], [], []
    i = 0
    while i < len(live):
        longest = int(counts[live[min(len(live) - 1, i)]])
        step = max(1, max_elements // (TILE * TILE * max(longest, 1)))
        chunk = live[i : i + step]
        L = int(counts[chunk].max())
        i += len(chunk)
        slot = torch.arange(L, device=dev)
        valid = slot[None] < counts[chunk][:, None]
        idx = torch.where(valid, gids[(starts[chunk][:, None] + slot[None]).clamp(max=max(len(gids) - 1, 0))],
                          torch.full_like(valid, n, dtype=torch.long))
        px = (chunk % gx)[:, None] * TILE + lx[None]  # (B, P)
        py = (chunk // gx)[:, None] * TILE + ly[None]
        inside = (px < W) & (py < H)
        dx = (px[:, :, None] + 0.5) - m2[idx][:, None, :, 0]  # (B, P, L)
        dy = (py[:, :, None] + 0.5) - m2[idx][:, None, :, 1]
        cg = con[idx][:, None]
        power = -0.5 * (cg[..., 0] * dx * dx + cg[..., 2] * dy * dy) - cg[..., 1] * dx * dy
        alpha = (op[idx][:, None] * torch.exp(power)).clamp(max=ALPHA_MAX)
        hit = valid[:, None] & inside[:, :, None] & (power <= 0) & (alpha >= ALPHA_MIN)
        alpha = torch.where(hit, alpha, torch.zeros_like(alpha))
        one_minus = 1 - alpha
        t_after = torch.cumprod(one_minus, dim=-1)
        t_before = torch.cat([torch.ones_like(t_after[..., :1]), t_after[..., :-1]], dim=-1)
        keep = hit & (t_after >= T_MIN)
        w = torch.where(keep, alpha * t_before, torch.zeros_like(alpha))
        rgb = torch.einsum("bpl,blc->bpc", w, col[idx])
        t_final = torch.where(keep, one_minus, torch.ones_like(one_minus)).prod(-1)
        pid = (py * W + px)[inside]
        pix_vals.append((rgb + t_final[..., None] * bg)[inside])
        alpha_vals.append((1 - t_final)[inside])
        pix_ids.append(pid)
        if stats:
            with torch.no_grad():
                flat = idx.flatten()
                kf = keep.float()
                acc[0].index_add_(0, flat, (op[idx][:, None] * t_before * kf).sum(1).flatten())
                acc[1].index_add_(0, flat, (w * kf).sum(1).flatten())
                acc[2].index_add_(0, flat, kf.sum(1).flatten())
    if pix_ids:
        pid = torch.cat(pix_ids)
        img = img.index_put((pid,), torch.cat(pix_vals))
        alpha_img = alpha_img.index_put((pid,), torch.cat(alpha_vals))
    out = RenderOutput(img.reshape(H, W, 3), alpha_img.reshape(H, W), means2d, radii)
    if stats:
        out.opacity_t, out.alpha_t, out.hits = (a[:n] for a in acc)
    return out
