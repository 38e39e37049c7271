"""gsplat (CUDA) against the PyTorch reference; skipped without CUDA and gsplat."""

import pytest
import torch
from splat_helpers import orbit_cameras, random_scene

from anybudget.splat.render import has_gsplat, render_gsplat
from anybudget.splat.render_ref import render_reference
from anybudget.splat.significance import alpha_t_gsplat, hit_statistics

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (torch.cuda.is_available() and has_gsplat()),
                                                  reason="needs CUDA and gsplat")]


def test_gsplat_matches_reference_render_and_alpha_significance():
    scene = random_scene(300, seed=0, spread=0.6).to("cuda")
    cams = [c.to("cuda") for c in orbit_cameras(3, size=64)]
    for cam in cams:
        ref = render_reference(scene, cam).image
        fast = render_gsplat(scene, cam).image
        assert (ref - fast).abs().mean() < 2e-3 and (ref - fast).abs().max() < 0.1
    a_ref = hit_statistics(scene, cams)["alpha_t"]
    a_fast = alpha_t_gsplat(scene, cams)
    assert torch.allclose(a_fast, a_ref, rtol=2e-2, atol=0.05)


def test_batched_gsplat_render_equals_one_call_per_view():
    from anybudget.splat.render import render_gsplat_batch

    scene = random_scene(300, seed=1, spread=0.6).to("cuda")
    cams = [c.to("cuda") for c in orbit_cameras(4, size=64)]
    batch = render_gsplat_batch(scene, cams)
    for i, cam in enumerate(cams):
        assert (batch[i] - render_gsplat(scene, cam).image).abs().max() < 1e-4
