"""3D Gaussian Splatting optimisation (Kerbl et al., SIGGRAPH 2023, Sec. 5 and 6.1): Adam on all
attributes, L1 + 0.2 D-SSIM, SH degree raised every 1,000 steps, adaptive density control (clone
small / split large Gaussians whose view-space positional gradient exceeds 2e-4, prune transparent
ones, reset opacities every 3,000 steps). Renders with gsplat on CUDA when installed, else with the
PyTorch reference (a few hundred Gaussians at 32x32 train on a CPU in seconds).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from anybudget.splat.cameras import Camera
from anybudget.splat.losses import photometric_loss
from anybudget.splat.render import render
from anybudget.splat.render_ref import _quat_to_rotmat
from anybudget.splat.scene import GaussianScene

__all__ = ["GaussianTrainer", "TrainConfig", "finetune", "scene_extent", "train"]

PARAMS = ("means", "sh_dc", "sh_rest", "opacity_logits", "log_scales", "quats")


@dataclass(frozen=True)
class TrainConfig:
    """3DGS defaults (``arguments/__init__.py`` of the reference code).

    Args:
        iterations: optimisation steps (30,000).
        position_lr_init / position_lr_final / position_lr_delay_mult / position_lr_max_steps:
            log-linear decay of the mean's learning rate, scaled by the scene extent.
        feature_lr: SH degree-0 rate (2.5e-3); higher bands use feature_lr / 20.
        opacity_lr, scaling_lr, rotation_lr: 0.05, 5e-3, 1e-3.
        lambda_dssim: weight of (1 - SSIM) in the loss (0.2).
        sh_degree: final SH degree (3); one band more every ``sh_increase_interval`` (1,000) steps.
        densify: adaptive density control on/off.
        densify_from_iter / densify_until_iter / densification_interval: 500 / 15,000 / 100.
        opacity_reset_interval: 3,000.
        densify_grad_threshold: 2e-4 (norm of the NDC-space positional gradient, averaged).
        percent_dense: 0.01 of the extent separates "small" (clone) from "large" (split).
        min_opacity: 0.005, prune below.
        max_screen_size: 20 px, prune larger (after the first opacity reset).
        background: RGB of the background.
        seed: view order and split samples.
    """

    iterations: int = 30_000
    position_lr_init: float = 1.6e-4
    position_lr_final: float = 1.6e-6
    position_lr_delay_mult: float = 0.01
    position_lr_max_steps: int = 30_000
    feature_lr: float = 2.5e-3
    opacity_lr: float = 0.05
    scaling_lr: float = 5e-3
    rotation_lr: float = 1e-3
    lambda_dssim: float = 0.2
    sh_degree: int = 3
    sh_increase_interval: int = 1000
    densify: bool = True
    densify_from_iter: int = 500
    densify_until_iter: int = 15_000
    densification_interval: int = 100
    opacity_reset_interval: int = 3000
    densify_grad_threshold: float = 2e-4
    percent_dense: float = 0.01
    min_opacity: float = 0.005
    max_screen_size: int = 20
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise ValueError(f"{f.name}={v} must be >= 0")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree={self.sh_degree} is out of range; allowed 0..3")


def scene_extent(views: list[Camera]) -> float:
    """1.1 x the largest distance of a camera centre from their mean (3DGS ``getNerfppNorm``)."""
    centres = torch.stack([c.position for c in views])
    return 1.1 * float((centres - centres.mean(0)).norm(dim=-1).max().clamp_min(1e-6))


def _position_lr(cfg: TrainConfig, step: int, extent: float) -> float:
    if step < 0 or cfg.position_lr_max_steps == 0:
        return 0.0
    t = min(step / cfg.position_lr_max_steps, 1.0)
    lr = math.exp((1 - t) * math.log(cfg.position_lr_init) + t * math.log(cfg.position_lr_final))
    return extent * lr  # delay_mult only matters with a warm-up (0 steps in 3DGS)


class GaussianTrainer:
    """Adam over a scene's tensors, with the optimiser state kept in step through densification."""

    def __init__(self, scene: GaussianScene, cfg: TrainConfig, extent: float, trainable=PARAMS,
                 start_step: int = 0):
        self.cfg, self.extent, self.step = cfg, extent, start_step
        self.trainable = tuple(trainable)
        self.params = {k: torch.nn.Parameter(getattr(scene, k).detach().clone()) for k in PARAMS}
        self.normals = scene.normals
        lrs = {"means": _position_lr(cfg, start_step, extent), "sh_dc": cfg.feature_lr,
               "sh_rest": cfg.feature_lr / 20, "opacity_logits": cfg.opacity_lr,
               "log_scales": cfg.scaling_lr, "quats": cfg.rotation_lr}
        self.opt = torch.optim.Adam([{"params": [self.params[k]], "lr": lrs[k], "name": k}
                                     for k in self.trainable], lr=0.0, eps=1e-15)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self._reset_stats()

    @property
    def scene(self) -> GaussianScene:
        means = self.params["means"]
        n = means.shape[0]
        normals = self.normals if self.normals is not None and self.normals.shape[0] == n else None
        if normals is None:  # the reference save_ply writes nx ny nz = 0: the file a 3DGS user has
            normals = torch.zeros(n, 3, dtype=means.dtype, device=means.device)
        return GaussianScene(**{k: self.params[k] for k in PARAMS}, normals=normals)

    def _reset_stats(self):
        n, dev = self.params["means"].shape[0], self.params["means"].device
        self.grad_accum = torch.zeros(n, device=dev)
        self.denom = torch.zeros(n, device=dev)
        self.max_radii = torch.zeros(n, device=dev)

    # ---- one step ----------------------------------------------------------------------------
    def train_step(self, cam: Camera, target: torch.Tensor, backend: str = "auto",
                   target_is_render: bool = False) -> float:
        cfg = self.cfg
        for g in self.opt.param_groups:
            if g["name"] == "means":
                g["lr"] = _position_lr(cfg, self.step, self.extent)
        degree = min(cfg.sh_degree, self.step // cfg.sh_increase_interval) if cfg.sh_increase_interval else cfg.sh_degree
        out = render(self.scene, cam, cfg.background, degree, backend)
        loss = photometric_loss(out.image, target, cfg.lambda_dssim)
        loss.backward()
        self.step += 1
        with torch.no_grad():
            if cfg.densify and self.step < cfg.densify_until_iter and out.means2d.grad is not None:
                self._accumulate(out, cam)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if cfg.densify and self.step < cfg.densify_until_iter:
                if self.step > cfg.densify_from_iter and self.step % cfg.densification_interval == 0:
                    size = cfg.max_screen_size if self.step > cfg.opacity_reset_interval else None
                    self.densify_and_prune(size)
                if cfg.opacity_reset_interval and self.step % cfg.opacity_reset_interval == 0:
                    self.reset_opacity()
        return float(loss.detach())

    def _accumulate(self, out, cam: Camera):
        grad = out.means2d.grad.reshape(-1, 2) * torch.tensor([cam.width / 2, cam.height / 2], device=self.grad_accum.device)
        radii = out.radii.reshape(-1).to(self.grad_accum.device)
        vis = radii > 0
        self.grad_accum[vis] += grad[vis].norm(dim=-1)
        self.denom[vis] += 1
        self.max_radii[vis] = torch.maximum(self.max_radii[vis], radii[vis].float())

    # ---- adaptive density control ---------------------------------------------------------------
    def _edit(self, keep: torch.Tensor | None = None, new: dict | None = None):
        """Prune rows (``keep`` mask) and/or append rows (``new``) in params and Adam state."""
        for k in PARAMS:
            p = self.params[k]
            data = p.data if keep is None else p.data[keep]
            if new is not None:
                data = torch.cat([data, new[k]])
            q = torch.nn.Parameter(data)
            for g in self.opt.param_groups:
                if g["params"][0] is p:
                    st = self.opt.state.pop(p, None)
                    if st:
                        for s in ("exp_avg", "exp_avg_sq"):
                            v = st[s] if keep is None else st[s][keep]
                            if new is not None:
                                v = torch.cat([v, torch.zeros_like(new[k])])
                            st[s] = v
                        self.opt.state[q] = st
                    g["params"][0] = q
            self.params[k] = q
        if self.normals is not None and (keep is not None or new is not None):
            self.normals = None  # normals are not tracked through densification (3DGS writes zeros)

    def densify_and_prune(self, max_screen_size: int | None):
        cfg, ext = self.cfg, self.extent
        grads = torch.nan_to_num(self.grad_accum / self.denom)
        scales = torch.exp(self.params["log_scales"].data)
        big = scales.max(-1).values > cfg.percent_dense * ext
        hot = grads >= cfg.densify_grad_threshold
        clone = hot & ~big
        split = hot & big
        n0 = self.params["means"].shape[0]
        news = []
        if clone.any():
            news.append({k: self.params[k].data[clone].clone() for k in PARAMS})
        if split.any():
            idx = split.nonzero().flatten().repeat(2)
            std = scales[idx]
            samples = torch.randn(std.shape, generator=self.gen).to(std.device) * std
            rot = _quat_to_rotmat(self.params["quats"].data[idx])
            d = {k: self.params[k].data[idx].clone() for k in PARAMS}
            d["means"] = (rot @ samples[..., None])[..., 0] + self.params["means"].data[idx]
            d["log_scales"] = torch.log(std / (0.8 * 2))
            news.append(d)
        if news:
            self._edit(new={k: torch.cat([d[k] for d in news]) for k in PARAMS})
        n = self.params["means"].shape[0]
        keep = torch.ones(n, dtype=torch.bool, device=self.params["means"].device)
        keep[:n0] &= ~split  # the split originals go
        opac = torch.sigmoid(self.params["opacity_logits"].data)
        keep &= opac >= cfg.min_opacity
        if max_screen_size is not None:
            radii = torch.cat([self.max_radii, torch.zeros(n - n0, device=keep.device)])
            keep &= radii <= max_screen_size
            keep &= torch.exp(self.params["log_scales"].data).max(-1).values <= 0.1 * ext
        self._edit(keep=keep)
        self._reset_stats()

    # ---- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path, order: list[int], config: dict | None = None) -> None:
        """Everything a bit-exact resume needs (params, Adam moments, statistics, RNG, view order)
        in one safetensors file; ``config`` (the run's settings) is stored in its metadata."""
        from safetensors.torch import save_file

        from anybudget.io import atomic_path

        t = {f"param.{k}": v.detach().contiguous() for k, v in self.params.items()}
        meta = {"step": str(self.step), "order": json.dumps(order)}
        if config is not None:
            meta["config"] = json.dumps(config)
        for k, p in self.params.items():
            st = self.opt.state.get(p)
            if st:
                t[f"exp_avg.{k}"], t[f"exp_avg_sq.{k}"] = st["exp_avg"], st["exp_avg_sq"]
                meta[f"adam_step.{k}"] = str(float(st["step"]))
        t.update(grad_accum=self.grad_accum, denom=self.denom, max_radii=self.max_radii,
                 rng=self.gen.get_state())
        with atomic_path(path) as tmp:
            save_file({k: v.cpu().contiguous() for k, v in t.items()}, str(tmp), metadata=meta)

    def load_checkpoint(self, path, config: dict | None = None) -> list[int]:
        """Restore a :meth:`save_checkpoint` file; returns the pending view order.

        With ``config``, a file written with another one is refused before anything is restored
        (:class:`anybudget.io.CheckpointMismatch` naming the keys)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        from anybudget.io import check_checkpoint_config

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        if config is not None:
            stored = json.loads(meta["config"]) if "config" in meta else None
            check_checkpoint_config(path, stored, config, "--checkpoint",
                                    "use another --checkpoint, or delete it to start over")
        t = load_file(str(path))
        dev = self.params["means"].device
        for k in PARAMS:
            q = torch.nn.Parameter(t[f"param.{k}"].to(dev))
            for g in self.opt.param_groups:
                if g["params"][0] is self.params[k]:
                    self.opt.state.pop(self.params[k], None)
                    g["params"][0] = q
                    if f"exp_avg.{k}" in t:
                        self.opt.state[q] = {"step": torch.tensor(float(meta[f"adam_step.{k}"])),
                                             "exp_avg": t[f"exp_avg.{k}"].to(dev),
                                             "exp_avg_sq": t[f"exp_avg_sq.{k}"].to(dev)}
            self.params[k] = q
        self.normals = None
        self.grad_accum, self.denom, self.max_radii = (t[k].to(dev) for k in ("grad_accum", "denom", "max_radii"))
        self.gen.set_state(t["rng"])
        self.step = int(meta["step"])
        return json.loads(meta["order"])

    def reset_opacity(self):
        logits = self.params["opacity_logits"].data
        cap = math.log(0.01 / 0.99)
        new = torch.minimum(logits, torch.full_like(logits, cap))
        self.params["opacity_logits"].data.copy_(new)
        st = self.opt.state.get(self.params["opacity_logits"])
        if st:  # 3DGS replaces the tensor in the optimiser with fresh (zero) moments
            st["exp_avg"].zero_()
            st["exp_avg_sq"].zero_()


def train(scene: GaussianScene, views: list[Camera], cfg: TrainConfig = TrainConfig(),
          backend: str = "auto", progress: bool = True, callback=None, checkpoint=None,
          checkpoint_every: int = 1000) -> GaussianScene:
    """Optimise ``scene`` (e.g. :meth:`GaussianScene.from_points`) on ``views`` (images required).

    ``callback(trainer)`` runs after every step; returning True stops training there.
    With ``checkpoint`` (a file path) the full training state is saved every ``checkpoint_every``
    steps and a later call with the same path resumes from it exactly (on the same device). The
    file stores the configuration (all of ``cfg`` but ``iterations``, which may grow, and the view
    count); a call with another one is refused, naming the keys.
    """
    _check_views(views)
    trainer = GaussianTrainer(scene, cfg, scene_extent(views))
    dev = scene.device
    targets = [v.image.to(dev) for v in views]
    cams = [v.to(dev) for v in views]
    order: list[int] = []
    run = {**{k: v for k, v in asdict(cfg).items() if k != "iterations"}, "views": len(views),
           "initial_gaussians": len(scene)}
    if checkpoint is not None and Path(checkpoint).exists():
        order = trainer.load_checkpoint(checkpoint, run)
    bar = tqdm(range(trainer.step, cfg.iterations), desc="3dgs train", disable=not progress,
               initial=trainer.step, total=cfg.iterations)
    for it in bar:
        if not order:
            order = torch.randperm(len(views), generator=trainer.gen).tolist()
        i = order.pop()
        loss = trainer.train_step(cams[i], targets[i], backend)
        if it % 100 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", n=trainer.params["means"].shape[0])
        if checkpoint is not None and trainer.step % checkpoint_every == 0:
            trainer.save_checkpoint(checkpoint, order, run)
        if callback is not None and callback(trainer):
            break  # the callback asked to stop (e.g. a time budget)
    return trainer.scene.detach()


def finetune(scene: GaussianScene, views: list[Camera], iterations: int, cfg: TrainConfig = TrainConfig(),
             start_step: int = 30_000, backend: str = "auto", progress: bool = True) -> GaussianScene:
    """Continue optimising without densification (LightGaussian's recovery after pruning: from
    step 30,000 to 35,000 with the position rate's schedule stretched to the new end)."""
    _check_views(views)
    from dataclasses import replace

    c = replace(cfg, densify=False, position_lr_max_steps=start_step + iterations, sh_increase_interval=0,
                sh_degree=scene.sh_degree)
    trainer = GaussianTrainer(scene, c, scene_extent(views), start_step=start_step)
    dev = scene.device
    targets = [v.image.to(dev) for v in views]
    cams = [v.to(dev) for v in views]
    order: list[int] = []
    for _ in tqdm(range(iterations), desc="recover", disable=not progress):
        if not order:
            order = torch.randperm(len(views), generator=trainer.gen).tolist()
        i = order.pop()
        trainer.train_step(cams[i], targets[i], backend)
    return trainer.scene.detach()


def initial_scene(folder, views: list[Camera], random_points: int = 100_000, sh_degree: int = 3,
                  seed: int = 0) -> GaussianScene:
    """3DGS initialisation: the dataset's ``points3D.txt`` (SfM points or, for our synthetic scenes,
    surface samples) with colours; without one, ``random_points`` uniform points in a cube of half
    side 1.3 (the NeRF-synthetic practice of 3DGS) with random colours. Scales from the 3 nearest
    neighbours, opacity 0.1."""
    from anybudget.splat.cameras import find_points, read_colmap_points
    from anybudget.splat.scene import knn_scale

    sparse = find_points(folder) if folder is not None else None
    if sparse is not None:
        pts, cols = read_colmap_points(sparse)
    else:
        g = torch.Generator().manual_seed(seed)
        pts = torch.rand(random_points, 3, generator=g) * 2.6 - 1.3
        cols = torch.rand(random_points, 3, generator=g)
    if len(pts) < 4:
        raise ValueError(f"{len(pts)} initial points; 3DGS needs at least 4")
    from anybudget.measure import default_device

    dev = default_device()
    scale = knn_scale(pts.to(dev)).cpu()
    return GaussianScene.from_points(pts, cols, sh_degree, scale=scale)


def _check_views(views):
    if not views:
        raise ValueError("views is empty; training needs at least one camera with an image")
    missing = [v.name for v in views if v.image is None]
    if missing:
        raise ValueError(f"views {missing[:3]} have no image; load them with images=True")
