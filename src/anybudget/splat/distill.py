"""SH distillation (LightGaussian Sec. 3.3): a student with SH degree 2 (27 instead of 48 colour
floats per Gaussian) learns to reproduce the degree-3 teacher's renders, of the training views and
of pseudo views: on two of every three steps the training camera is moved by Gaussian noise
(translation sigma 0.05, rotation sigma 0 in the released script) and the teacher's render of that
pseudo view is the target. Loss (1 - 0.2) L1 + 0.2 (1 - SSIM); opacity frozen, the rest trained
("--enable_covariance"), 10,000 steps in the paper's schedule. Not reproduced: the released
script's ExponentialLR (gamma 0.9) on the student optimiser; here the 3DGS rates continue from
step 30,000 (positions on their decayed schedule), which the docstring of ``distill_sh`` records.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from anybudget.splat.cameras import Camera
from anybudget.splat.render import render
from anybudget.splat.train import GaussianTrainer, TrainConfig, scene_extent

__all__ = ["DistillConfig", "distill_sh", "pseudo_view"]


@dataclass(frozen=True)
class DistillConfig:
    """Args:
        degree: student SH degree (2).
        iterations: distillation steps (10,000).
        pseudo_views: use jittered pseudo views (True).
        pseudo_every: a step is a real training view when ``step % pseudo_every == 0`` (3).
        sigma_t: translation noise of a pseudo view, scene units (0.05).
        sigma_r: rotation noise in radians (0.0 in the released script; the function default 0.01).
        lambda_dssim: 0.2.
        train_geometry: also train means, scales, rotations (True); opacity stays frozen.
        seed: 0.
    """

    degree: int = 2
    iterations: int = 10_000
    pseudo_views: bool = True
    pseudo_every: int = 3
    sigma_t: float = 0.05
    sigma_r: float = 0.0
    lambda_dssim: float = 0.2
    train_geometry: bool = True
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.degree <= 3:
            raise ValueError(f"degree={self.degree} is out of range; allowed 0..3")
        if self.pseudo_every < 1:
            raise ValueError(f"pseudo_every={self.pseudo_every} must be >= 1")


def _axis_angle(v: torch.Tensor) -> torch.Tensor:
    theta = v.norm()
    if theta < 1e-12:
        return torch.eye(3)
    k = v / theta
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return torch.eye(3) + torch.sin(theta) * kx + (1 - torch.cos(theta)) * kx @ kx


def pseudo_view(cam: Camera, sigma_t: float, sigma_r: float, gen: torch.Generator) -> Camera:
    """``cam`` moved by N(0, sigma_t^2) in position and turned by N(0, sigma_r^2) about each axis."""
    c2w = torch.linalg.inv(cam.world_to_cam.double().cpu())
    c2w[:3, 3] += torch.randn(3, generator=gen, dtype=torch.float64) * sigma_t
    if sigma_r > 0:
        c2w[:3, :3] = _axis_angle(torch.randn(3, generator=gen, dtype=torch.float64) * sigma_r) @ c2w[:3, :3]
    return cam.with_pose(torch.linalg.inv(c2w).float().to(cam.world_to_cam.device))


def distill_sh(teacher, views: list[Camera], config: DistillConfig = DistillConfig(),
               background=(0.0, 0.0, 0.0), backend: str = "auto", progress: bool = True):
    """A degree-``config.degree`` student distilled from ``teacher`` on ``views`` (images unused)."""
    if not views:
        raise ValueError("views is empty; distillation needs the training cameras")
    if config.degree > teacher.sh_degree:
        raise ValueError(f"degree={config.degree} exceeds the teacher's SH degree {teacher.sh_degree}")
    teacher = teacher.detach()
    student = teacher.with_sh_degree(config.degree)
    trainable = ("sh_dc", "sh_rest") + (("means", "log_scales", "quats") if config.train_geometry else ())
    cfg = TrainConfig(densify=False, sh_increase_interval=0, sh_degree=config.degree, background=tuple(background),
                      lambda_dssim=config.lambda_dssim, position_lr_max_steps=40_000, seed=config.seed)
    trainer = GaussianTrainer(student, cfg, scene_extent(views), trainable=trainable, start_step=30_000)
    gen = torch.Generator().manual_seed(config.seed)
    dev = teacher.device
    cams = [v.to(dev) for v in views]
    for step in tqdm(range(config.iterations), desc="distill sh", disable=not progress):
        cam = cams[int(torch.randint(len(cams), (1,), generator=gen))]
        if config.pseudo_views and step % config.pseudo_every != 0:
            cam = pseudo_view(cam, config.sigma_t, config.sigma_r, gen)
        with torch.no_grad():
            target = render(teacher, cam, background, backend=backend).image
        trainer.train_step(replace(cam, image=None), target, backend)
    return trainer.scene.detach()
