from dataclasses import replace

import pytest
import torch
from splat_helpers import orbit_cameras, random_scene

from anybudget.io import CheckpointMismatch
from anybudget.splat.budget import estimated_size
from anybudget.splat.codec import load_lgz
from anybudget.splat.distill import DistillConfig, distill_sh, pseudo_view
from anybudget.splat.losses import psnr, ssim
from anybudget.splat.pipeline import LightGaussianConfig, lightgaussian
from anybudget.splat.quantize import QuantizeConfig
from anybudget.splat.render_ref import render_reference
from anybudget.splat.scene import GaussianScene
from anybudget.splat.train import GaussianTrainer, TrainConfig, scene_extent, train


@pytest.fixture(scope="module")
def toy():
    """A 16x16, 4-view toy dataset rendered from a random degree-3 scene."""
    gt = random_scene(40, seed=1, spread=0.4)
    views = [replace(c, image=render_reference(gt, c).image.detach()) for c in orbit_cameras(4, size=16)]
    return gt, views


def test_ssim_and_psnr():
    a = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-5) and psnr(a, a) == float("inf")
    assert ssim(a, 1 - a).item() < 0.5


def test_training_smoke_densifies_and_improves(toy):
    _, views = toy
    g = torch.Generator().manual_seed(0)
    init = GaussianScene.from_points(torch.rand(30, 3, generator=g) - 0.5, torch.rand(30, 3, generator=g), scale=0.05)
    before = sum(psnr(render_reference(init, v).image, v.image) for v in views)
    cfg = TrainConfig(iterations=40, densify_from_iter=9, densify_until_iter=35, densification_interval=10,
                      densify_grad_threshold=1e-5, opacity_reset_interval=1000, sh_increase_interval=10)
    out = train(init, views, cfg, progress=False)
    after = sum(psnr(render_reference(out, v).image, v.image) for v in views)
    assert len(out) > 30 and after > before + 4


def test_densify_keeps_optimizer_in_step(toy):
    _, views = toy
    trainer = GaussianTrainer(random_scene(20, seed=2), TrainConfig(densify_grad_threshold=0.0), scene_extent(views))
    trainer.train_step(views[0], views[0].image)
    trainer.grad_accum += 1.0
    trainer.denom += 1.0
    n = trainer.params["means"].shape[0]
    trainer.densify_and_prune(None)
    assert trainer.params["means"].shape[0] > n
    for g in trainer.opt.param_groups:
        p = g["params"][0]
        assert p is trainer.params[g["name"]]
        st = trainer.opt.state[p]
        assert st["exp_avg"].shape == p.shape
    trainer.train_step(views[1], views[1].image)  # still runs
    # the trained scene is saved as the reference 3DGS writes it: nx ny nz columns, zeros
    from anybudget.splat.ply import ply_bytes

    scene = trainer.scene
    assert scene.normals.shape == (trainer.params["means"].shape[0], 3) and not scene.normals.any()
    header = ply_bytes(scene).split(b"end_header")[0]
    assert b"property float nx" in header and header.count(b"property float") == 62


def test_pseudo_view_moves_camera_only():
    cam = orbit_cameras(1)[0]
    pv = pseudo_view(cam, 0.05, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(pv.world_to_cam[:3, :3], cam.world_to_cam[:3, :3], atol=1e-6)
    d = (pv.position - cam.position).norm()
    assert 0 < d < 0.5 and pv.image is None


def test_distill_reduces_degree_and_tracks_teacher(toy):
    teacher, views = toy
    student = distill_sh(teacher, views, DistillConfig(iterations=15), progress=False)
    assert student.sh_degree == 2 and len(student) == len(teacher)
    assert torch.equal(student.opacity_logits, teacher.opacity_logits)  # opacity frozen
    truncated = teacher.with_sh_degree(2)
    err = lambda s: sum(((render_reference(s, v).image - v.image) ** 2).mean() for v in views)
    assert err(student) < err(truncated)
    with pytest.raises(ValueError, match="degree=3 exceeds"):
        distill_sh(truncated, views, DistillConfig(degree=3))


def test_pipeline_end_to_end_with_budget_and_resume(toy, tmp_path):
    gt, views = toy
    cfg = LightGaussianConfig(recovery_iterations=4, distill=DistillConfig(iterations=4),
                              quantize=QuantizeConfig(codebook_size=8, iterations=5, batch=64))
    res = lightgaussian(gt, views, config=cfg, workdir=tmp_path / "w", progress=False, keep_stages=True)
    assert len(res.quantized) == 40 - round(0.66 * 40) and res.scene.sh_degree == 2
    assert set(res.stages) == {"pruned", "distilled", "quantized"}
    res.save(tmp_path / "s.lgz")
    assert load_lgz(tmp_path / "s.lgz").to_scene().equal(res.scene)
    assert (tmp_path / "w" / "distilled.ply").exists()
    again = lightgaussian(gt, views, config=cfg, workdir=tmp_path / "w", progress=False)  # resumes
    assert again.scene.equal(res.scene)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "w").iterdir()}
    with pytest.raises(CheckpointMismatch, match=r"--workdir .*\(prune_ratio: 0\.66 there, 0\.5 now\)"):
        lightgaussian(gt, views, config=replace(cfg, prune_ratio=0.5), workdir=tmp_path / "w", progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "w").iterdir()} == before  # stages kept as they were
    big = random_scene(400, seed=3, spread=0.4)
    target = estimated_size(400, 2, 0.66, 0.6, 8) - 300
    fit = lightgaussian(big, views, budget=f"size={target}", config=replace(cfg, recovery_iterations=0), progress=False)
    assert fit.plan.prune_ratio > 0.66 and fit.save(tmp_path / "b.lgz") <= target
    with pytest.raises(ValueError, match="prune_ratio=1.2"):
        LightGaussianConfig(prune_ratio=1.2)


def test_training_resumes_bit_exactly_from_checkpoint(toy, tmp_path):
    _, views = toy
    g = torch.Generator().manual_seed(0)
    init = GaussianScene.from_points(torch.rand(20, 3, generator=g) - 0.5, torch.rand(20, 3, generator=g), scale=0.05)
    cfg = TrainConfig(iterations=12, densify_from_iter=3, densify_until_iter=10, densification_interval=4,
                      densify_grad_threshold=1e-5, opacity_reset_interval=8, sh_increase_interval=4)
    straight = train(init, views, cfg, progress=False)

    def stop(trainer):
        if trainer.step == 7:
            raise KeyboardInterrupt

    ck = tmp_path / "ck.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(init, views, cfg, progress=False, checkpoint=ck, checkpoint_every=5, callback=stop)
    with pytest.raises(CheckpointMismatch, match=r"\(lambda_dssim: 0\.2 there, 0\.5 now\)"):
        train(init, views, replace(cfg, lambda_dssim=0.5), progress=False, checkpoint=ck, checkpoint_every=5)
    resumed = train(init, views, cfg, progress=False, checkpoint=ck, checkpoint_every=5)
    assert len(resumed) == len(straight) and torch.equal(resumed.means, straight.means)
    assert torch.equal(resumed.sh_rest, straight.sh_rest) and torch.equal(resumed.opacity_logits, straight.opacity_logits)


def test_initial_scene_from_points_or_random(tmp_path, toy):
    from anybudget.splat.dataset import write_points3d
    from anybudget.splat.train import initial_scene

    _, views = toy
    rnd = initial_scene(None, views, random_points=50, sh_degree=1)
    assert len(rnd) == 50 and rnd.sh_degree == 1 and rnd.means.abs().max() <= 1.3
    write_points3d(tmp_path / "points3D.txt", torch.rand(10, 3), torch.rand(10, 3))
    pts = initial_scene(tmp_path, views)
    assert len(pts) == 10 and torch.allclose(pts.opacities, torch.full((10,), 0.1))
