"""The compact LightGaussian file (``.lgz``): every attribute of a :class:`QuantizedScene`, with
VQ indices bit-packed at ceil(log2 K) bits (13 for 8,192 codewords), the VQ mask at one bit per
Gaussian, float16 codebook / colours / opacity / scales / rotations, float32 (or 16-bit) positions,
all deflated together -- the analogue of the released code's zipped ``.npz`` files.

Layout: ``b"LGZ1"``, a little-endian u32 header length, a JSON header (counts, degree, sections
with dtype / shape / byte length), then the zlib stream of the concatenated sections.
``decode(encode(q))`` gives back ``q`` bit for bit, and ``decode(...).to_scene()`` a standard scene.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib

import numpy as np
import torch

from anybudget.io import atomic_write_bytes
from anybudget.splat.ply import write_ply
from anybudget.splat.quantize import QuantizedScene, dequantize_positions

__all__ = [
    "CodecError",
    "decode",
    "decompress_to_ply",
    "encode",
    "load_lgz",
    "pack_bits",
    "save_lgz",
    "section_sizes",
    "unpack_bits",
]

MAGIC = b"LGZ1"


class CodecError(ValueError):
    """A ``.lgz`` stream that is not one, is truncated or is inconsistent."""


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """``values`` (unsigned, each < 2**bits) as a little-endian bit stream of ``bits`` per value."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size and int(v.max()) >= 1 << bits:
        raise ValueError(f"a value {int(v.max())} does not fit in bits={bits}")
    b = ((v[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(b.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, count: int, bits: int) -> np.ndarray:
    b = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits, bitorder="little")
    return (b.reshape(count, bits).astype(np.uint64) << np.arange(bits, dtype=np.uint64)).sum(1)


def _index_bits(k: int) -> int:
    return max(1, math.ceil(math.log2(max(k, 2))))


def _sections(q: QuantizedScene) -> list[tuple[str, str, tuple, bytes]]:
    n, m, k = len(q), int(q.indices.shape[0]), int(q.codebook.shape[0])
    f16 = lambda t: t.detach().cpu().to(torch.float16).numpy().astype("<f2")
    out = []
    if q.means_q is not None:
        out.append(("means_q", "<u2", (n, 3), q.means_q.cpu().numpy().astype("<u2").tobytes()))
        out.append(("means_range", "<f4", (2, 3), q.means_range.cpu().numpy().astype("<f4").tobytes()))
    else:
        out.append(("means", "<f4", (n, 3), q.means.cpu().numpy().astype("<f4").tobytes()))
    out += [
        ("opacity", "<f2", (n,), f16(q.opacity).tobytes()),
        ("log_scales", "<f2", (n, 3), f16(q.log_scales).tobytes()),
        ("quats", "<f2", (n, 4), f16(q.quats).tobytes()),
        ("vq_mask", "bits1", (n,), pack_bits(q.vq_mask.cpu().numpy().astype(np.uint8), 1)),
        ("indices", f"bits{_index_bits(k)}", (m,), pack_bits(q.indices.cpu().numpy(), _index_bits(k))),
        ("codebook", "<f2", tuple(q.codebook.shape), f16(q.codebook).tobytes()),
        ("sh_fp16", "<f2", tuple(q.sh_fp16.shape), f16(q.sh_fp16).tobytes()),
    ]
    return out


def section_sizes(q: QuantizedScene) -> dict[str, int]:
    """Bytes of each section before deflate (the per-attribute size breakdown)."""
    return {name: len(data) for name, _, _, data in _sections(q)}


def encode(q: QuantizedScene, level: int = 9) -> bytes:
    secs = _sections(q)
    header = {"version": 1, "n": len(q), "sh_degree": q.sh_degree,
              "sections": [[name, dt, list(shape), len(data)] for name, dt, shape, data in secs]}
    hb = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(hb)) + hb + zlib.compress(b"".join(d for *_, d in secs), level)


def decode(data: bytes) -> QuantizedScene:
    """The :class:`QuantizedScene` stored in ``data``; :class:`CodecError` if it is not valid."""
    if data[:4] != MAGIC or len(data) < 8:
        raise CodecError("not a .lgz stream (magic LGZ1 missing)")
    (hl,) = struct.unpack("<I", data[4:8])
    try:
        header = json.loads(data[8 : 8 + hl])
        payload = zlib.decompress(data[8 + hl :])
    except (ValueError, zlib.error) as e:
        raise CodecError(f"corrupt or truncated .lgz stream: {e}") from None
    if header.get("version") != 1:
        raise CodecError(f"version={header.get('version')!r}; this reader knows version 1")
    arrays, off = {}, 0
    for name, dt, shape, nbytes in header["sections"]:
        raw = payload[off : off + nbytes]
        if len(raw) != nbytes:
            raise CodecError(f"section {name!r} truncated: {len(raw)} of {nbytes} bytes")
        off += nbytes
        if dt.startswith("bits"):
            arrays[name] = torch.from_numpy(unpack_bits(raw, int(np.prod(shape)), int(dt[4:])).astype(np.int64))
        else:
            arrays[name] = torch.from_numpy(np.frombuffer(raw, dtype=dt).reshape(shape).copy())
    if off != len(payload):
        raise CodecError(f"{len(payload) - off} unexpected bytes after the last section")
    if "means_q" in arrays:
        mq = arrays["means_q"].to(torch.int32)
        lo, hi = arrays["means_range"]
        means, rng = dequantize_positions(mq, lo, hi), arrays["means_range"]
    else:
        means, mq, rng = arrays["means"], None, None
    return QuantizedScene(
        means=means, opacity=arrays["opacity"].to(torch.float16), log_scales=arrays["log_scales"].to(torch.float16),
        quats=arrays["quats"].to(torch.float16), vq_mask=arrays["vq_mask"].bool(),
        indices=arrays["indices"].to(torch.int32), codebook=arrays["codebook"].to(torch.float16),
        sh_fp16=arrays["sh_fp16"].to(torch.float16), sh_degree=int(header["sh_degree"]), means_q=mq, means_range=rng,
    )


def save_lgz(q: QuantizedScene, path: str | os.PathLike) -> int:
    """Write ``q`` atomically; returns the file size in bytes (the paper's "size")."""
    data = encode(q)
    atomic_write_bytes(path, data)
    return len(data)


def load_lgz(path: str | os.PathLike) -> QuantizedScene:
    with open(path, "rb") as f:
        try:
            return decode(f.read())
        except CodecError as e:
            raise CodecError(f"{os.fspath(path)}: {e}") from None


def decompress_to_ply(lgz_path: str | os.PathLike, ply_path: str | os.PathLike) -> int:
    """Decode a ``.lgz`` into a standard 3DGS ``.ply``; returns the ``.ply``'s size."""
    return write_ply(load_lgz(lgz_path).to_scene(), ply_path)
