import importlib.util
import json
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]


def _mod():
    spec = importlib.util.spec_from_file_location("elastic_overfit_check", ROOT / "benchmarks/plan/elastic_overfit_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny(path, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def _tokens(path, seed):
    path.write_bytes(lzma.compress(np.random.default_rng(seed).integers(0, 64, 400).astype("<u2").tobytes()))
    return path


def test_overfit_check_compares_train_and_test_windows_against_the_base(tmp_path):
    mod = _mod()
    base, other = _tiny(tmp_path / "base", 0), _tiny(tmp_path / "other", 1)
    tr, te = _tokens(tmp_path / "tr.u16.xz", 0), _tokens(tmp_path / "te.u16.xz", 1)
    args = ["--base", str(base), "--train", str(tr), "--test", str(te), "--windows", "3", "--length", "16",
            "--out", str(tmp_path / "o")]
    assert mod.main(["--elastic", str(base), *args]) == 0
    rec = json.loads((tmp_path / "o" / "plan_elastic_overfit.json").read_text())["metrics"]
    assert rec["verdict"] == "no loss on test" and rec["test_ppl_ratio"] == 1.0  # the same model: equal
    assert mod.main(["--elastic", str(other), *args]) == 0
    rec = json.loads((tmp_path / "o" / "plan_elastic_overfit.json").read_text())["metrics"]
    a, b = rec["rows"]
    expect = ("overfit" if b["train_ppl"] < a["train_ppl"] and b["test_ppl"] > a["test_ppl"] else
              "worse on both" if b["test_ppl"] > a["test_ppl"] else "no loss on test")
    assert rec["verdict"] == expect and rec["test_ppl_ratio"] == b["test_ppl"] / a["test_ppl"]
    with pytest.raises(SystemExit, match="--elastic .*not found"):
        mod.main(["--elastic", str(tmp_path / "missing"), *args])
    with pytest.raises(SystemExit, match="--length"):
        mod.main(["--elastic", str(base), *args[:-4], "--length", "1", "--out", str(tmp_path / "o")])
