"""The benchmark scripts' smoke modes (the same code paths the GPU runs take)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_lightgaussian_gpu_smoke(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/splat/lightgaussian_gpu.py"), "--smoke", "--out",
                        str(tmp_path)], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "splat_lightgaussian_smoke.json").read_text())
    m = rec["metrics"]
    assert not m["partial"] and m["decode_exact"] is True
    assert set(m["stages"]) == {"3dgs", "pruned", "distilled", "quantized", "quantized_pos16"}
    assert m["stages"]["quantized_pos16"]["size_bytes"] < m["stages"]["quantized"]["size_bytes"]
    assert m["stages"]["quantized"]["size_bytes"] < m["stages"]["distilled"]["size_bytes"] < m["stages"]["3dgs"]["size_bytes"]
    assert set(m["ablation"]) == {"lightgaussian", "opacity_t", "opacity", "hit_count"}
    assert rec["device"] and (tmp_path / "splat_lightgaussian_smoke.png").stat().st_size > 0


@pytest.mark.skipif(importlib.util.find_spec("panda3d") is None, reason="make_scenes needs panda3d")
def test_make_scenes_smoke_is_resumable_and_calibrated(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks/splat/make_scenes.py"), "--smoke", "--scenes", "panda",
           "--out", str(tmp_path), "--quiet"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    folder = tmp_path / "panda"
    done = json.loads((folder / "done.json").read_text())
    assert done["train"] == 4 and done["test"] == 2
    sys.path.insert(0, str(ROOT / "src"))
    from anybudget.splat.cameras import load_views, read_colmap_points

    views, (pts, _) = load_views(folder, "train"), read_colmap_points(folder)
    # every surface point projects onto the panda (not onto the white background) in most views
    on_object = []
    for v in views:
        p = pts @ v.world_to_cam[:3, :3].T + v.world_to_cam[:3, 3]
        u = (v.fx * p[:, 0] / p[:, 2] + v.cx).long().clamp(0, v.width - 1)
        w = (v.fy * p[:, 1] / p[:, 2] + v.cy).long().clamp(0, v.height - 1)
        on_object.append(float((v.image[w, u].min(-1).values < 0.9).float().mean()))
    assert min(on_object) > 0.8
    r2 = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert "done already" in r2.stdout
