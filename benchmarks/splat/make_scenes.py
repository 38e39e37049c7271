"""Build multi-view 3DGS datasets from textured 3D content that ships in the Panda3D wheel.

Three scenes, rendered offscreen with Panda3D's software renderer (p3tinydisplay: textured,
Gouraud-lit by an ambient + a directional light, 2x supersampled), written in the NeRF-synthetic
layout (``transforms_{train,test}.json``, JPEG or PNG views) plus a ``points3D.txt`` of initial
points sampled on the mesh surfaces (a stand-in for SfM points; colours averaged over the views the
point projects into, without an occlusion test):

- ``garden``: Panda3D's outdoor ``models/environment`` (ground, bamboo, rocks, trees, mountains)
  with the panda at its centre, cameras on an inward-facing 360-degree orbit (Mip-NeRF-360-like);
- ``panda``: the textured ``models/panda`` alone on white (train with a white background), cameras on the upper hemisphere
  (NeRF-synthetic-like);
- ``tabletop``: textured box, smiley, frowney, teapot and jack on a textured ground in front of a
  rock wall, inward orbit at varying heights.

Each scene's clear colour is uniform and recorded as ``background`` in ``done.json``; the GPU
benchmark trains with it as the 3DGS background (as NeRF-synthetic is trained on white), so no
Gaussians are spent on an empty sky. Deterministic (seeded camera rigs, a software rasteriser, one process per scene). Resumable: finished views are skipped,
a scene is complete when its ``done.json`` exists. ``--smoke``: one 64x64 scene, 6 views, seconds.
Needs ``pip install panda3d==1.10.16`` (not a library dependency).

    python benchmarks/splat/make_scenes.py --out .carry/splat            # 3 scenes, ~2 min CPU
    python benchmarks/splat/make_scenes.py --out /tmp/s --smoke
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

import torch

from anybudget.io import atomic_path, atomic_write_json
from anybudget.splat.cameras import Camera
from anybudget.splat.dataset import write_points3d, write_transforms

if str(Path(__file__).resolve().parent) not in sys.path:  # surface_draw, also when imported from a test
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from surface_draw import draw_on_triangles  # noqa: E402

SCENES = ("garden", "panda", "tabletop")


def _base(size: int):
    try:
        from panda3d.core import loadPrcFileData
    except ImportError as e:
        raise ImportError("make_scenes.py needs Panda3D: pip install panda3d==1.10.16") from e
    loadPrcFileData("", f"load-display p3tinydisplay\nwindow-type offscreen\nwin-size {size} {size}\n"
                        "audio-library-name null\nsync-video 0\nnotify-level error\ndefault-directnotify-level error\n")
    from direct.showbase.ShowBase import ShowBase

    return ShowBase(windowType="offscreen")


def _lights(base, root):
    from panda3d.core import AmbientLight, DirectionalLight, Vec4

    al = AmbientLight("ambient")
    al.setColor(Vec4(0.35, 0.35, 0.35, 1))
    dl = DirectionalLight("sun")
    dl.setColor(Vec4(0.85, 0.82, 0.78, 1))
    sun = root.attachNewNode(dl)
    sun.setHpr(35, -55, 0)
    root.setLight(root.attachNewNode(al))
    root.setLight(sun)


def build(base, name: str):
    """Scene graph of ``name`` under a fresh root; returns (root, target point, rig parameters)."""
    from panda3d.core import CardMaker

    root = base.render.attachNewNode(name)
    load = base.loader.loadModel
    if name == "garden":
        env = load("models/environment")
        env.reparentTo(root)
        env.setScale(0.25)
        env.setPos(-8, 42, 0)
        panda = load("models/panda")
        panda.reparentTo(root)
        panda.setScale(0.4)
        rig = {"kind": "orbit", "radius": (14.0, 22.0), "height": (2.0, 9.0), "target": (0, 0, 2.5), "fov": 60,
               "background": (0.55, 0.7, 0.9)}  # a clear sky
    elif name == "panda":
        panda = load("models/panda")
        panda.reparentTo(root)
        rig = {"kind": "hemisphere", "radius": (26.0, 26.0), "target": (0, 0, 6.0), "fov": 40,
               "background": (1.0, 1.0, 1.0)}  # white: the panda's arms and legs are black
    elif name == "tabletop":
        cm = CardMaker("ground")
        cm.setFrame(-12, 12, -12, 12)
        cm.setUvRange((0, 0), (4, 4))
        ground = root.attachNewNode(cm.generate())
        ground.setP(-90)
        ground.setTexture(base.loader.loadTexture("models/maps/envir-ground.jpg"))
        cm = CardMaker("wall")
        cm.setFrame(-12, 12, 0, 8)
        cm.setUvRange((0, 0), (3, 1))
        wall = root.attachNewNode(cm.generate())
        wall.setPos(0, 12, 0)
        wall.setTexture(base.loader.loadTexture("models/maps/envir-rock1.jpg"))
        wall.setTwoSided(True)
        for model, pos, scale, color in (("models/box", (-4, 1, 0), 2.5, None), ("models/smiley", (0, -2, 1.2), 1.2, None),
                                         ("models/frowney", (3.5, 2, 1.0), 1.0, None),
                                         ("models/teapot", (1, 4, 0), 0.9, (0.8, 0.3, 0.2, 1)),
                                         ("models/jack", (-2, -4, 0.8), 0.8, (0.2, 0.5, 0.9, 1))):
            m = load(model)
            m.reparentTo(root)
            m.setPos(*pos)
            m.setScale(scale)
            if color:
                m.setColor(*color)
        rig = {"kind": "orbit", "radius": (13.0, 17.0), "height": (3.0, 10.0), "target": (0, 1, 1.0), "fov": 55,
               "background": (0.1, 0.1, 0.12)}
    else:
        raise ValueError(f"scene={name!r}; known {', '.join(SCENES)}")
    base.setBackgroundColor(*rig["background"], 1)
    _lights(base, root)
    return root, rig


def rig_poses(rig: dict, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(eye, target) per view: a golden-angle spiral with seeded jitter, deterministic."""
    rng = np.random.default_rng(seed)
    target = np.array(rig["target"], dtype=np.float64)
    out = []
    for i in range(count):
        az = i * math.pi * (3 - math.sqrt(5)) + rng.uniform(-0.05, 0.05)
        r = rng.uniform(*rig["radius"])
        if rig["kind"] == "hemisphere":
            el = math.asin(min(0.98, (i + 0.5) / count))  # uniform over the upper hemisphere
            eye = target + r * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        else:
            h = rng.uniform(*rig["height"])
            eye = np.array([r * math.cos(az), r * math.sin(az), h]) + np.array([target[0], target[1], 0])
        out.append((eye, target + rng.normal(0, rig.get("jitter", 0.2), 3)))  # look-at jitter (world units)
    return out


def view_splits(n_train: int, n_test: int) -> list[str]:
    """``"train"`` / ``"test"`` per view: every ``(n_train + n_test) // n_test``-th view is held out
    (the first ``n_test`` of them), so test views are spread evenly over the rig."""
    step, out = (n_train + n_test) // max(n_test, 1), []
    for i in range(n_train + n_test):
        out.append("test" if i % step == 0 and out.count("test") < n_test else "train")
    return out


def render_view(base, eye, target, size: int, fov: float, supersample: int) -> tuple[np.ndarray, Camera]:
    """One view: uint8 ``(size, size, 3)`` and its Camera (OpenCV axes in Panda3D's Z-up world)."""
    from panda3d.core import Point3

    base.camera.setPos(*eye)
    base.camera.lookAt(Point3(*target))
    base.camLens.setFov(fov, fov)
    base.camLens.setNear(0.1)
    base.graphicsEngine.renderFrame()
    base.graphicsEngine.renderFrame()
    tex = base.win.getScreenshot()
    big = np.frombuffer(bytes(tex.getRamImageAs("RGB")), np.uint8).reshape(tex.getYSize(), tex.getXSize(), 3)[::-1]
    img = big.reshape(size, supersample, size, supersample, 3).mean((1, 3)).round().astype(np.uint8)
    m = base.camera.getMat(base.render)  # rows: right, forward, up, position (row-vector convention)
    right, fwd, up, pos = (np.array([m.getRow(i)[j] for j in range(3)]) for i in range(4))
    rot = np.stack([right, -up, fwd])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = rot, -rot @ pos
    f = 0.5 * size / math.tan(math.radians(fov) / 2)
    return img, Camera(torch.tensor(w2c, dtype=torch.float32), f, f, size / 2, size / 2, size, size)


def surface_points(root, base, count: int, seed: int, focus: np.ndarray) -> np.ndarray:
    """``count`` points on the triangles under ``root`` (area-weighted, down-weighted far from ``focus``)."""
    from panda3d.core import GeomVertexReader

    tris = []
    for np_ in root.findAllMatches("**/+GeomNode"):
        mat = np_.getMat(base.render)
        node = np_.node()
        for gi in range(node.getNumGeoms()):
            geom = node.getGeom(gi).decompose()
            reader = GeomVertexReader(geom.getVertexData(), "vertex")
            verts = []
            while not reader.isAtEnd():
                v = mat.xformPoint(reader.getData3())
                verts.append((v[0], v[1], v[2]))
            verts = np.array(verts)
            for pi in range(geom.getNumPrimitives()):
                prim = geom.getPrimitive(pi).decompose()
                idx = np.array([prim.getVertex(j) for j in range(prim.getNumVertices())])
                if len(idx) >= 3 and len(verts):
                    tris.append(verts[idx[: len(idx) // 3 * 3].reshape(-1, 3)])
    tris = np.concatenate(tris)
    pick, u, v = draw_on_triangles(tris, focus, count, seed)
    t = tris[pick]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def point_colors(points: np.ndarray, cams: list[Camera], images: list[np.ndarray]) -> np.ndarray:
    """Mean colour of each point over the views it projects into (no occlusion test)."""
    acc, cnt = np.zeros((len(points), 3)), np.zeros(len(points))
    for cam, img in zip(cams, images):
        w2c = cam.world_to_cam.double().numpy()
        p = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = np.maximum(p[:, 2], 1e-6)
        u = (cam.fx * p[:, 0] / z + cam.cx).astype(int)
        v = (cam.fy * p[:, 1] / z + cam.cy).astype(int)
        ok = (p[:, 2] > 0.1) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        acc[ok] += img[v[ok], u[ok]] / 255.0
        cnt[ok] += 1
    return np.where(cnt[:, None] > 0, acc / np.maximum(cnt, 1)[:, None], 0.5)


def _save_image(path: Path, img: np.ndarray, fmt: str) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="JPEG" if fmt == "jpg" else "PNG", **({"quality": 92} if fmt == "jpg" else {}))


def make_scene(base, name: str, out: Path, n_train: int, n_test: int, size: int, supersample: int, fmt: str,
               n_points: int, seed: int, quiet: bool) -> None:
    folder = out / name
    if (folder / "done.json").exists():
        print(f"{name}: done already ({folder})")
        return
    from tqdm.auto import tqdm

    root, rig = build(base, name)
    poses = rig_poses(rig, n_train + n_test, seed)
    cams, images = [], []
    splits = view_splits(n_train, n_test)
    for i, (eye, target) in enumerate(tqdm(poses, desc=name, disable=quiet)):
        split = splits[i]
        img_name = f"{split}_{i:03d}"
        img, cam = render_view(base, eye, target, size, rig["fov"], supersample)
        path = folder / split / f"{img_name}.{fmt}"
        if not path.exists():  # resume: views are deterministic, finished ones are kept
            _save_image(path, img, fmt)
        from dataclasses import replace

        cams.append(replace(cam, name=img_name))
        images.append(img)
    for split in ("train", "test"):
        sel = [c for c in cams if c.name.startswith(split)]
        write_transforms(folder, split, [replace_name(c, fmt) for c in sel])
    pts = surface_points(root, base, n_points, seed, np.array(rig["target"]))
    train_idx = [i for i, c in enumerate(cams) if c.name.startswith("train")]
    cols = point_colors(pts, [cams[i] for i in train_idx], [images[i] for i in train_idx])
    write_points3d(folder / "points3D.txt", torch.tensor(pts, dtype=torch.float32), torch.tensor(cols, dtype=torch.float32))
    root.removeNode()
    nbytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    atomic_write_json(folder / "done.json", {"scene": name, "train": len(train_idx), "test": len(cams) - len(train_idx),
                                             "size": size, "format": fmt, "points": n_points, "seed": seed,
                                             "bytes": nbytes, "renderer": "panda3d p3tinydisplay",
                                             "background": list(rig["background"])})
    print(f"{name}: {len(cams)} views, {nbytes / 1e6:.1f} MB -> {folder}")


def replace_name(cam: Camera, fmt: str) -> Camera:
    from dataclasses import replace

    return replace(cam, name=f"{cam.name}.{fmt}")


def scene_names(parser, text: str, known) -> list[str]:
    """``--scenes``' comma list, each one of ``known`` (else the parser's one-line error)."""
    names = text.split(",")
    for n in names:
        if n not in known:
            parser.error(f"--scenes: unknown scene {n!r}; known {', '.join(known)}")
    return names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / ".carry" / "splat"), help="output folder (default .carry/splat)")
    p.add_argument("--scenes", default=",".join(SCENES), help="comma-separated subset of " + ",".join(SCENES))
    p.add_argument("--train", type=int, default=150, help="training views per scene (150)")
    p.add_argument("--test", type=int, default=25, help="held-out test views per scene (25)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (256)")
    p.add_argument("--supersample", type=int, default=2, help="render at this factor and average down (2)")
    p.add_argument("--format", default="jpg", choices=("jpg", "png"), help="jpg keeps a scene near 3 MB")
    p.add_argument("--points", type=int, default=30_000, help="initial surface points (30000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="one 64x64 scene with 6 views")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    names = scene_names(p, a.scenes, SCENES)
    if a.smoke:
        names, a.train, a.test, a.size, a.supersample, a.points = names[:1], 4, 2, 64, 1, 500
    if len(names) > 1:
        # One process per scene: Panda3D keeps state across scenes in one process (texture caches)
        # that shifts a few pixels by a few levels; a fresh process per scene is bit-reproducible.
        import subprocess

        for n in names:
            args = [sys.executable, __file__, "--scenes", n, *(x for x in (argv if argv is not None else sys.argv[1:]))]
            skip = {i for i, x in enumerate(args[3:], 3) if x == "--scenes"}
            args = [x for i, x in enumerate(args) if i not in skip and (i - 1) not in skip]
            subprocess.run(args, check=True)
        return 0
    base = _base(a.size * a.supersample)
    make_scene(base, names[0], Path(a.out), a.train, a.test, a.size, a.supersample, a.format, a.points, a.seed, a.quiet)
    base.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
