import math

import pytest
import torch

from anybudget.splat.cameras import Camera
from anybudget.splat.prune import prune, prune_mask
from anybudget.splat.scene import GaussianScene
from anybudget.splat.significance import (
    SignificanceConfig,
    global_significance,
    hit_statistics,
    significance,
    volume_factor,
)

F, SIZE = 20.0, 16


def two_gaussians():
    """Two isotropic Gaussians on the z axis (z = -0.5 and +0.5), scales 0.3 and 0.2."""
    s = torch.tensor([0.3, 0.2])
    o = torch.tensor([0.6, 0.9])
    return GaussianScene(torch.tensor([[0.0, 0, -0.5], [0.0, 0, 0.5]]), torch.log(s)[:, None].repeat(1, 3),
                         torch.tensor([[1.0, 0, 0, 0]] * 2), torch.logit(o), torch.zeros(2, 3),
                         torch.zeros(2, 0, 3)), s, o


def cams():
    front = torch.eye(4)
    front[2, 3] = 4.0  # camera at z = -4 looking at +z: sees Gaussian 0 (z=-0.5) first
    back = torch.diag(torch.tensor([-1.0, 1, -1, 1]))
    back[2, 3] = 4.0  # camera at z = +4 looking at -z: sees Gaussian 1 first
    return [Camera(front, F, F, SIZE / 2, SIZE / 2, SIZE, SIZE), Camera(back, F, F, SIZE / 2, SIZE / 2, SIZE, SIZE)]


def hand_opacity_t(s, o):
    """The sum by hand: for an isotropic Gaussian on the axis at depth z, the 2D variance is
    (F s / z)^2 + 0.3 and alpha at pixel offset r is min(0.99, o exp(-r^2 / (2 var)))."""
    total = [0.0, 0.0]
    for order, depths in (((0, 1), (3.5, 4.5)), ((1, 0), (3.5, 4.5))):
        var = {j: (F * float(s[j]) / d) ** 2 + 0.3 for j, d in zip(order, depths)}
        for py in range(SIZE):
            for px in range(SIZE):
                r2 = (px + 0.5 - SIZE / 2) ** 2 + (py + 0.5 - SIZE / 2) ** 2
                T = 1.0
                for j in order:
                    a = min(0.99, float(o[j]) * math.exp(-r2 / (2 * var[j])))
                    if a < 1 / 255:
                        continue
                    if T * (1 - a) < 1e-4:
                        break
                    total[j] += float(o[j]) * T
                    T *= 1 - a
    return torch.tensor(total, dtype=torch.float64)


def test_two_gaussian_significance_equals_hand_computation():
    scene, s, o = two_gaussians()
    stats = hit_statistics(scene, cams())
    want = hand_opacity_t(s, o)
    assert torch.allclose(stats["opacity_t"], want, rtol=1e-5)
    # volume term: V = s^3; paper normaliser = 90th percentile of [v0, v1] (linear), clipped
    v = s.double() ** 3
    ref = v.min() + 0.9 * (v.max() - v.min())
    gamma = (v / ref).clamp(max=1.0) ** 0.1
    got = significance(scene, cams(), SignificanceConfig())
    assert torch.allclose(got, want * gamma, rtol=1e-5)
    # released code: divide by sorted_desc[int(0.9 * 2)] = the smaller volume, no clipping
    got_ref = significance(scene, cams(), SignificanceConfig(volume_norm="reference"))
    assert torch.allclose(got_ref, want * (v / v.min()) ** 0.1, rtol=1e-5)
    assert torch.allclose(global_significance(stats["opacity_t"], s[:, None].repeat(1, 3)), want * gamma, rtol=1e-5)


def test_score_variants():
    scene, _, o = two_gaussians()
    assert torch.allclose(significance(scene, cams(), SignificanceConfig(score="opacity")), o.double())
    hits = significance(scene, cams(), SignificanceConfig(score="hit_count"))
    assert hits.dtype == torch.float64 and torch.all(hits == hits.round()) and torch.all(hits > 0)
    a = significance(scene, cams(), SignificanceConfig(score="alpha_t", beta=0.0))
    assert torch.all(a < significance(scene, cams(), SignificanceConfig(score="opacity_t")))
    with pytest.raises(ValueError, match="score='nope'"):
        SignificanceConfig(score="nope")
    with pytest.raises(ValueError, match="volume_norm"):
        volume_factor(torch.ones(3, 3), volume_norm="x")


def test_prune_ratio_rules_and_errors():
    scores = torch.tensor([5.0, 1.0, 3.0, 1.0, 4.0, 2.0])
    assert prune_mask(scores, 0.5).tolist() == [True, False, True, False, True, False]
    assert prune_mask(scores, 0.0).all()
    # reference: threshold = sorted[int(0.2 * 5)] = 1.0 -> both ties removed
    assert prune_mask(scores, 0.2, rule="reference").tolist() == [True, False, True, False, True, True]
    assert prune_mask(scores, 0.2).sum() == 5
    for bad in (1.0, -0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="ratio=.*out of range.*\\[0, 1\\)"):
            prune_mask(scores, bad)
    scene, _, _ = two_gaussians()
    pruned = prune(scene, torch.tensor([2.0, 1.0]), 0.5)
    assert len(pruned) == 1 and torch.equal(pruned.means, scene.means[:1])
