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
    for r in m["router_sweep"]:  # what route() kept fits by its measured latency; the full-latency target is the last
        for kind in ("router", "router_raw", "uniform", "uniform_best", "uniform_best_calib"):
            assert r[kind]["measured_ms"] <= r["target_ms"] * (1 + 1e-12) and "remeasured_ms" in r[kind]
        assert r["router"]["calib_loss"] <= r["uniform_best_calib"]["calib_loss"] + 1e-9
    assert m["router_sweep"][-1]["target_ms"] == max(m["full_measured_ms"], m["smallest_measured_ms"])
    assert m["router_at_least_best_uniform_calib"] == 8
    assert m["dynamic"]["measured_ms"] > 0 and m["dynamic"]["expected_lut_ms"] > 0
    plan = m["plan"]
    assert plan["steps"] == m["elastic_training"]["steps"] and not plan["cut_by_time"]
    assert rec["config"]["data"] == {"train": "random", "test": "random", "calib": "random"}
    assert set(rec["baseline"]) == {"pruned_only", "scratch"}
    for name in ("latency_table.json", "static_router.safetensors", "elastic_flextron.png"):
        assert (tmp_path / name).is_file()
    assert len(list(tmp_path.iterdir())) <= 8


def test_benchmark_token_plan_is_cut_to_the_wall_clock(tmp_path):
    spec = importlib.util.spec_from_file_location("elastic_bench_run2", ROOT / "benchmarks/elastic/run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["--smoke", "--quiet", "--out", str(tmp_path), "--train-tokens", "1e9", "--wall-seconds", "21",
            "--reserve-seconds", "20", "--scratch-shapes", "0.5"]
    assert mod.main(argv) == 0
    m = json.loads((tmp_path / "elastic_flextron.json").read_text())["metrics"]
    plan, tr = m["plan"], m["elastic_training"]
    assert plan["cut_by_time"] and plan["wanted_tokens"] == 1e9 and 4 <= plan["steps"] < 1e9 / plan["tokens_per_step"]
    assert tr["steps"] <= plan["steps"] and tr["tokens"] == tr["steps"] * plan["tokens_per_step"]
    assert list(m["scratch"]) == ["uniform(kv=1, mlp=64) x 2"] and len(plan["scratch_step_s"]) == 1
    assert m["scratch"]["uniform(kv=1, mlp=64) x 2"]["tokens"] <= tr["tokens"]
