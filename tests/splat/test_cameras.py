import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

Rotation = pytest.importorskip("scipy.spatial.transform").Rotation

from anybudget.splat.cameras import (
    load_colmap_text,
    load_nerf_synthetic,
    load_views,
    look_at,
    read_colmap_points,
)


def _project(cam, X):
    p = cam.world_to_cam[:3, :3] @ X + cam.world_to_cam[:3, 3]
    return torch.tensor([cam.fx * p[0] / p[2] + cam.cx, cam.fy * p[1] / p[2] + cam.cy]), p[2]


def _nerf_folder(tmp_path):
    # Camera at (0, 0, 4) looking down -z (OpenGL), then one rotated 90 degrees about y.
    c2w_a = np.eye(4)
    c2w_a[:3, 3] = [0, 0, 4]
    c2w_b = np.array([[0, 0, 1, 4], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1.0]])
    frames = [{"file_path": "./train/r_0", "transform_matrix": c2w_a.tolist()},  # no extension: .png
              {"file_path": "./train/r_1.png", "transform_matrix": c2w_b.tolist()}]
    (tmp_path / "train").mkdir()
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :5, 3] = 255  # left half opaque red, right half transparent
    for i in range(2):
        Image.fromarray(rgba).save(tmp_path / "train" / f"r_{i}.png")
    (tmp_path / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 2 * math.atan(0.5), "frames": frames}))
    return tmp_path


def test_nerf_synthetic_poses_intrinsics_and_alpha(tmp_path):
    cams = load_nerf_synthetic(_nerf_folder(tmp_path), "train", background=(0, 0, 1))
    a, b = cams
    assert (a.width, a.height) == (10, 8) and a.fx == pytest.approx(10.0) and a.cx == 5 and a.cy == 4
    uv, z = _project(a, torch.zeros(3))
    assert torch.allclose(uv, torch.tensor([5.0, 4.0])) and z == pytest.approx(4.0)
    # world +y is up in the image (smaller row), world +x is right
    assert _project(a, torch.tensor([0, 1.0, 0]))[0][1] < 4 and _project(a, torch.tensor([1.0, 0, 0]))[0][0] > 5
    assert torch.allclose(b.position, torch.tensor([4.0, 0, 0]), atol=1e-6)
    assert _project(b, torch.zeros(3))[1] == pytest.approx(4.0)
    assert torch.allclose(a.image[0, 0], torch.tensor([1.0, 0, 0])) and torch.allclose(a.image[0, 9], torch.tensor([0, 0, 1.0]))
    with pytest.raises(FileNotFoundError, match="split='test'"):
        load_nerf_synthetic(tmp_path, "test")


def test_colmap_text_matches_nerf_and_reads_points(tmp_path):
    (tmp_path / "n").mkdir()
    nerf = load_nerf_synthetic(_nerf_folder(tmp_path / "n"), images=False)
    sparse = tmp_path / "c" / "sparse" / "0"
    sparse.mkdir(parents=True)
    (sparse / "cameras.txt").write_text("# Camera list\n1 PINHOLE 10 8 10 10 5 4\n2 SIMPLE_PINHOLE 10 8 10 5 4\n")
    lines = ["# Image list", ""]
    for i, cam in enumerate(nerf):
        x, y, z, w = Rotation.from_matrix(cam.world_to_cam[:3, :3].double().numpy()).as_quat()
        q = [w, x, y, z]
        t = cam.world_to_cam[:3, 3].tolist()
        lines.append(f"{i + 1} {' '.join(map(str, q))} {' '.join(map(str, t))} {i + 1} img_{i}.png")
        lines.append("" if i == 0 else "1.0 2.0 -1")
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    (sparse / "points3D.txt").write_text("# pts\n1 0.5 1 -2 255 0 128 0.1 1 0\n2 0 0 0 0 255 0 0.2\n")
    cams = load_colmap_text(sparse, images=False)
    assert [c.name for c in cams] == ["img_0.png", "img_1.png"]
    for c, ref in zip(cams, nerf):
        assert torch.allclose(c.world_to_cam, ref.world_to_cam, atol=1e-5)
        assert (c.fx, c.fy, c.cx, c.cy) == (10, 10, 5, 4)
    pts, cols = read_colmap_points(sparse)
    assert torch.allclose(pts, torch.tensor([[0.5, 1, -2], [0, 0, 0]])) and cols[0, 2] == pytest.approx(128 / 255)
    (tmp_path / "c" / "images").mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 10, 3), 60 * i, np.uint8)).save(tmp_path / "c" / "images" / f"img_{i}.png")
    with_images = load_colmap_text(sparse)  # images found at <root>/images from sparse/0
    assert with_images[1].image.shape == (8, 10, 3) and with_images[1].image[0, 0, 0] == pytest.approx(60 / 255)
    assert len(load_views(tmp_path / "c", "test", images=False)) == 1
    assert len(load_views(tmp_path / "c", "train", images=False)) == 1


def test_colmap_distorted_model_is_refused(tmp_path):
    (tmp_path / "cameras.txt").write_text("1 OPENCV 10 8 10 10 5 4 0.1 0 0 0\n")
    (tmp_path / "images.txt").write_text("")
    with pytest.raises(ValueError, match="OPENCV.*PINHOLE"):
        load_colmap_text(tmp_path, images=False)


def test_look_at_centres_target():
    w2c = look_at(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.5, 0.0]))
    p = w2c[:3, :3] @ torch.tensor([0.0, 0.5, 0.0]) + w2c[:3, 3]
    assert abs(p[0]) < 1e-6 and abs(p[1]) < 1e-6 and p[2] > 0
    assert torch.allclose(w2c[:3, :3] @ w2c[:3, :3].T, torch.eye(3), atol=1e-6)
