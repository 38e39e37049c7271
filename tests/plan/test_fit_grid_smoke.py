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
    """compile_probe.py --smoke (static shapes; shared graphs: test_plan_static): one graph and one
    compiled frame per candidate, none per decoding step, no graph break."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks/plan/compile_probe.py"
    spec = importlib.util.spec_from_file_location("plan_compile_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path), "--modes", "static"]) == 0
    m = json.loads((tmp_path / "plan_compile_probe.json").read_text())["metrics"]
    rows = m["static"]["rows"]
    assert [(r["new_graphs"], r["frames"], r["recompiles"], r["graph_breaks"]) for r in rows] == [(1, 1, 0, 0)] * 2
    assert m["static"]["graphs"] == 2 and "bytecode_tracing" in m["static"]["compile_times"]
