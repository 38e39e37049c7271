"""The GPU benchmark's --smoke mode: the same code path on a tiny random model on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
    assert set(m["quality"]["kv_ratio"]) == {f"{p}@{f}%" for p in ("h2o", "streaming", "local") for f in (50, 20, 10)}
    assert len(m["quality"]["elastic_ppl"]) == 8
    assert (tmp_path / "plan_fit_grid.png").stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] and len([p for p in tmp_path.iterdir() if p.is_file()]) <= 8
