import json
import os

import pytest

from anybudget import io


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "a.json"
    io.atomic_write_json(p, {"x": 1})
    io.atomic_write_json(p, {"x": 2, "nan": float("nan")})
    assert json.loads(p.read_text()) == {"x": 2, "nan": None}
    assert os.listdir(p.parent) == ["a.json"]


def test_failed_write_keeps_old_file(tmp_path):
    p = tmp_path / "w.bin"
    io.atomic_write_bytes(p, b"old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["w.bin"]


def test_bad_input():
    with pytest.raises(TypeError, match="data must be bytes"):
        io.atomic_write_bytes("/tmp/x", "text")
    with pytest.raises(ValueError, match="name='a/b' must be a non-empty file stem"):
        io.results_record("a/b", {}, {})


def test_results_record_fields(tmp_path):
    import torch

    path = io.write_results("unit", {"n": 3}, {"t": torch.tensor([1.5, 2.0])}, {"t": 1}, out_dir=tmp_path)
    rec = json.loads(path.read_text())
    assert set(rec) == {"name", "config", "metrics", "baseline", "device", "torch", "transformers", "commit", "date"}
    assert rec["metrics"]["t"] == [1.5, 2.0]
    assert rec["torch"] == torch.__version__ and rec["date"].startswith("20")
