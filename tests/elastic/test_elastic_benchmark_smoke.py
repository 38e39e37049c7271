import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_runs_every_phase(tmp_path):
    spec = importlib.util.spec_from_file_location("elastic_bench_run", ROOT / "benchmarks/elastic/run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--quiet", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "elastic_flextron.json").read_text())
    m = rec["metrics"]
    assert abs(m["ppl_permuted_full"] - m["ppl_original"]) < 1e-3 * m["ppl_original"]
    assert len(m["router_sweep"]) == 8 and len(m["exported"]) == 3 and len(m["scratch"]) == 3
    assert m["elastic_training"]["tokens"] > 0
    for e in m["exported"]:  # exported dense model computes what the elastic model does in that config
        assert abs(e["ppl"] - e["elastic_ppl"]) < 1e-3 * e["elastic_ppl"]
    for r in m["router_sweep"]:
        assert r["router"]["lut_ms"] <= r["target_ms"] + 1e-9 and r["uniform"]["lut_ms"] <= r["target_ms"] + 1e-9
    assert set(rec["baseline"]) == {"pruned_only", "scratch"}
    for name in ("latency_table.json", "static_router.safetensors", "elastic_flextron.png"):
        assert (tmp_path / name).is_file()
    assert len(list(tmp_path.iterdir())) <= 8
