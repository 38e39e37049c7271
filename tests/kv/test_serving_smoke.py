import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_serving_benchmark_smoke(tmp_path):
    """benchmarks/kv/serving.py --smoke: the GPU script's code path on a tiny CPU model (compiled
    with the eager backend): rows, ratios in the summary, an incremental JSON record."""
    spec = importlib.util.spec_from_file_location("kv_serving", ROOT / "benchmarks" / "kv" / "serving.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path), "--prompts", "16",
                     "--rows", "hf_static,h2o_20,local_10,h2o_dynamic,h2o_20_reduce,h2o_20_triton"]) == 0
    rec = json.loads((tmp_path / "kv_serving.json").read_text())
    rows = rec["metrics"]["rows"]
    done = {(r["row"], r["batch"]) for r in rows if "decode_ms_per_step" in r}
    assert {("hf_static", 1), ("hf_static", 2), ("h2o_20", 1), ("h2o_20", 2), ("local_10", 2)} <= done, rows
    assert all(r["new_tokens"] == 6 and r["decode_ms_per_step"] > 0 and r["fraction_of_bandwidth_limit"] > 0
               for r in rows if "decode_ms_per_step" in r)
    summary = rec["metrics"]["summary"]
    assert any("step_ratio" in k for k in summary) and any("throughput_ratio" in k for k in summary)
    assert summary["h2o20_plain_generate_large_batch"]["batch"] == 4
    assert summary["h2o20_reduce_over_matmul_step_ratio_b2_p16"] > 0  # the A/B of the fused reductions
    assert summary["h2o20_triton_over_matmul_step_ratio_b2_p16"] > 0  # ... and of the Triton decode op
    assert summary["h2o20_triton_over_hf_static_step_ratio_b2_p16"] > 0
    assert {("h2o_20_triton", 1), ("h2o_20_triton", 2)} <= done
    assert all(r["cudagraph_skips"] >= 0 and r["graphs_compiled"] >= 0 for r in rows if "decode_ms_per_step" in r)
    assert rec["commit"] and rec["config"]["copy_bandwidth_gbps"] > 0



def test_serving_loop_rows_smoke(tmp_path):
    """The loop rows (kv.greedy_generate) beside generate's: same record fields, the same-loop ratio
    and the loop's own gain in the summary; they generate the full number of tokens."""
    mod = _serving("kv_serving_loop")
    assert mod.main(["--smoke", "--out", str(tmp_path), "--prompts", "16", "--no-sweep", "--rows",
                     "hf_static,hf_static_loop,h2o_20_triton,h2o_20_loop,h2o_20_loop_compiled"]) == 0
    rec = json.loads((tmp_path / "kv_serving.json").read_text())
    rows = {r["row"]: r for r in rec["metrics"]["rows"]}
    assert set(rows) == {"hf_static", "hf_static_loop", "h2o_20_triton", "h2o_20_loop", "h2o_20_loop_compiled"}, rows
    for name in ("hf_static_loop", "h2o_20_loop", "h2o_20_loop_compiled"):
        r = rows[name]
        assert r["new_tokens"] == 6 and r["decode_ms_per_step"] > 0 and r["fraction_of_bandwidth_limit"] > 0
        assert r["warmup_s"] > 0 and r["prefill_s"] > 0 and r["replays"] == 0  # CPU: eager steps, no graph
    s = rec["metrics"]["summary"]
    for key in ("h2o20_loop_over_hf_static_loop_step_ratio_b2_p16", "h2o20_loop_compiled_over_hf_static_loop_step_ratio_b2_p16",
                "hf_static_loop_over_hf_static_step_ratio_b2_p16", "h2o20_loop_over_hf_static_step_ratio_b2_p16"):
        assert s[key] > 0, key


def test_serving_benchmark_profile_smoke(tmp_path):
    """``--profile``: per row, a profiled extra generate with per-step counts; on the CPU (eager
    backend, nothing replayed) the Triton decode op's host calls are one per layer and step, the
    matmul row has none, and there are no CUDA-graph replays or launches."""
    spec = importlib.util.spec_from_file_location("kv_serving", ROOT / "benchmarks" / "kv" / "serving.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path), "--prompts", "16", "--no-sweep", "--profile",
                     "--rows", "h2o_20,h2o_20_triton"]) == 0
    rec = json.loads((tmp_path / "kv_serving.json").read_text())
    prof = {r["row"]: r["profile"] for r in rec["metrics"]["rows"]}
    assert set(prof) == {"h2o_20", "h2o_20_triton"} and rec["config"]["profile"]
    assert prof["h2o_20_triton"]["op_calls"] == {"anybudget::slot_decode_triton": 2.0}  # 2 layers
    assert prof["h2o_20"]["op_calls"] == {}
    for p in prof.values():
        assert p["steps"] == 6 and p["wall_ms"] > 0
        assert p["graph_launches"] == p["kernel_launches"] == p["captures"] == 0
        assert p["cudagraph_tree_timed_call"] is None  # no CUDA-graph tree on the CPU
    with pytest.raises(SystemExit, match="--layers 0"):
        mod.main(["--smoke", "--layers", "0"])

def test_static_reuse_check_smoke(tmp_path):
    """benchmarks/kv/static_reuse.py --smoke: the GPU check's parent/child code path on a tiny CPU
    model (one variant, in its own process): the reused cache's tokens equal a fresh cache's."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kv" / "static_reuse.py"), "--smoke", "--out",
                        str(tmp_path), "--variants", "reuse_cudagraphs"], capture_output=True, text=True, env=env,
                       check=False, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rec = json.loads((tmp_path / "kv_static_reuse.json").read_text())
    (row,) = rec["metrics"]["rows"]
    assert row["ok"] and row["second_equals_fresh"] and row["free_slot_in_every_row"]
    assert row["kept_budget_in_every_row"] and row["recent_window_kept"] and row["positions_unique"]
    assert row["share_equal_to_dynamic"] == 1.0 and rec["metrics"]["current_code_ok"]
    assert row["rows_identical"] == row["rows"] == 3 and row["median_top2_gap_all_steps"] >= 0


def test_divergence_finds_the_first_differing_step_and_its_gap():
    import sys

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks" / "kv"))
    from static_reuse import divergence

    ref = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    got = torch.tensor([[1, 2, 9, 9], [5, 6, 7, 8]])
    scores = torch.zeros(2, 4, 10)
    scores[..., 0], scores[..., 1] = 2.0, 1.0  # gap 1 everywhere
    scores[0, 2, 1] = 1.99  # a near-tie where row 0 first differs
    d = divergence(got, ref, scores)
    assert d["rows_identical"] == 1 and d["rows"] == 2 and d["median_first_divergence_step"] == 2
    assert abs(d["median_top2_gap_at_first_divergence"] - 0.01) < 1e-5 and d["median_top2_gap_all_steps"] == 1.0


def test_serving_plan_without_sweeps_runs_every_row_at_its_reference_batch():
    spec = importlib.util.spec_from_file_location("kv_serving_plan", ROOT / "benchmarks" / "kv" / "serving.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    jobs, ref = mod.plan([2048, 8192], smoke=False, do_sweep=False)
    assert all(b == [ref[p]] for r, p, b in jobs if r != "h2o_dynamic")
    full, _ = mod.plan([2048, 8192], smoke=False)
    assert {r for r, _, _ in jobs} == {r for r, _, _ in full} and len(full) > len(jobs)


def test_serving_summary_compares_h2o_with_the_faster_of_the_two_hf_static_compiles():
    spec = importlib.util.spec_from_file_location("kv_serving_sum", ROOT / "benchmarks" / "kv" / "serving.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def row(name, p, ms):
        return {"row": name, "prompt": p, "batch": 64 if p == 2048 else 16, "decode_ms_per_step": ms,
                "decode_tok_per_s": 1e3 / ms, "end_to_end_tok_per_s": 5e2 / ms, "fraction_of_bandwidth_limit": 0.3}
    rows = [row("hf_static", 2048, 11.0), row("hf_static_default", 2048, 10.0), row("h2o_20", 2048, 5.0),
            row("hf_static", 8192, 9.0), row("h2o_20", 8192, 6.0)]  # no default compile at 8k: the other one
    s = mod.summarize(rows, [2048, 8192], {2048: 64, 8192: 16})
    assert s["h2o20_over_hf_static_step_ratio_b64_p2048"] == 11.0 / 5.0
    assert s["h2o20_over_fastest_hf_static_step_ratio_b64_p2048"] == 10.0 / 5.0
    assert s["fastest_hf_static_b64_p2048"] == "hf_static_default"
    assert s["hf_static_dynamic_dims_over_default_step_ratio_b64_p2048"] == 10.0 / 11.0
    assert s["h2o20_over_fastest_hf_static_step_ratio_b16_p8192"] == 9.0 / 6.0
    jobs, _ = mod.plan([2048, 8192], smoke=False, do_sweep=False)
    assert [r for r, _, _ in jobs[:6]] == ["hf_static", "h2o_20", "hf_static_default"] * 2  # before any guard stops


def test_serving_loop_rows_sweep_and_compare_at_their_largest_batches():
    mod = _serving("kv_serving_loop_sweep")
    jobs, ref = mod.plan([2048], smoke=False, do_sweep=True)
    loop = {r: b for r, _, b in jobs if r.startswith("h2o_20_loop")}
    assert loop["h2o_20_loop_compiled"] == [8, 16, 32, 64, 128, 256, 512, 1024] and ref[2048] in loop["h2o_20_loop"]

    def row(name, b, tok_s):
        return {"row": name, "prompt": 2048, "batch": b, "decode_ms_per_step": b / tok_s * 1e3, "decode_tok_per_s": tok_s,
                "end_to_end_tok_per_s": tok_s / 2, "fraction_of_bandwidth_limit": b / 2048}
    rows = [row("hf_static", 64, 4000.0), row("hf_static", 256, 8000.0), row("hf_static_loop", 128, 6000.0),
            row("h2o_20_loop_compiled", 64, 9000.0), row("h2o_20_loop_compiled", 1024, 30000.0)]
    s = mod.summarize(rows, [2048], ref)
    assert s["h2o20_loop_compiled_over_hf_static_throughput_ratio_max_batch_p2048"] == 30000.0 / 8000.0
    assert s["h2o20_loop_compiled_over_hf_static_loop_throughput_ratio_max_batch_p2048"] == 30000.0 / 6000.0
    assert s["h2o20_loop_compiled_fraction_of_bandwidth_limit_max_batch_p2048"] == 0.5
    assert s["max_batch_p2048"] == {"h2o_20_loop_compiled": 1024, "hf_static": 256, "hf_static_loop": 128}
    assert "h2o20_loop_over_hf_static_throughput_ratio_max_batch_p2048" not in s  # a row that did not run


def _serving(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "kv" / "serving.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_serving_runs_the_given_rows_in_the_given_order_and_lists_rows_that_do_not_fit(tmp_path):
    """``--rows`` order is the run order (the row that must run goes first); a row whose expected
    compile does not fit the time left is skipped with a note in the record and in the summary;
    a warm-up past ``--warmup-cap`` is stopped and its row listed; the run still saves its record."""
    mod = _serving("kv_serving_order")
    assert mod.main(["--smoke", "--out", str(tmp_path), "--prompts", "16", "--no-sweep", "--notes", "smoke",
                     "--rows", "h2o_20_tritonop,h2o_20,h2o_20_triton"]) == 0
    rec = json.loads((tmp_path / "kv_serving.json").read_text())
    assert [r["row"] for r in rec["metrics"]["rows"]] == ["h2o_20_tritonop", "h2o_20", "h2o_20_triton"]
    assert rec["config"]["row_order"] == ["h2o_20_tritonop", "h2o_20", "h2o_20_triton"]
    assert rec["config"]["notes"] == "smoke" and "skipped_rows" not in rec["metrics"]["summary"]
    assert rec["metrics"]["summary"]["h2o20_tritonop_over_matmul_step_ratio_b2_p16"] > 0

    # a first batch expected to compile for 1e6 s does not fit a 1-minute budget: listed, not run
    assert mod.main(["--smoke", "--out", str(tmp_path), "--name", "guard", "--prompts", "16", "--no-sweep",
                     "--minutes", "1", "--compile-s", "1e6", "--rows", "h2o_20"]) == 0
    rec = json.loads((tmp_path / "guard.json").read_text())
    assert rec["metrics"]["rows"] == []
    (skip,) = rec["metrics"]["skipped"]
    assert skip["row"] == "h2o_20" and "wall-clock guard: needs ~1000000 s (compile 1000000 s" in skip["why"]
    assert rec["metrics"]["summary"]["skipped_rows"].startswith("h2o_20 b2 p16: wall-clock guard")

    # a warm-up past its cap is stopped: the row is listed with the cap and the next row is still tried
    assert mod.main(["--smoke", "--out", str(tmp_path), "--name", "cap", "--prompts", "16", "--no-sweep",
                     "--warmup-cap", "0.001", "--rows", "h2o_20,hf_static"]) == 0
    rec = json.loads((tmp_path / "cap.json").read_text())
    whys = {k["row"]: k["why"] for k in rec["metrics"]["skipped"]}
    assert set(whys) == {"h2o_20", "hf_static"} and all("ran past its cap of 0 s" in w for w in whys.values()), whys
    with pytest.raises(SystemExit, match="--rows h2o_99: not rows of the plan"):
        mod.main(["--smoke", "--out", str(tmp_path), "--rows", "h2o_99"])


def test_row_guard_estimates_a_first_batch_as_the_longest_compile_seen():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks" / "kv"))
    from row_guard import WarmupCapped, estimate_s, warmup_limit

    assert estimate_s(None, 64, [], 180.0, 30.0) == 210.0  # nothing measured yet: the default
    assert estimate_s(None, 64, [255.3, 169.2], 180.0, 30.0) == 285.3  # the longest warm-up so far
    assert estimate_s((64, 12.0), 128, [255.3], 180.0, 30.0) == 24.0  # a later batch: scaled
    with pytest.raises(ValueError, match="batch=0"):
        estimate_s(None, 0, [], 1.0, 1.0)
    with pytest.raises(WarmupCapped, match="no time left"), warmup_limit(-1.0):
        pass
    with warmup_limit(None), warmup_limit(5.0):
        pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_row_guard_alarm_still_raises_when_the_signal_lands_in_a_finalizer():
    """A signal inside ``__del__`` (or a gc callback) is printed as "Exception ignored" and the block runs on: the cap
    must still be reported, at the block's end (CI saw a 1-ms warm-up cap swallowed by torch's gc callback)."""
    import sys
    import time

    sys.path.insert(0, str(ROOT / "benchmarks" / "kv"))
    from row_guard import alarm

    class SlowFinalizer:
        def __del__(self):
            time.sleep(0.2)  # the 10-ms alarm fires here, where Python cannot raise

    t0 = time.perf_counter()
    with pytest.raises(TimeoutError, match="late"), alarm(0.01, lambda: TimeoutError("late")):
        SlowFinalizer()
        after = time.perf_counter()  # reached: the finalizer swallowed the signal's exception
    assert after - t0 >= 0.01
    with alarm(5.0, lambda: TimeoutError("never")):  # a block that ends in time raises nothing
        pass


def test_serving_sweep_batches_replace_the_doubling_and_bad_lists_are_refused(capsys):
    mod = _serving("kv_serving_sweep_batches")
    jobs, ref = mod.plan([2048], smoke=False, do_sweep=True, sweep_batches=[256, 512, 1024])
    sweeps = {r: b for r, _, b in jobs if r in ("hf_static", "h2o_20_loop_compiled") and len(b) > 1}
    assert sweeps == {"hf_static": [256, 512, 1024], "h2o_20_loop_compiled": [256, 512, 1024]}
    assert ("hf_static", 2048, [ref[2048]]) in jobs  # the reference batch still runs first
    for bad in ("0,256", "a,b"):
        with pytest.raises(SystemExit, match="--sweep-batches"):
            mod.main(["--smoke", "--sweep-batches", bad, "--out", "/tmp/never"])
        with pytest.raises(SystemExit, match="--sweep-batches"):  # checked before the model or the device
            mod.main(["--sweep-batches", bad, "--out", "/tmp/never"])
