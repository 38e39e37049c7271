"""LPIPS in `evaluate`: optional, computed through the `lpips` package when it loads, else a stated reason."""

import sys
import types

import pytest
import torch
from splat_helpers import orbit_cameras, random_scene

from anybudget.splat.evaluate import evaluate, lpips_metric
from anybudget.splat.render_ref import render_reference


def _fake_lpips(fail: bool):
    """A stand-in `lpips` module: LPIPS(net) is mean |x - y| over its [-1, 1] inputs, or raises like an offline download."""
    mod = types.ModuleType("lpips")

    class LPIPS(torch.nn.Module):
        def __init__(self, net="alex", verbose=True):
            super().__init__()
            if fail:
                raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
            self.net = net

        def forward(self, x, y):
            assert x.shape[:2] == (1, 3) and x.min() >= -1 and x.max() <= 1
            return (x - y).abs().mean().reshape(1, 1, 1, 1)

    mod.LPIPS = LPIPS
    return mod


def _views():
    gt = random_scene(30, seed=2, spread=0.4)
    cams = orbit_cameras(3, size=12)
    views = [c.__class__(**{**c.__dict__, "image": render_reference(gt, c).image.detach().clamp(0, 1)}) for c in cams]
    return gt, views


def test_lpips_missing_package_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    fn, why = lpips_metric("cpu")
    assert fn is None and "pip install lpips" in why
    gt, views = _views()
    m = evaluate(gt, views, fps_repeats=0, lpips=True)
    assert m["lpips"] is None and "pip install lpips" in m["lpips_unavailable"] and m["psnr"] > 60
    assert "lpips" not in evaluate(gt, views, fps_repeats=0)


def test_lpips_offline_backbone_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", _fake_lpips(fail=True))
    fn, why = lpips_metric("cpu")
    assert fn is None and "backbone weights" in why and "OSError" in why


def test_lpips_mean_over_views_on_the_package_scale(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", _fake_lpips(fail=False))
    gt, views = _views()
    other = random_scene(30, seed=3, spread=0.4)
    m = evaluate(other, views, fps_repeats=0, lpips=True)
    want = sum(float(2 * (render_reference(other, v).image.clamp(0, 1) - v.image).abs().mean()) for v in views) / len(views)
    assert m["lpips"] == pytest.approx(want, rel=1e-5) and "lpips_unavailable" not in m
    assert evaluate(gt, views, fps_repeats=0, lpips=True)["lpips"] == pytest.approx(0.0, abs=1e-6)
    pair = lpips_metric("cpu")  # built once, reused for several scenes (the CLI's path)
    assert evaluate(other, views, fps_repeats=0, lpips=pair)["lpips"] == pytest.approx(want, rel=1e-5)


def test_lpips_net_is_checked():
    with pytest.raises(ValueError, match="net='resnet'"):
        lpips_metric("cpu", net="resnet")
