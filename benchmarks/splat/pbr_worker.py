"""Blender (``bpy``) side of ``make_scenes_pbr.py``: builds one scene, renders the listed views with
Cycles on the CPU and samples textured surface points. Imports only ``bpy``, numpy and the standard
library (it runs in bpy's own Python 3.11 venv, without torch or anybudget).

    /path/to/bpy-venv/bin/python benchmarks/splat/pbr_worker.py JOB.json

``JOB.json`` (written by ``make_scenes_pbr.py``): ``scene``, ``assets`` (folders), ``size``,
``samples``, ``seed``, ``fov``, ``background`` (sRGB, seen by camera rays only), ``hdri``,
``views`` (``path`` + ``c2w``, Blender/NeRF camera-to-world), ``points`` and ``points_out``.
Each finished view is moved into place atomically and announced as ``VIEW <path> <seconds>``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import bpy
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run by bpy's Python as a script: its folder is there anyway
from mathutils import Matrix
from surface_draw import draw_on_triangles  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)  # use_nodes: still needed in 5.0


def _srgb_to_linear(c):
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c):
    c = np.clip(np.asarray(c, dtype=np.float64), 0, 1)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def _reset():
    bpy.ops.wm.read_factory_settings(use_empty=True)


def _world(hdri: str, strength: float, background, rotation: float):
    """HDRI lighting for every ray except camera rays, which see the uniform ``background``."""
    world = bpy.data.worlds.new("world")
    bpy.context.scene.world = world
    world.use_nodes = True
    nt = world.node_tree
    nt.nodes.clear()
    coord, mapping = nt.nodes.new("ShaderNodeTexCoord"), nt.nodes.new("ShaderNodeMapping")
    mapping.inputs["Rotation"].default_value[2] = rotation
    env = nt.nodes.new("ShaderNodeTexEnvironment")
    env.image = bpy.data.images.load(hdri)
    hdr_bg, flat = nt.nodes.new("ShaderNodeBackground"), nt.nodes.new("ShaderNodeBackground")
    hdr_bg.inputs["Strength"].default_value = strength
    flat.inputs["Color"].default_value = (*_srgb_to_linear(background), 1.0)
    path, mix, out = nt.nodes.new("ShaderNodeLightPath"), nt.nodes.new("ShaderNodeMixShader"), nt.nodes.new("ShaderNodeOutputWorld")
    nt.links.new(coord.outputs["Generated"], mapping.inputs["Vector"])
    nt.links.new(mapping.outputs["Vector"], env.inputs["Vector"])
    nt.links.new(env.outputs["Color"], hdr_bg.inputs["Color"])
    nt.links.new(path.outputs["Is Camera Ray"], mix.inputs["Fac"])
    nt.links.new(hdr_bg.outputs["Background"], mix.inputs[1])
    nt.links.new(flat.outputs["Background"], mix.inputs[2])
    nt.links.new(mix.outputs["Shader"], out.inputs["Surface"])


def _sun(energy: float, rot_deg, angle_deg: float = 3.0):
    data = bpy.data.lights.new("sun", "SUN")
    data.energy, data.angle = energy, math.radians(angle_deg)
    sun = bpy.data.objects.new("sun", data)
    sun.rotation_euler = [math.radians(a) for a in rot_deg]
    bpy.context.scene.collection.objects.link(sun)


def _principled(mat):
    return next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None) if mat and mat.use_nodes else None


def _fix_alpha(objs):
    """OBJ/MTL textures with an alpha channel (leaf cards) cut out their transparent parts."""
    for ob in objs:
        for slot in ob.material_slots:
            bsdf = _principled(slot.material)
            if bsdf is None or not bsdf.inputs["Base Color"].is_linked:
                continue
            tex = bsdf.inputs["Base Color"].links[0].from_node
            if tex.type == "TEX_IMAGE" and tex.image and tex.image.filepath.lower().endswith(".png") and not bsdf.inputs["Alpha"].is_linked:
                slot.material.node_tree.links.new(tex.outputs["Alpha"], bsdf.inputs["Alpha"])


def _import_obj(path: str, loc=(0, 0, 0), rot_z=0.0, dims=None, scale=None, z_up=False):
    """An OBJ (Y-up unless ``z_up``), placed by ``_place`` when ``dims`` or ``scale`` is given."""
    before = set(bpy.data.objects)
    bpy.ops.wm.obj_import(filepath=path, **({"up_axis": "Z", "forward_axis": "Y"} if z_up else {}))
    objs = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    if dims is not None or scale is not None:
        _place(objs, loc, rot_z, dims, scale)
    _fix_alpha(objs)
    return objs


def _bbox(objs):
    pts = np.array([o.matrix_world @ v.co for o in objs for v in o.data.vertices])
    return pts.min(0), pts.max(0)


def _place(objs, loc, rot_z, dims=None, scale=None):
    """Scale to ``dims`` (x, y, z in metres; Sweet Home 3D's width, depth, height) or by ``scale``,
    stand on z=0 centred on ``loc`` (x, y), rotate ``rot_z`` degrees about z."""
    bpy.context.view_layer.update()
    lo, hi = _bbox(objs)
    s = np.asarray(dims, dtype=np.float64) / np.maximum(hi - lo, 1e-9) if dims is not None else np.full(3, scale or 1.0)
    centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    m = (Matrix.Translation((loc[0], loc[1], loc[2])) @ Matrix.Rotation(math.radians(rot_z), 4, "Z")
         @ Matrix.Diagonal((*s, 1.0)) @ Matrix.Translation(tuple(-centre)))
    for o in objs:
        o.matrix_world = m @ o.matrix_world


def _material(name, color, rough=0.6, noise=None, bricks=None):
    """A Principled material with a procedural texture (noise or bricks) for walls and floors."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nt = mat.node_tree
    bsdf = _principled(mat)
    bsdf.inputs["Base Color"].default_value = (*_srgb_to_linear(color), 1)
    bsdf.inputs["Roughness"].default_value = rough
    coords = nt.nodes.new("ShaderNodeTexCoord")
    if bricks:
        b = nt.nodes.new("ShaderNodeTexBrick")
        b.inputs["Color1"].default_value = (*_srgb_to_linear(bricks[0]), 1)
        b.inputs["Color2"].default_value = (*_srgb_to_linear(bricks[1]), 1)
        b.inputs["Mortar"].default_value = (*_srgb_to_linear(bricks[2]), 1)
        b.inputs["Scale"].default_value = 2.5  # object coordinates in metres: 20 cm x 10 cm bricks
        sep, add, comb = nt.nodes.new("ShaderNodeSeparateXYZ"), nt.nodes.new("ShaderNodeMath"), nt.nodes.new("ShaderNodeCombineXYZ")
        nt.links.new(coords.outputs["Object"], sep.inputs["Vector"])  # a wall's (along, up) -> the brick plane's (x, y)
        nt.links.new(sep.outputs["X"], add.inputs[0])
        nt.links.new(sep.outputs["Y"], add.inputs[1])
        nt.links.new(add.outputs["Value"], comb.inputs["X"])
        nt.links.new(sep.outputs["Z"], comb.inputs["Y"])
        nt.links.new(comb.outputs["Vector"], b.inputs["Vector"])
        nt.links.new(b.outputs["Color"], bsdf.inputs["Base Color"])
    elif noise:
        n, ramp = nt.nodes.new("ShaderNodeTexNoise"), nt.nodes.new("ShaderNodeValToRGB")
        n.inputs["Scale"].default_value, n.inputs["Detail"].default_value = noise[2], 8.0
        nt.links.new(coords.outputs["Object"], n.inputs["Vector"])
        ramp.color_ramp.elements[0].color = (*_srgb_to_linear(noise[0]), 1)
        ramp.color_ramp.elements[1].color = (*_srgb_to_linear(noise[1]), 1)
        nt.links.new(n.outputs["Fac"], ramp.inputs["Fac"])
        nt.links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def _box(name, size, loc, mat):
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=loc)
    ob = bpy.context.active_object
    ob.name, ob.scale = name, size
    bpy.ops.object.transform_apply(location=False, rotation=False, scale=True)  # texture coordinates in metres
    ob.data.materials.append(mat)
    return ob


# (model, x, y, rotation about z in degrees, z) in a 6 m x 6 m room; dimensions from the catalog
ROOM_FURNITURE = (("couch2", 0.0, 2.45, 0, 0), ("oakTable", 0.0, 0.0, 0, 0), ("oakChair", -0.75, 0.0, -90, 0),
                  ("oakChair", 0.75, 0.0, 90, 0), ("televisionCabinet", 0.0, -2.6, 180, 0),
                  ("bookcase", -2.75, 0.8, 90, 0), ("bench", 2.7, -0.3, -90, 0), ("barrel", -2.4, -2.4, 0, 0),
                  ("crate", 2.4, -2.4, 20, 0), ("chair", 2.2, 2.2, -135, 0), ("antiqueChair", -2.2, 2.3, 135, 0),
                  ("basketball", 1.1, -1.2, 0, 0), ("teddyBear", 0.5, 2.45, 0, 0.45), ("littlePlant", 0.2, 0.1, 0, 0.741))


def _catalog_dims(root: Path) -> dict[str, tuple[float, float, float]]:
    import re

    txt = (root / "PluginFurnitureCatalog.properties").read_text(encoding="latin-1")
    out = {}
    for k, model in re.findall(r"^model#(\d+)=/blendswap-cc-0/([^/]+)/", txt, re.MULTILINE):
        out[model] = tuple(float(re.search(rf"^{key}#{k}=(.*)$", txt, re.MULTILINE).group(1)) / 100
                           for key in ("width", "depth", "height"))
    return out


def build(job) -> None:
    scene, assets = job["scene"], job["assets"]
    if scene == "room":
        root = Path(assets["furniture"])
        dims = _catalog_dims(root)
        floor = _material("floor", (0.55, 0.38, 0.22), 0.45, noise=((0.62, 0.44, 0.26), (0.36, 0.22, 0.12), 2.5))
        plaster = _material("plaster", (0.85, 0.82, 0.76), 0.9, noise=((0.9, 0.87, 0.8), (0.72, 0.68, 0.6), 1.5))
        brick = _material("brick", (0.6, 0.3, 0.2), 0.85, bricks=((0.62, 0.28, 0.18), (0.5, 0.24, 0.16), (0.8, 0.78, 0.72)))
        _box("floor", (6.2, 6.2, 0.1), (0, 0, -0.05), floor)
        for name, size, loc, mat in (("wall_n", (6.2, 0.1, 2.6), (0, 3.05, 1.3), brick), ("wall_s", (6.2, 0.1, 2.6), (0, -3.05, 1.3), plaster),
                                     ("wall_e", (0.1, 6.2, 2.6), (3.05, 0, 1.3), plaster), ("wall_w", (0.1, 6.2, 2.6), (-3.05, 0, 1.3), brick)):
            _box(name, size, loc, mat)
        for model, x, y, rot, z in ROOM_FURNITURE:
            d = dims[model]
            _import_obj(str(root / "blendswap-cc-0" / model / f"{model}.obj"), (x, y, z), rot, dims=d)
    elif scene == "truck":  # exported by Panda3D in glTF's Y-up axes; centred at the origin, longest side 2 units
        objs = _import_obj(assets["truck"])
        bpy.context.view_layer.update()
        lo, hi = _bbox(objs)
        s = 2.0 / float((hi - lo).max())
        m = Matrix.Diagonal((s, s, s, 1)) @ Matrix.Translation(tuple(-(lo + hi) / 2))
        for o in objs:
            o.matrix_world = m @ o.matrix_world
    elif scene == "garden":  # Panda3D's placement of make_scenes.py's garden (already in world units)
        _import_obj(assets["environment"], z_up=True)
        _import_obj(assets["panda"], z_up=True)
    elif scene == "tiny":  # procedural, no assets: a brick box and a noisy ball on a floor (smoke tests)
        _box("floor", (4, 4, 0.1), (0, 0, -0.05), _material("floor", (0.5, 0.4, 0.3), noise=((0.6, 0.5, 0.3), (0.3, 0.2, 0.1), 8.0)))
        _box("box", (1, 1, 1), (-0.5, 0, 0.5), _material("brick", (0.6, 0.3, 0.2), bricks=((0.7, 0.3, 0.2), (0.5, 0.2, 0.1), (0.9, 0.9, 0.9))))
        bpy.ops.mesh.primitive_uv_sphere_add(radius=0.5, location=(0.7, 0.3, 0.5))
        bpy.context.active_object.data.materials.append(_material("ball", (0.2, 0.4, 0.8), 0.3, noise=((0.1, 0.3, 0.8), (0.8, 0.9, 1.0), 5.0)))
    else:
        raise ValueError(f"scene={scene!r}; known room, truck, garden, tiny")
    bg = job["background"]
    _world(job["hdri"], job.get("hdri_strength", 1.0), bg, math.radians(job.get("hdri_rotation", 0.0)))
    if job.get("sun"):
        _sun(*job["sun"])


def setup_render(job) -> bpy.types.Object:
    sc = bpy.context.scene
    sc.render.engine = "CYCLES"
    cy = sc.cycles
    cy.device, cy.samples, cy.seed, cy.use_animated_seed = "CPU", int(job["samples"]), int(job["seed"]), False
    cy.use_adaptive_sampling = False
    cy.max_bounces, cy.diffuse_bounces, cy.glossy_bounces, cy.transmission_bounces = 4, 2, 2, 4
    cy.transparent_max_bounces = 8
    sc.render.use_persistent_data = True  # keep the BVH and textures between views (only the camera moves)
    cy.use_denoising = bool(job.get("denoise", True))
    cy.blur_glossy = 1.0
    sc.render.threads_mode, sc.render.threads = "FIXED", int(job.get("threads", 2))
    sc.render.resolution_x = sc.render.resolution_y = int(job["size"])
    sc.render.resolution_percentage = 100
    sc.render.film_transparent = False
    sc.view_settings.view_transform, sc.view_settings.look = "Standard", "None"
    sc.render.image_settings.file_format, sc.render.image_settings.quality = "JPEG", int(job.get("quality", 90))
    sc.render.image_settings.color_mode = "RGB"
    sc.render.use_stamp = False  # no burnt-in stamp, and no metadata (render time, date) in the files:
    for attr in [a for a in dir(sc.render) if a.startswith("use_stamp_")]:  # identical bytes on a re-render
        setattr(sc.render, attr, False)
    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    sc.collection.objects.link(cam)
    cam.data.sensor_fit, cam.data.angle = "HORIZONTAL", math.radians(job["fov"])
    cam.data.clip_start, cam.data.clip_end = 0.05, 1000.0
    sc.camera = cam
    return cam


def _texture_pixels(image, cache):
    if image.name not in cache:
        w, h = image.size
        px = np.empty(w * h * 4, dtype=np.float32)
        image.pixels.foreach_get(px)
        cache[image.name] = px.reshape(h, w, 4) if w * h else None
    return cache[image.name]


def surface_points(count: int, seed: int, focus) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points on every mesh (area-weighted, down-weighted far from ``focus``) with the
    colour of their material's base-colour texture at the point (sRGB in [0, 1])."""
    deps = bpy.context.evaluated_depsgraph_get()
    tris, uvs, cols, img_ids, images = [], [], [], [], []
    for ob in sorted(bpy.context.scene.objects, key=lambda o: o.name):
        if ob.type != "MESH":
            continue
        me = ob.evaluated_get(deps).to_mesh()
        npoly = len(me.polygons)
        if npoly == 0:
            continue
        co = np.empty(len(me.vertices) * 3)
        me.vertices.foreach_get("co", co)
        m = np.array(ob.matrix_world)
        co = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
        start, total, pmat = np.empty(npoly, int), np.empty(npoly, int), np.empty(npoly, int)
        me.polygons.foreach_get("loop_start", start)
        me.polygons.foreach_get("loop_total", total)
        me.polygons.foreach_get("material_index", pmat)
        loop_vert = np.empty(len(me.loops), int)
        me.loops.foreach_get("vertex_index", loop_vert)
        # A fan from each polygon's lexicographically smallest corner, triangles sorted by centroid: the
        # same triangles in the same order whatever order Blender lists polygons, loops or vertices in.
        rank = np.empty(len(co), int)
        rank[np.lexsort(np.round(co, 6).T[::-1])] = np.arange(len(co))
        loop_rank = rank[loop_vert]
        poly_of_loop = np.repeat(np.arange(npoly), total)
        first = np.minimum.reduceat(loop_rank, start) if len(loop_rank) else loop_rank
        offset = np.zeros(npoly, int)
        hit = loop_rank == first[poly_of_loop]
        offset[poly_of_loop[hit]] = (np.arange(len(loop_rank)) - start[poly_of_loop])[hit]
        ntri = np.maximum(total - 2, 0)
        poly = np.repeat(np.arange(npoly), ntri)
        k = np.arange(len(poly)) - np.repeat(np.cumsum(ntri) - ntri, ntri) + 1
        steps = np.stack([np.zeros_like(k), k, k + 1], -1)
        li = start[poly, None] + (offset[poly, None] + steps) % total[poly, None]
        order = np.lexsort(np.round(co[loop_vert[li]].mean(1), 6).T[::-1])
        li, poly = li[order], poly[order]
        vi, mi = loop_vert[li], pmat[poly]
        tris.append(co[vi.reshape(-1, 3)])
        uv = np.zeros((len(me.loops), 2))
        if me.uv_layers.active is not None:
            flat = np.empty(len(me.loops) * 2)
            me.uv_layers.active.data.foreach_get("uv", flat)
            uv = flat.reshape(-1, 2)
        uvs.append(uv[li])
        slot_col, slot_img = [], []
        for slot in ob.material_slots or [None]:
            bsdf = _principled(slot.material) if slot else None
            col, img = (0.7, 0.7, 0.7), -1
            if bsdf is not None:
                col = tuple(_linear_to_srgb(bsdf.inputs["Base Color"].default_value[:3]))
                link = bsdf.inputs["Base Color"].links[0].from_node if bsdf.inputs["Base Color"].is_linked else None
                if link is not None and link.type == "TEX_IMAGE" and link.image is not None:
                    images.append(link.image)
                    img = len(images) - 1
                elif link is not None and link.type == "VALTORGB":  # procedural: the ramp's mean
                    col = tuple(_linear_to_srgb(np.mean([e.color[:3] for e in link.color_ramp.elements], 0)))
                elif link is not None and link.type == "TEX_BRICK":
                    col = tuple(_linear_to_srgb(link.inputs["Color1"].default_value[:3]))
            slot_col.append(col)
            slot_img.append(img)
        mi = np.clip(mi, 0, len(slot_col) - 1)
        cols.append(np.array(slot_col)[mi])
        img_ids.append(np.array(slot_img)[mi])
        ob.evaluated_get(deps).to_mesh_clear()
    tris, uvs, cols, img_ids = (np.concatenate(x) for x in (tris, uvs, cols, img_ids))
    pick, a, b = draw_on_triangles(tris, focus, count, seed)
    bary = np.stack([1 - a - b, a, b], -1)
    pts = np.einsum("nk,nkd->nd", bary, tris[pick])
    uv = np.einsum("nk,nkd->nd", bary, uvs[pick])
    out = cols[pick].copy()
    cache = {}
    for k, image in enumerate(images):
        sel = img_ids[pick] == k
        px = _texture_pixels(image, cache) if sel.any() else None
        if px is None:
            continue
        h, wd = px.shape[:2]
        u = (np.mod(uv[sel, 0], 1.0) * wd).astype(int).clip(0, wd - 1)
        v = (np.mod(uv[sel, 1], 1.0) * h).astype(int).clip(0, h - 1)  # Blender pixels start at the bottom row
        rgb = px[v, u, :3].astype(np.float64)
        out[sel] = rgb  # byte images hold their stored (sRGB) values
    return pts, np.clip(out, 0, 1)


def strip_jpeg_comments(data: bytes) -> bytes:
    """``data`` without its COM segments (Cycles writes render times there), pixels untouched."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    out, i = [data[:2]], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: the entropy-coded rest is kept as is
            break
        if marker != 0xFE:
            out.append(data[i:i + 2 + length])
        i += 2 + length
    out.append(data[i:])
    return b"".join(out)


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    _reset()
    t0 = time.perf_counter()
    build(job)
    cam = setup_render(job)
    print(f"BUILD {time.perf_counter() - t0:.2f}", flush=True)
    if job.get("points_out") and not Path(job["points_out"]).exists():
        pts, cols = surface_points(int(job["points"]), int(job["seed"]), job["target"])
        tmp = job["points_out"] + ".tmp.npz"
        np.savez(tmp, points=pts, colors=cols)
        os.replace(tmp, job["points_out"])
        print(f"POINTS {len(pts)}", flush=True)
    sc = bpy.context.scene
    for view in job["views"]:
        t = time.perf_counter()
        cam.matrix_world = Matrix(view["c2w"])
        tmp = view["path"] + ".tmp.jpg"
        sc.render.filepath = tmp
        bpy.ops.render.render(write_still=True)
        Path(tmp).write_bytes(strip_jpeg_comments(Path(tmp).read_bytes()))
        os.replace(tmp, view["path"])
        print(f"VIEW {view['path']} {time.perf_counter() - t:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
