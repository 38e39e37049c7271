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


def test_json_and_plot_pair_json_first_failed_plot_one_line(tmp_path, capsys, monkeypatch):
    from anybudget.io import read_json, write_json_and_plot

    monkeypatch.delenv("ANYBUDGET_DEBUG", raising=False)
    seen = []

    def draw(path):
        seen.append((tmp_path / "r.json").is_file())  # the JSON is already on disk
        raise RuntimeError("bad axis\nsecond line")

    jp, png = write_json_and_plot(tmp_path / "r.json", {"a": 1}, tmp_path / "r.png", draw)
    assert seen == [True] and png is None and read_json(jp) == {"a": 1}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "RuntimeError: bad axis" in err
    assert not (tmp_path / "r.png").exists()


def test_json_and_plot_missing_matplotlib_and_blocked_png(tmp_path, capsys, monkeypatch):
    from anybudget.io import save_figure, write_json_and_plot, write_plot

    monkeypatch.delenv("ANYBUDGET_DEBUG", raising=False)

    def no_mpl(path):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    assert write_plot(tmp_path / "x.png", no_mpl) is None
    assert "matplotlib is missing: pip install 'anybudget[plot]'" in capsys.readouterr().err
    (tmp_path / "o.png").mkdir()  # the PNG's path is blocked by a folder

    def draw(path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1])
        save_figure(fig, path)

    jp, png = write_json_and_plot(tmp_path / "o.json", {"b": 2}, tmp_path / "o.png", draw)
    assert jp.is_file() and png is None and "warning:" in capsys.readouterr().err
    jp, png = write_json_and_plot(tmp_path / "p.json", {"b": 2}, tmp_path / "p.png", draw)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp*"))
    monkeypatch.setenv("ANYBUDGET_DEBUG", "1")
    with pytest.raises(ModuleNotFoundError):
        write_plot(tmp_path / "y.png", no_mpl)


def test_check_checkpoint_config_names_every_differing_key():
    from anybudget.io import CheckpointMismatch, check_checkpoint_config

    check_checkpoint_config("c.json", None, {"a": 1})  # nothing stored: nothing to compare
    check_checkpoint_config("c.json", {"a": [1, 2], "b": "x"}, {"a": (1, 2), "b": "x", "new": 3})
    with pytest.raises(CheckpointMismatch) as e:
        check_checkpoint_config("c.json", {"a": 1, "b": "x", "c": [1]}, {"a": 2, "b": "x", "c": [1, 2]})
    msg = str(e.value)
    assert "\n" not in msg and "'c.json'" in msg
    assert "a: 1 there, 2 now" in msg and "c: [1] there, [1, 2] now" in msg and "b:" not in msg
    assert isinstance(e.value, ValueError)


def test_default_device(monkeypatch):
    import torch

    from anybudget.measure import default_device

    assert default_device("cpu") == "cpu" and default_device(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"


def test_check_checkpoint_config_names_nested_keys():
    from anybudget.io import CheckpointMismatch, check_checkpoint_config

    with pytest.raises(CheckpointMismatch, match=r"\(train\.lr: 0\.1 there, 0\.2 now\)"):
        check_checkpoint_config("d", {"train": {"lr": 0.1, "steps": 3}}, {"train": {"lr": 0.2, "steps": 3}})


def test_results_dir_maps_a_record_to_its_module_folder(tmp_path, monkeypatch):
    assert io.results_module("kv_serving") == "kv" and io.results_module("ssm_table2_scaled_pilot") == "ssm"
    assert io.results_module("kv_serving_runs") == "kv" and io.results_module("plan_fit_grid") == "plan"
    assert io.results_module("demo_time") == "core" and io.results_module("readme_commands") == "core"
    assert io.results_module("kvx_y") == "core"  # only a whole known prefix counts
    assert io.results_dir("nas_search") == io.Path("benchmarks/results/nas")
    assert io.results_dir("elastic_flextron", root=tmp_path) == tmp_path / "elastic"
    monkeypatch.chdir(tmp_path)
    path = io.write_results("prune_unit", {}, {"x": 1})  # no out_dir: the module folder
    assert path == io.Path("benchmarks/results/prune/prune_unit.json") and path.is_file()


def test_model_identity_names_the_weights(tmp_path):
    import hashlib

    from anybudget.io import model_identity

    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        model_identity(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    ident = model_identity(tmp_path)
    assert ident == {"name": "LlamaForCausalLM", "weights_sha256": hashlib.sha256(b"weights").hexdigest()[:16]}
    (tmp_path / "reflm.json").write_text('{"name": "anybudget reference LM v3"}')
    assert model_identity(tmp_path)["name"] == "anybudget reference LM v3"
