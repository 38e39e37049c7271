import numpy as np
import pytest
import torch
from splat_helpers import random_scene

from anybudget.splat.ply import PlyError, parse_ply, ply_bytes, read_ply, write_ply


def _reference_file(n, degree, rng):
    """A 3DGS .ply built independently of the writer: the header the reference code writes and
    random float32 columns (any bit patterns, including NaN payloads and -0.0)."""
    k = 3 * ((degree + 1) ** 2 - 1)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(k)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    names += ["rot_0", "rot_1", "rot_2", "rot_3"]
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n"
    header += "".join(f"property float {c}\n" for c in names) + "end_header\n"
    data = rng.integers(0, 2**32, size=(n, len(names)), dtype=np.uint64).astype("<u4")
    return header.encode() + data.tobytes(), names, data


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_reference_file_round_trips_bit_exact(tmp_path, degree):
    raw, names, data = _reference_file(37, degree, np.random.default_rng(degree))
    scene = parse_ply(raw)
    assert scene.sh_degree == degree and len(scene) == 37
    assert ply_bytes(scene) == raw
    # channel-major f_rest: column c*K + k is coefficient k of channel c
    k = (degree + 1) ** 2 - 1
    if k:
        col = names.index(f"f_rest_{1 * k + (k - 1)}")
        want = data[:, col].view("<f4")
        got = scene.sh_rest[:, k - 1, 1].numpy()
        assert np.array_equal(want.view("<u4"), got.view("<u4"))
    path = tmp_path / "s.ply"
    size = write_ply(scene, path)
    assert path.read_bytes() == raw and size == len(raw)
    assert read_ply(path).equal(scene)


def test_scene_round_trip_keeps_extra_columns(tmp_path):
    s = random_scene(20, degree=2)
    s.extra["semantic"] = torch.arange(20, dtype=torch.float32)
    back = parse_ply(ply_bytes(s))
    assert back.equal(s) and list(back.extra) == ["semantic"]


def test_truncated_file_raises_and_writes_nothing(tmp_path):
    raw = ply_bytes(random_scene(10))
    with pytest.raises(PlyError, match="truncated"):
        parse_ply(raw[:-5])
    bad = tmp_path / "bad.ply"
    bad.write_bytes(raw[:-5])
    out = tmp_path / "out.ply"
    with pytest.raises(PlyError, match="bad.ply"):
        write_ply(read_ply(bad), out)
    assert not out.exists()


def test_missing_attribute_is_named():
    raw = ply_bytes(random_scene(4)).replace(b"property float opacity\n", b"")
    with pytest.raises(PlyError, match="missing 3DGS attribute.*opacity"):
        parse_ply(raw)


def test_bad_f_rest_count_and_format():
    raw = ply_bytes(random_scene(4, degree=1)).replace(b"property float f_rest_8\n", b"")
    with pytest.raises(PlyError, match="f_rest"):
        parse_ply(raw)
    with pytest.raises(PlyError, match="format"):
        parse_ply(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(PlyError, match="magic"):
        parse_ply(b"not a ply")


def test_big_endian_and_double_columns_are_read():
    s = random_scene(5, degree=0, seed=3)
    raw = ply_bytes(s)
    head, _, body = raw.partition(b"end_header\n")
    arr = np.frombuffer(body, dtype="<f4").reshape(5, -1)
    be = head.replace(b"binary_little_endian", b"binary_big_endian") + b"end_header\n" + arr.astype(">f4").tobytes()
    assert parse_ply(be).equal(s)
    dbl = head.replace(b"property float", b"property double") + b"end_header\n" + arr.astype("<f8").tobytes()
    assert parse_ply(dbl).equal(s)
