"""Build multi-view 3DGS datasets with a physically based renderer (Blender's Cycles, CPU, via ``bpy``).

Three scenes from textured content that Debian and PyPI packages ship, lit by one of bpy's bundled
HDRIs plus a sun, path traced (fixed seed and sample count, OpenImageDenoise), written in the same
layout as ``make_scenes.py`` (``transforms_{train,test}.json``, JPEG views, ``points3D.txt`` of
surface points with their texture colours, ``done.json``):

- ``garden``: Panda3D's outdoor ``models/environment`` with the panda at its centre (exported to
  OBJ with Panda3D, same placement and orbit as ``make_scenes.py``'s garden), sunset HDRI + sun;
- ``room``: a 6 m x 6 m open-topped room (procedural wood floor, brick and plaster walls) furnished
  with 14 CC0 models of Sweet Home 3D's BlendSwap-CC-0 library (Debian ``sweethome3d-furniture``),
  interior HDRI + sun, inward-facing orbit at varying heights;
- ``truck``: the textured CesiumMilkTruck (Debian ``assimp-testmodels``; glTF 1.0, which Blender no
  longer imports, so it is loaded by Panda3D's assimp loader and exported to OBJ) on white, upper
  hemisphere, courtyard HDRI + sun.

Camera rays see a uniform ``background`` (the HDRI lights the scene but is not visible); the GPU
benchmark trains with it. Rendering runs in ``pbr_worker.py`` under a Python with ``bpy``
(``--blender-python``; bpy 5.0.1 wants CPython 3.11), this script in the project's venv (torch,
anybudget, Panda3D for the asset export). Resumable: views on disk are skipped, a scene is complete
when its ``done.json`` exists; ``contact_sheet.png`` shows a few training views of each scene.
``--smoke``: a procedural scene (no assets), 6 views of 32x32, seconds.

    python3.11 -m venv ~/bpyvenv && ~/bpyvenv/bin/pip install bpy==5.0.1 numpy
    nice -n 10 python benchmarks/splat/make_scenes_pbr.py --assets /work/splat_assets --out .carry/splat_pbr
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import torch
from make_scenes import rig_poses, scene_names, view_splits

from anybudget.io import atomic_write_json
from anybudget.splat.cameras import Camera, look_at
from anybudget.splat.dataset import write_points3d, write_transforms

SCENES = ("garden", "room", "truck")
_FURNITURE = "x/usr/share/sweethome3d/furniture/BlendSwap-CC-0.sh3f"
_TRUCK = "x/usr/share/assimp/models/glTF/CesiumMilkTruck/CesiumMilkTruck.gltf"
# scene -> camera rig (make_scenes.rig_poses), lighting and the assets' licences
RIGS = {
    "garden": {"kind": "orbit", "radius": (14.0, 22.0), "height": (2.0, 9.0), "target": (0, 0, 2.5), "fov": 60,
               "background": (0.55, 0.7, 0.9), "hdri": "sunset.exr", "hdri_strength": 1.0, "sun": (3.0, (50, 0, 35)),
               "samples": 16,  # alpha-cut reed cards make a sample ~3x dearer than in the room
               "licences": {"panda3d models/environment, models/panda": "BSD-3-Clause (Panda3D 1.10.16)"}},
    "room": {"kind": "orbit", "radius": (1.7, 2.4), "height": (0.9, 2.1), "target": (0, 0, 0.7), "fov": 70,
             "background": (0.55, 0.7, 0.9), "hdri": "interior.exr", "hdri_strength": 1.5, "sun": (3.0, (35, 0, 40)), "samples": 24,
             "licences": {"sweethome3d-furniture BlendSwap-CC-0": "CC0-1.0 (Debian sweethome3d-furniture 1.8-1)"}},
    "truck": {"kind": "hemisphere", "radius": (4.0, 4.0), "target": (0, 0, 0), "jitter": 0.05, "fov": 40, "background": (0.5, 0.5, 0.5),
              "hdri": "courtyard.exr", "hdri_strength": 1.0, "sun": (3.0, (40, 0, 30)),
              "licences": {"assimp-testmodels CesiumMilkTruck": "CC-BY-4.0 (Cesium; Debian assimp-testmodels 5.2.5, BSD-3 package)"}},
    "tiny": {"kind": "orbit", "radius": (3.5, 4.0), "height": (1.5, 2.5), "target": (0, 0, 0.4), "fov": 50,
             "background": (0.55, 0.7, 0.9), "hdri": "forest.exr", "hdri_strength": 1.0, "sun": (3.0, (40, 0, 30)),
             "licences": {"procedural": "none"}},
}


def find_blender_python(explicit: str | None) -> str:
    """A Python that can ``import bpy``: ``explicit``, $ANYBUDGET_BPY_PYTHON, this one, ~/bpyvenv."""
    cands = [explicit, os.environ.get("ANYBUDGET_BPY_PYTHON"),
             sys.executable if importlib.util.find_spec("bpy") else None, str(Path.home() / "bpyvenv" / "bin" / "python")]
    for c in cands:
        if c and Path(c).exists():
            return c
    raise FileNotFoundError("--blender-python: no Python with bpy found; python3.11 -m venv V && V/bin/pip install bpy==5.0.1 numpy")


def prepare_assets(assets: Path, names: list[str]) -> dict[str, dict[str, str]]:
    """Download and unpack the Debian packages (``apt-get download``, ``dpkg-deb -x``) and export the
    Panda3D models to OBJ + MTL once; returns the worker's ``assets`` per scene."""
    assets.mkdir(parents=True, exist_ok=True)
    debs = {"room": "sweethome3d-furniture", "truck": "assimp-testmodels"}
    for name in names:
        if name in debs and not list(assets.glob(f"{debs[name]}_*.deb")):
            subprocess.run(["apt-get", "download", debs[name]], cwd=assets, check=True)
            subprocess.run(["dpkg-deb", "-x", next(assets.glob(f"{debs[name]}_*.deb")).name, "x"], cwd=assets, check=True)
    out: dict[str, dict[str, str]] = {"tiny": {}}
    if "room" in names:
        cc0 = assets / "cc0"
        if not (cc0 / "PluginFurnitureCatalog.properties").exists():
            with zipfile.ZipFile(assets / _FURNITURE) as z:
                z.extractall(cc0)
        out["room"] = {"furniture": str(cc0)}
    exports = {"garden": [("models/environment", 0.25, (-8, 42, 0), "environment"), ("models/panda", 0.4, (0, 0, 0), "panda")],
               "truck": [(str(assets / _TRUCK), 1.0, (0, 0, 0), "truck")]}
    todo = [e for n in names if n in exports for e in exports[n] if not (assets / "obj" / f"{e[3]}.obj").exists()]
    if todo:
        export_panda3d_obj(todo, assets / "obj")
    for n in names:
        if n in exports:
            out[n] = {key: str(assets / "obj" / f"{key}.obj") for *_, key in exports[n]}
    return out


def export_panda3d_obj(models, dst: Path) -> None:
    """Write each Panda3D-loadable model (scaled, placed, Z-up) as ``dst/<key>.obj`` + ``.mtl`` with
    its diffuse textures' absolute paths (one material per texture)."""
    try:
        from panda3d.core import Filename, GeomVertexReader, TextureAttrib, loadPrcFileData
    except ImportError as e:
        raise ImportError("exporting the garden and truck assets needs Panda3D: pip install panda3d==1.10.16") from e
    loadPrcFileData("", "window-type none\naudio-library-name null\nnotify-level error\ndefault-directnotify-level error\n")
    from direct.showbase.ShowBase import ShowBase

    base = ShowBase(windowType="none")
    dst.mkdir(parents=True, exist_ok=True)
    for path, scale, pos, key in models:
        model = base.loader.loadModel(Filename.fromOsSpecific(path) if os.path.isabs(path) else path)
        model.setScale(scale)
        model.setPos(*pos)
        holder = base.render.attachNewNode(key)
        model.reparentTo(holder)
        obj, mats, nv = [f"mtllib {key}.mtl"], {}, 0
        for gnp in model.findAllMatches("**/+GeomNode"):
            mat, node = gnp.getMat(holder), gnp.node()
            for gi in range(node.getNumGeoms()):
                geom = node.getGeom(gi).decompose()
                ta = gnp.getNetState().compose(node.getGeomState(gi)).getAttrib(TextureAttrib)
                tex = ta.getOnTexture(ta.getOnStage(0)) if ta and ta.getNumOnStages() else None
                mname = tex.getFullpath().getBasenameWoExtension() if tex else "plain"
                if tex and mname not in mats:
                    src = Path(tex.getFullpath().toOsSpecific())
                    shutil.copyfile(src, dst / src.name)
                    mats[mname] = src.name
                mats.setdefault(mname, None)
                vd = geom.getVertexData()
                rv, rt = GeomVertexReader(vd, "vertex"), GeomVertexReader(vd, "texcoord")
                has_uv, start = vd.hasColumn("texcoord"), nv
                while not rv.isAtEnd():
                    v = mat.xformPoint(rv.getData3())
                    t = rt.getData2() if has_uv else (0.0, 0.0)
                    obj += [f"v {v[0]:.5f} {v[1]:.5f} {v[2]:.5f}", f"vt {t[0]:.5f} {t[1]:.5f}"]
                    nv += 1
                obj += [f"o {key}_{gnp.getName()}_{gi}", f"usemtl {mname}"]
                for pi in range(geom.getNumPrimitives()):
                    prim = geom.getPrimitive(pi).decompose()
                    idx = [start + prim.getVertex(j) + 1 for j in range(prim.getNumVertices())]
                    obj += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in zip(idx[0::3], idx[1::3], idx[2::3])]
        mtl = [line for m, tex in mats.items() for line in (f"newmtl {m}", "Kd 1 1 1", *([f"map_Kd {tex}"] if tex else []))]
        (dst / f"{key}.mtl").write_text("\n".join(mtl) + "\n")
        tmp = dst / f"{key}.obj.tmp"
        tmp.write_text("\n".join(obj) + "\n")
        os.replace(tmp, dst / f"{key}.obj")
        holder.removeNode()
    base.destroy()


def cameras(rig: dict, n_train: int, n_test: int, size: int, seed: int) -> list[Camera]:
    """The rig's views as named Cameras (OpenCV axes, Z-up world), deterministic."""
    f = 0.5 * size / math.tan(math.radians(rig["fov"]) / 2)
    splits = view_splits(n_train, n_test)
    return [Camera(look_at(torch.tensor(eye, dtype=torch.float32), torch.tensor(tgt, dtype=torch.float32), up=(0.0, 0.0, 1.0)),
                   f, f, size / 2, size / 2, size, size, name=f"{splits[i]}_{i:03d}.jpg")
            for i, (eye, tgt) in enumerate(rig_poses(rig, n_train + n_test, seed))]


def c2w_blender(cam: Camera) -> list[list[float]]:
    """Camera-to-world in Blender's (= NeRF's OpenGL) camera axes: x right, y up, looking down -z."""
    c2w = torch.linalg.inv(cam.world_to_cam.double())
    c2w[:3, 1:3] *= -1
    return c2w.tolist()


def _hdri_dir(py: str) -> str:
    code = "import bpy, os; print(os.path.join(bpy.utils.system_resource('DATAFILES'), 'studiolights', 'world'))"
    return subprocess.run([py, "-c", code], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]


def _versions(py: str) -> dict[str, str]:
    code = "import bpy, numpy, sys; print(bpy.app.version_string, numpy.__version__, sys.version.split()[0])"
    b, n, p = subprocess.run([py, "-c", code], check=True, capture_output=True, text=True).stdout.split()[-3:]
    out = {"bpy": b, "bpy_numpy": n, "bpy_python": p, "torch": torch.__version__}
    try:
        import panda3d

        out["panda3d"] = panda3d.__version__
    except (ImportError, AttributeError):
        pass
    return out


def make_scene(name: str, out: Path, assets: dict, a, py: str, hdri_dir: str) -> None:
    folder = out / name
    if (folder / "done.json").exists():
        print(f"{name}: done already ({folder})")
        return
    from tqdm.auto import tqdm

    rig = RIGS[name]
    cams = cameras(rig, a.train, a.test, a.size, a.seed)
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
    path = {c.name: folder / c.name.split("_")[0] / c.name for c in cams}
    todo = [c for c in cams if not path[c.name].exists()]
    log_path = folder / "render_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {"view_seconds": {}, "build_seconds": []}
    samples = min(a.samples, rig.get("samples", a.samples))
    job = {"scene": name, "assets": assets, "size": a.size, "samples": samples, "seed": a.seed, "fov": rig["fov"],
           "background": list(rig["background"]), "hdri": os.path.join(hdri_dir, rig["hdri"]),
           "hdri_strength": rig["hdri_strength"], "sun": [rig["sun"][0], list(rig["sun"][1])], "target": list(rig["target"]),
           "quality": a.quality, "threads": a.threads, "points": a.points, "points_out": str(folder / "points.npz"),
           "views": [{"path": str(path[c.name]), "c2w": c2w_blender(c)} for c in todo]}
    if todo or not (folder / "points.npz").exists():
        job_path = folder / "job.json"
        atomic_write_json(job_path, job)
        bar = tqdm(total=len(cams), initial=len(cams) - len(todo), desc=name, disable=a.quiet)
        proc = subprocess.Popen([py, str(HERE / "pbr_worker.py"), str(job_path)], stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            parts = line.split()
            if parts[:1] == ["VIEW"]:
                log["view_seconds"][Path(parts[1]).name] = float(parts[2])
                atomic_write_json(log_path, log)
                bar.update(1)
            elif parts[:1] == ["BUILD"]:
                log["build_seconds"].append(float(parts[1]))
        bar.close()
        if proc.wait() != 0:
            raise RuntimeError(f"{name}: pbr_worker.py exited with {proc.returncode} (job {job_path})")
        job_path.unlink()
    for split in ("train", "test"):
        write_transforms(folder, split, [c for c in cams if c.name.startswith(split)])
    pts = np.load(folder / "points.npz")
    write_points3d(folder / "points3D.txt", torch.tensor(pts["points"], dtype=torch.float32),
                   torch.tensor(pts["colors"], dtype=torch.float32))
    (folder / "points.npz").unlink()
    secs = list(log["view_seconds"].values())
    nbytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    atomic_write_json(folder / "done.json", {
        "scene": name, "train": sum(c.name.startswith("train") for c in cams),
        "test": sum(c.name.startswith("test") for c in cams), "size": a.size, "format": "jpg", "quality": a.quality,
        "points": a.points, "seed": a.seed, "bytes": nbytes, "background": list(rig["background"]),
        "renderer": f"blender cycles cpu, {samples} spp, openimagedenoise, view transform Standard",
        "samples": samples, "hdri": rig["hdri"], "sun": [rig["sun"][0], list(rig["sun"][1])], "fov_deg": rig["fov"],
        "rig": {k: rig[k] for k in ("kind", "radius", "target") if k in rig} | ({"height": rig["height"]} if "height" in rig else {}),
        "render_seconds": {"views": len(secs), "total": round(sum(secs), 1), "mean": round(sum(secs) / max(len(secs), 1), 2),
                           "build": log["build_seconds"], "threads": a.threads},
        "versions": _versions(py), "licences": rig["licences"] | {"bpy HDRIs (datafiles/studiolights/world)": "CC0 (Poly Haven, via Blender)"}})
    print(f"{name}: {len(cams)} views, {nbytes / 2**20:.2f} MiB, {sum(secs):.0f} s rendering -> {folder}")


def contact_sheet(out: Path, names: list[str], per_scene: int = 5) -> Path:
    """``out/contact_sheet.png``: ``per_scene`` evenly spaced training views of each finished scene, one row each."""
    from PIL import Image

    rows = []
    for n in names:
        views = sorted((out / n / "train").glob("*.jpg"))
        if views:
            pick = [views[i * (len(views) - 1) // max(per_scene - 1, 1)] for i in range(min(per_scene, len(views)))]
            rows.append([Image.open(v).convert("RGB") for v in pick])
    if not rows:
        raise FileNotFoundError(f"--out: no rendered views under {out}")
    w, h = rows[0][0].size
    sheet = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), (0, 0, 0))
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            sheet.paste(im.resize((w, h)), (x * w, y * h))
    path = out / "contact_sheet.png"
    sheet.save(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / ".carry" / "splat_pbr"), help="output folder (default .carry/splat_pbr)")
    p.add_argument("--assets", default=str(ROOT / "benchmarks" / "splat" / "build" / "assets"),
                   help="scratch folder for the downloaded debs and exported OBJs (not in git)")
    p.add_argument("--scenes", default=",".join(SCENES), help="comma-separated subset of " + ",".join(SCENES))
    p.add_argument("--train", type=int, default=150, help="training views per scene (150)")
    p.add_argument("--test", type=int, default=25, help="held-out test views per scene (25)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (256)")
    p.add_argument("--samples", type=int, default=32, help="Cycles samples per pixel before denoising (32)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (90)")
    p.add_argument("--points", type=int, default=30_000, help="initial surface points (30000)")
    p.add_argument("--threads", type=int, default=2, help="Cycles render threads (2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blender-python", default=None, help="a Python with bpy (default: $ANYBUDGET_BPY_PYTHON, this one, ~/bpyvenv)")
    p.add_argument("--smoke", action="store_true", help="one procedural 32x32 scene with 6 views")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    names = scene_names(p, a.scenes, SCENES)
    if a.smoke:
        names, a.train, a.test, a.size, a.samples, a.points = ["tiny"], 4, 2, 32, 4, 300
    py = find_blender_python(a.blender_python)
    assets = prepare_assets(Path(a.assets), names) if not a.smoke else {"tiny": {}}
    hdri_dir = _hdri_dir(py)
    for n in names:
        t = time.perf_counter()
        make_scene(n, Path(a.out), assets[n], a, py, hdri_dir)
        if not a.quiet:
            print(f"{n}: {time.perf_counter() - t:.0f} s")
    if not a.quiet:
        print(f"contact sheet: {contact_sheet(Path(a.out), names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
