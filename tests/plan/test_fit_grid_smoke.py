"""quality_protocol.py's --smoke mode (fit_grid.py's is in test_fit_grid_resume.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quality_protocol_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("plan_quality_protocol", ROOT / "benchmarks/plan/quality_protocol.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "plan_quality_protocol.json").read_text())["metrics"]
    assert set(m["new_token_ppl_by_prompt"]) == {"24", "40"} and m["text"]["first_windows_ppl"] > 1
    assert set(m["kv_ratio_by_prompt"]["24"]) == {"full_ppl", "h2o@20%", "local@20%", "h2o@10%", "local@10%"}


def test_compile_probe_smoke_counts_graphs(tmp_path):
    """compile_probe.py --smoke: static shapes compile one graph per candidate, shared graphs one in all
    (the second sub-network has one KV group: a graph of its own), none per decoding step."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks/plan/compile_probe.py"
    spec = importlib.util.spec_from_file_location("plan_compile_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path), "--modes", "static,shared"]) == 0
    m = json.loads((tmp_path / "plan_compile_probe.json").read_text())["metrics"]
    assert [(r["new_graphs"], r["frames"]) for r in m["static"]["rows"]] == [(1, 1), (1, 1)]
    assert [r["new_graphs"] for r in m["shared"]["rows"]] == [1, 1]  # kv1: compilers specialise size 1
    assert all(r["graph_breaks"] == 0 for mode in m.values() for r in mode["rows"])
