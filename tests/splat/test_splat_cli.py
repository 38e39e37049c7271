import json
from dataclasses import replace

import torch
from splat_helpers import orbit_cameras, random_scene

from anybudget.cli import main
from anybudget.splat.cameras import load_views
from anybudget.splat.codec import load_lgz
from anybudget.splat.dataset import write_png, write_points3d, write_transforms
from anybudget.splat.ply import read_ply, write_ply
from anybudget.splat.render_ref import render_reference


def make_dataset(folder):
    gt = random_scene(40, seed=5, spread=0.4)
    cams = orbit_cameras(6, size=16)
    cams = [replace(c, name=f"r_{i}") for i, c in enumerate(cams)]
    for split, sel in (("train", cams[:4]), ("test", cams[4:])):
        for c in sel:
            write_png(folder / split / f"{c.name}.png", render_reference(gt, c).image.detach())
        write_transforms(folder, split, sel)
    write_points3d(folder / "points3D.txt", gt.means[:30], torch.rand(30, 3))
    return gt, cams


def test_dataset_writer_round_trips_cameras(tmp_path):
    _, cams = make_dataset(tmp_path)
    back = load_views(tmp_path, "train")
    for a, b in zip(back, cams[:4]):
        assert torch.allclose(a.world_to_cam, b.world_to_cam, atol=1e-5)
        assert (a.fx, a.cx, a.width) == (b.fx, b.cx, b.width) and a.image.shape == (16, 16, 3)


def test_cli_train_compress_decompress_eval(tmp_path, capsys):
    gt, _ = make_dataset(tmp_path / "d")
    d = str(tmp_path / "d")
    assert main(["splat", "train", "--views", d, "--out", str(tmp_path / "t.ply"), "--iterations", "8",
                 "--quiet", "--device", "cpu"]) == 0
    assert len(read_ply(tmp_path / "t.ply")) == 30
    write_ply(gt, tmp_path / "gt.ply")
    assert main(["splat", "compress", str(tmp_path / "gt.ply"), "--views", d, "--out", str(tmp_path / "s.lgz"),
                 "--recovery-iterations", "2", "--distill-iterations", "2", "--codebook", "4", "--vq-iterations", "3",
                 "--quiet", "--device", "cpu"]) == 0
    assert len(load_lgz(tmp_path / "s.lgz")) == 40 - round(0.66 * 40)
    assert not (tmp_path / "s.lgz.work").exists() and not (tmp_path / "t.ply.ckpt.safetensors").exists()
    assert main(["splat", "decompress", str(tmp_path / "s.lgz"), "--out", str(tmp_path / "s.ply")]) == 0
    assert read_ply(tmp_path / "s.ply").equal(load_lgz(tmp_path / "s.lgz").to_scene())
    assert main(["splat", "eval", str(tmp_path / "gt.ply"), str(tmp_path / "s.lgz"), "--views", d,
                 "--png", str(tmp_path / "cmp.png"), "--out", str(tmp_path / "m.json"), "--quiet", "--device", "cpu"]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert "commit" in m and m["config"]["split"] == "test" and m["device"]
    m = m["scenes"]
    assert m["gt.ply"]["psnr"] > 60 and m["s.lgz"]["size_bytes"] < m["gt.ply"]["size_bytes"]
    assert (tmp_path / "cmp.png").stat().st_size > 0
