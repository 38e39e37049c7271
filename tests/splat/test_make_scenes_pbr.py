"""benchmarks/splat/make_scenes_pbr.py --smoke: Cycles renders of a procedural scene (skipped without bpy)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks/splat/make_scenes_pbr.py"


def _blender_python():
    spec = importlib.util.spec_from_file_location("make_scenes_pbr", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        py = mod.find_blender_python(None)
    except FileNotFoundError:
        return None
    ok = subprocess.run([py, "-c", "import bpy"], check=False, capture_output=True).returncode == 0
    return py if ok else None


BPY = _blender_python()


@pytest.mark.skipif(BPY is None, reason="make_scenes_pbr needs a Python with bpy ($ANYBUDGET_BPY_PYTHON)")
def test_pbr_smoke_is_calibrated_deterministic_and_resumable(tmp_path):
    import numpy as np
    from PIL import Image

    from anybudget.splat.cameras import load_views, read_colmap_points

    cmd = [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path), "--quiet", "--blender-python", BPY]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    folder = tmp_path / "tiny"
    done = json.loads((folder / "done.json").read_text())
    assert (done["train"], done["test"], done["size"]) == (4, 2, 32)
    assert "cycles" in done["renderer"] and done["versions"]["bpy"] and done["render_seconds"]["views"] == 6
    bg = np.array(done["background"])
    views, (pts, cols) = load_views(folder, "train", background=tuple(bg)), read_colmap_points(folder)
    assert len(views) == 4 and len(load_views(folder, "test", images=False)) == 2 and len(pts) == 300
    assert float(cols.std()) > 0.02  # texture / material colours, not one grey
    for v in views:
        assert v.image.shape == (32, 32, 3) and float(v.image.std()) > 0.05  # shaded content, not a blank frame
        # surface points that project into the frame land on rendered geometry, not on the background
        p = pts @ v.world_to_cam[:3, :3].T + v.world_to_cam[:3, 3]
        u, w = (v.fx * p[:, 0] / p[:, 2] + v.cx).long(), (v.fy * p[:, 1] / p[:, 2] + v.cy).long()
        inside = (p[:, 2] > 0) & (u >= 1) & (u < 31) & (w >= 1) & (w < 31)
        pix = v.image[w[inside], u[inside]].numpy()
        assert inside.sum() > 50 and float((np.abs(pix - bg).max(-1) > 0.1).mean()) > 0.9
    # resume: a deleted view is re-rendered bit-identically, the others are kept
    first = folder / "train" / "train_001.jpg"
    before = first.read_bytes()
    first.unlink()
    (folder / "done.json").unlink()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert first.read_bytes() == before
    assert json.loads((folder / "done.json").read_text())["render_seconds"]["views"] == 6
    assert np.asarray(Image.open(first)).shape == (32, 32, 3)
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert "done already" in r.stdout


def test_view_splits_hold_out_evenly():
    sys.path.insert(0, str(ROOT / "benchmarks/splat"))
    from make_scenes import view_splits

    s = view_splits(150, 25)
    assert s.count("test") == 25 and s.count("train") == 150
    assert [i for i, x in enumerate(s) if x == "test"] == list(range(0, 175, 7))
    assert view_splits(4, 2).count("test") == 2
