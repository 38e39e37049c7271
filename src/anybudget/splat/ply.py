"""Read and write the standard 3DGS ``.ply`` (binary, one ``vertex`` element), losslessly.

Column layout written by the reference 3DGS code (``x y z nx ny nz f_dc_0..2 f_rest_0..44 opacity
scale_0..2 rot_0..3``, all ``float``): ``f_rest`` is channel-major, i.e. column ``c * K + k`` holds
SH coefficient ``k`` (of K per channel) for colour channel ``c``. A float32 file read and written
back gives the same bytes (columns other than the standard ones are kept in ``scene.extra`` and
written after them; header comments are not kept). numpy only; plyfile is not needed.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

from anybudget.io import atomic_write_bytes
from anybudget.splat.scene import GaussianScene

__all__ = ["PlyError", "parse_ply", "ply_bytes", "read_ply", "write_ply"]


class PlyError(ValueError):
    """A ``.ply`` file that is malformed, truncated or lacks a 3DGS attribute."""


_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
_NORMALS = ["nx", "ny", "nz"]
_F_REST = re.compile(r"^f_rest_(\d+)$")


def _parse_header(data: bytes, where: str) -> tuple[int, str, int, list[tuple[str, str]]]:
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise PlyError(f"{where}: not a binary .ply (no 'ply' magic or no 'end_header' line)")
    lines = data[:end].decode("ascii", errors="replace").splitlines()[1:]
    fmt, count, props, element = None, None, [], None
    for line in lines:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            if element is not None:
                raise PlyError(f"{where}: element {parts[1]!r} after {element!r}; a 3DGS .ply has only 'vertex'")
            element, count = parts[1], int(parts[2])
            if element != "vertex":
                raise PlyError(f"{where}: element {element!r}; a 3DGS .ply has one 'vertex' element")
        elif parts[0] == "property":
            if parts[1] == "list":
                raise PlyError(f"{where}: list property {parts[-1]!r}; 3DGS vertices have scalar properties only")
            if parts[1] not in _TYPES:
                raise PlyError(f"{where}: property {parts[2]!r} has unknown type {parts[1]!r}")
            props.append((parts[2], parts[1]))
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        raise PlyError(f"{where}: format {fmt!r}; supported: binary_little_endian, binary_big_endian")
    if count is None:
        raise PlyError(f"{where}: no 'element vertex N' line")
    return count, fmt, end + len(b"end_header\n"), props


def parse_ply(data: bytes, where: str = "<bytes>") -> GaussianScene:
    """A :class:`GaussianScene` from the bytes of a 3DGS ``.ply``; :class:`PlyError` if malformed."""
    count, fmt, offset, props = _parse_header(data, where)
    names = [n for n, _ in props]
    missing = [n for n in _REQUIRED if n not in names]
    if missing:
        raise PlyError(f"{where}: missing 3DGS attribute(s) {', '.join(missing)}; have {', '.join(names)}")
    rest_ids = sorted(int(m.group(1)) for n in names if (m := _F_REST.match(n)))
    if rest_ids != list(range(len(rest_ids))) or len(rest_ids) not in (0, 9, 24, 45):
        raise PlyError(f"{where}: f_rest columns {rest_ids[:3]}..(n={len(rest_ids)}) must be "
                       "f_rest_0..f_rest_{M-1} with M in 0, 9, 24, 45 (SH degree 0..3)")
    end = "<" if fmt == "binary_little_endian" else ">"
    dtype = np.dtype([(n, end + _TYPES[t]) for n, t in props])
    need = count * dtype.itemsize
    have = len(data) - offset
    if have < need:
        raise PlyError(f"{where}: truncated: {count} vertices need {need} bytes of data, found {have}")
    if have > need:
        raise PlyError(f"{where}: {have - need} unexpected bytes after {count} vertices")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)

    def cols(ns: list[str]) -> torch.Tensor:
        if not ns:
            return torch.zeros(count, 0)
        return torch.from_numpy(np.stack([arr[n].astype(np.float32) for n in ns], axis=1).reshape(count, len(ns)))

    k = len(rest_ids) // 3
    f_rest = cols([f"f_rest_{i}" for i in range(3 * k)])  # (N, 3K) channel-major
    known = set(_REQUIRED) | set(_NORMALS) | {f"f_rest_{i}" for i in rest_ids}
    return GaussianScene(
        means=cols(["x", "y", "z"]),
        log_scales=cols(["scale_0", "scale_1", "scale_2"]),
        quats=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=cols(["opacity"])[:, 0].contiguous(),
        sh_dc=cols(["f_dc_0", "f_dc_1", "f_dc_2"]),
        sh_rest=f_rest.reshape(count, 3, k).transpose(1, 2).contiguous(),
        normals=cols(_NORMALS) if all(n in names for n in _NORMALS) else None,
        extra={n: torch.from_numpy(arr[n].astype(np.float32).copy()) for n in names if n not in known},
    )


def read_ply(path: str | os.PathLike) -> GaussianScene:
    """Read a 3DGS ``.ply``; raises :class:`PlyError` naming the file and the problem."""
    with open(path, "rb") as f:
        return parse_ply(f.read(), where=os.fspath(path))


def ply_bytes(scene: GaussianScene) -> bytes:
    """The bytes of the standard 3DGS ``.ply`` for ``scene`` (float32, little-endian)."""
    n, k = len(scene), scene.sh_rest.shape[1]
    columns: list[tuple[str, torch.Tensor]] = [(c, scene.means[:, i]) for i, c in enumerate("xyz")]
    if scene.normals is not None:
        columns += [(c, scene.normals[:, i]) for i, c in enumerate(_NORMALS)]
    columns += [(f"f_dc_{i}", scene.sh_dc[:, i]) for i in range(3)]
    rest = scene.sh_rest.transpose(1, 2).reshape(n, 3 * k)  # channel-major, as 3DGS writes it
    columns += [(f"f_rest_{i}", rest[:, i]) for i in range(3 * k)]
    columns += [("opacity", scene.opacity_logits)]
    columns += [(f"scale_{i}", scene.log_scales[:, i]) for i in range(3)]
    columns += [(f"rot_{i}", scene.quats[:, i]) for i in range(4)]
    columns += list(scene.extra.items())
    arr = np.empty(n, dtype=np.dtype([(c, "<f4") for c, _ in columns]))
    for c, t in columns:
        arr[c] = t.detach().to("cpu", torch.float32).numpy()
    header = "ply\nformat binary_little_endian 1.0\n" f"element vertex {n}\n"
    header += "".join(f"property float {c}\n" for c, _ in columns) + "end_header\n"
    return header.encode("ascii") + arr.tobytes()


def write_ply(scene: GaussianScene, path: str | os.PathLike) -> int:
    """Write ``scene`` as a standard 3DGS ``.ply`` atomically; returns the file size in bytes."""
    data = ply_bytes(scene)
    atomic_write_bytes(path, data)
    return len(data)
