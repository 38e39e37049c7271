"""Distillation in the reference-LM trainer: the KD term's value, its argument checks, and a CPU run through it."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks/zoo"))
import train_lm_v3  # noqa: E402
from test_reflm_v3 import _stage  # noqa: E402
from train_lm_v2 import kd_loss  # noqa: E402


def test_kd_loss_is_the_tempered_kl_per_token():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 11, generator=g), torch.randn(2, 3, 11, generator=g)
    for temp in (1.0, 2.0):
        p_t = torch.softmax(t / temp, -1)
        manual = (p_t * (torch.log(p_t) - torch.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
        torch.testing.assert_close(kd_loss(s, t, temp), manual, rtol=1e-5, atol=1e-6)
    assert kd_loss(t, t, 1.0).abs() < 1e-6  # a student equal to its teacher pays nothing
    assert kd_loss(s, t, 1.0) > 0.1


@pytest.mark.parametrize("flag,value,msg", [("--kd-alpha", "1.5", "must be in \\[0, 1\\]"), ("--kd-temp", "0", "must be > 0")])
def test_bad_kd_arguments_are_refused(tmp_path, capsys, flag, value, msg):
    _, mpath = _stage(tmp_path, n_parts=1, tokens=20_000)
    with pytest.raises(SystemExit):
        train_lm_v3.main(["--smoke", "--out", str(tmp_path / "o"), "--root", str(tmp_path), "--manifest", str(mpath),
                          flag, value])
    assert msg.replace("\\", "") in capsys.readouterr().err


def test_a_kept_model_distils_into_a_student(tmp_path):
    _, mpath = _stage(tmp_path, n_parts=1, tokens=40_000)
    common = ["--smoke", "--root", str(tmp_path), "--manifest", str(mpath)]
    teacher = tmp_path / "teacher"
    assert train_lm_v3.main(common + ["--out", str(tmp_path / "t"), "--keep", str(teacher), "--no-pack"]) == 0
    assert (teacher / "model.safetensors").exists() and not list((tmp_path / "t").glob("pack.tar.part-*"))
    with pytest.raises(FileNotFoundError, match="--teacher"):
        train_lm_v3.main(common + ["--out", str(tmp_path / "x"), "--teacher", str(tmp_path / "nope")])
    out = tmp_path / "s"
    assert train_lm_v3.main(common + ["--out", str(out), "--teacher", str(teacher), "--kd-alpha", "1.0"]) == 0
    rec = json.loads((out / "train_record.json").read_text())
    assert rec["config"]["teacher"] == str(teacher) and rec["config"]["kd_alpha"] == 1.0
    assert rec["metrics"]["steps"] == 12
    assert all(torch.isfinite(torch.tensor(r["bits_per_byte"])) for r in rec["metrics"]["eval"].values())
