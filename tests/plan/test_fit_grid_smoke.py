"""The GPU benchmark's --smoke mode: the same code path on a tiny random model on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_fit_grid_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("plan_fit_grid", ROOT / "benchmarks/plan/fit_grid.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--quiet", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "plan_fit_grid.json").read_text())
    m = rec["metrics"]
    assert len(m["grid"]) == 6 and m["summary"]["budgets"] == 6
    for e in m["grid"]:
        for kind in ("plan", "elastic_only", "kv_only"):
            r = e[kind]
            assert "error" in r or r["trials"][-1]["meets"]  # a returned plan met its budget when measured
            if "chosen" in r:
                assert r["chosen"] == r["trials"][-1]["label"]
        if "chosen" in e["elastic_only"]:
            assert e["elastic_only"]["chosen"].endswith(" full")
        if "chosen" in e["kv_only"]:
            assert e["kv_only"]["chosen"].startswith("kv2/mlp128 ")
    assert set(m["quality"]["kv_ratio"]) == {f"{p}@{f}%" for p in ("h2o", "local") for f in (50, 20, 10)}
    assert len(m["quality"]["elastic_ppl"]) == 8
    # quality on the workload's protocol, and a check of every chosen plan on the same windows
    assert m["quality"]["source"]["prompt"] == rec["config"]["workload"]["prompt"]
    assert m["quality"]["source"]["new_tokens"] == rec["config"]["workload"]["new_tokens"]
    chosen = {e[k]["chosen"] for e in m["grid"] for k in ("plan", "elastic_only", "kv_only") if "chosen" in e[k]}
    assert chosen and chosen == set(m["quality_check"])
    for lab, q in m["quality_check"].items():
        if q["exact"]:  # a full cache or the full model: prediction and check are one measurement
            assert q["measured_ppl"] == pytest.approx(q["predicted_ppl"], rel=1e-6), lab
    err = m["summary"]["quality_check_exact_max_rel_err"]
    assert err is None or err < 1e-6
    assert rec["config"]["serve"] == "static" and m["latency_model"]["mode"] == "static"
    assert all(not r["measured"]["compiled"] for r in m["latency_model"]["calibration"])  # eager off CUDA
    assert (tmp_path / "plan_fit_grid.png").stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] and len([p for p in tmp_path.iterdir() if p.is_file()]) <= 8


def test_quality_protocol_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("plan_quality_protocol", ROOT / "benchmarks/plan/quality_protocol.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "plan_quality_protocol.json").read_text())["metrics"]
    assert set(m["new_token_ppl_by_prompt"]) == {"24", "40"} and m["text"]["first_windows_ppl"] > 1
    assert set(m["kv_ratio_by_prompt"]["24"]) == {"full_ppl", "h2o@20%", "local@20%", "h2o@10%", "local@10%"}
