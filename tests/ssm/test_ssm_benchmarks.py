"""Smoke modes of the GPU benchmarks (same code paths on a CPU): train_speed and table2_scaled."""

import importlib
import importlib.util
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "ssm"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for m in ("train_speed", "table2_scaled", "table2_worker"):
        sys.modules.pop(m, None)
    return lambda name: importlib.import_module(name)


def test_train_speed_smoke_records_both_steps_and_equal_losses(bench, tmp_path):
    ts = bench("train_speed")
    assert ts.main(["--smoke", "--depths", "2", "--modes", "reference,eager", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "ssm_train_speed_smoke.json").read_text())
    modes = {r["mode"] for r in rec["metrics"]["steps"] if r.get("step_s", 0) > 0}
    assert modes == {"reference", "eager"} and "L2" in rec["metrics"]["speedup"]
    assert rec["metrics"]["loss_curves"]["max_rel_diff_vs_reference"]["eager"] < 1e-4
    assert (tmp_path / "ssm_train_speed_smoke_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert rec["metrics"]["complete"] is True and rec["config"]["time_limit_s"] == 300.0


def test_train_speed_variants_name_known_scans_and_the_gpu_default_known_variants(bench):
    ts = bench("train_speed")
    assert {v[2] for v in ts.VARIANTS.values()} <= set(ts.SCANS)
    assert set(ts.GPU_DEFAULT.split(",")) <= set(ts.VARIANTS) and set(ts.FIRST) <= set(ts.VARIANTS)
    for layout, split, (fwd, bwd), impl in ts.SCANS.values():  # tiles are powers of two, as ScanBlocks needs
        assert layout in ("time_last", "time_first") and impl in ("chunked", "sequential") and isinstance(split, bool)
        assert all(x > 0 and x & (x - 1) == 0 for x in fwd + bwd), (fwd, bwd)
    assert ts.SCANS[ts.VARIANTS["compile+cudagraph+tf"][2]][0] == "time_first"


def test_scan_extras_name_known_scans_and_settings_and_reset_between_variants(bench):
    pytest.importorskip("triton")
    from anybudget.ssm.scan_triton import ScanBlocks

    ts = bench("train_speed")
    assert set(ts.SCAN_EXTRAS) <= set(ts.SCANS)
    assert all(set(e) <= set(ts.SCAN_DEFAULTS) for e in ts.SCAN_EXTRAS.values())
    assert all(hasattr(ScanBlocks, k) for k in ts.SCAN_DEFAULTS)
    saved = {k: getattr(ScanBlocks, k) for k in ("variant", "split_fixed", "bwd_impl", "fwd", "bwd", "bwd_chunked",
                                                 *ts.SCAN_DEFAULTS)}
    try:
        ts.set_named_scan(ts.VARIANTS["compile+cudagraph+tf16+tuned"][2])
        assert ScanBlocks.bwd_autotune is True and ScanBlocks.bwd_chunked == (8, 16, 4)
        ts.set_named_scan(ts.VARIANTS["compile+cudagraph+tf16+adj32"][2])
        assert ScanBlocks.bwd_autotune is False and ScanBlocks.bwd_adjoint == (32, 8)
        ts.set_named_scan(ts.VARIANTS["compile+cudagraph+tf16"][2])  # an earlier variant: the defaults again
        assert {k: getattr(ScanBlocks, k) for k in ts.SCAN_DEFAULTS} == ts.SCAN_DEFAULTS
    finally:
        for k, v in saved.items():
            setattr(ScanBlocks, k, v)
    for name, (_, extra, _) in ts.VARIANTS.items():  # every variant's FastStepConfig overrides are valid
        if "compile_options" in extra:
            from anybudget.ssm.fast_step import FastStepConfig

            assert FastStepConfig(compile=True, **extra).compile_options == extra["compile_options"], name


def test_scan_traffic_bound_counts_each_tensor_once(bench):
    sb = bench("scan_bound")
    b, d, n, seq = 16, 256, 18, 4096
    nbytes = sb.traffic_bytes(b, d, n, seq, 4, block_t=seq)  # one tile: states negligible
    # 11 (b, d, seq) tensors and 6 (b, n, seq) ones (B, C read twice, dB, dC written) in fp32
    assert nbytes == 11 * b * d * seq * 4 + 6 * b * n * seq * 4 + 2 * b * d * n * 4
    assert sb.traffic_bytes(b, d, n, seq, 2, block_t=seq) < 0.6 * nbytes  # bf16 inputs


def test_table2_scaled_resumes_a_cut_run_and_reports_partial_results(bench, tmp_path, monkeypatch):
    t2, w = bench("table2_scaled"), bench("table2_worker")
    import anybudget.ssm.train as tr

    plan = {**t2.SMOKE_PLAN, "seeds": [1]}
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    real, calls = tr.time.monotonic, {"n": 0}

    def jumping_clock():
        calls["n"] += 1
        return real() + (1e6 if calls["n"] > 7 else 0.0)  # the worker reads it twice first

    monkeypatch.setattr(tr.time, "monotonic", jumping_clock)  # the guard cuts the run after a few steps
    w.work(state, plan, time.monotonic() + 1e4, "auto", log=lambda s: None, only={"zero_L2_s1"})
    monkeypatch.setattr(tr.time, "monotonic", real)
    ck = state / "runs" / "zero_L2_s1.ckpt.pt"
    assert ck.exists() and not (state / "runs" / "zero_L2_s1.json").exists()
    cut_at = torch.load(ck, weights_only=True)["step"]
    assert 0 < cut_at < plan["steps"]
    for c in (state / "claims").iterdir():  # the launcher clears claims at each call
        c.unlink()
    w.work(state, plan, time.monotonic() + 1e4, "auto", log=lambda s: None, only={"zero_L2_s1"})
    rec = json.loads((state / "runs" / "zero_L2_s1.json").read_text())
    assert rec["final"]["step"] == plan["steps"] and not ck.exists()
    assert [h["step"] for h in rec["history"]] == [4, 8]  # the history from before the cut was kept

    # A run with no time left is not started.
    w.work(state, plan, time.monotonic() + 5, "auto", log=lambda s: None, only={"one_L2_s1"})
    assert not list((state / "runs").glob("one_L2_s1*"))

    args = type("A", (), {"state_dir": str(state), "out": str(tmp_path / "out"), "step": "auto", "smoke": True})
    (tmp_path / "out").mkdir()
    assert t2.report(args, plan) == 0
    out = json.loads((tmp_path / "out" / "ssm_table2_scaled_smoke.json").read_text())["metrics"]
    assert not out["complete"] and "one_L2_s1" in out["pending"] and len(out["pending"]) == 7
    row = next(r for r in out["rows"] if r["config"] == "zero" and r["layers"] == 2)
    assert row["mean"] is not None and row["paper_seq1024"] == [98.41, 81.35, 36.55, 72.1]
    with tarfile.open(tmp_path / "out" / "table2_scaled_state.tar") as tar:
        assert "state/runs/zero_L2_s1.json" in tar.getnames()

    # A run estimated to outlast the call is skipped; with allow_partial it starts (it checkpoints).
    (state / "step_time_L2.json").write_text(json.dumps({"step_s": 1e4, "from": "test"}))
    logs = []
    for partial in (False, True):
        for c in (state / "claims").iterdir():
            c.unlink()
        w.work(state, plan, time.monotonic() + 1e3, "auto", log=logs.append, only={"one_L2_s1"},
               allow_partial=partial)
        assert (state / "runs" / "one_L2_s1.json").exists() == partial
    assert logs[0].startswith("skip one_L2_s1") and logs[1].startswith("start one_L2_s1 anyway")
    # ... but not with less than PARTIAL_MIN_S left.
    (state / "runs" / "one_L2_s1.json").unlink()
    (state / "claims" / "one_L2_s1").unlink()
    w.work(state, plan, time.monotonic() + w.PARTIAL_MIN_S - 10, "auto", log=lambda s: None, only={"one_L2_s1"},
           allow_partial=True)
    assert not list((state / "runs").glob("one_L2_s1*"))


def test_table2_scaled_plan_is_fixed_by_the_first_call(bench, tmp_path):
    t2 = bench("table2_scaled")
    args = type("A", (), {"state_dir": str(tmp_path), "smoke": False, "steps": "3000"})
    assert t2.load_plan(args)["steps"] == 3000
    args.steps = None
    assert t2.load_plan(args)["steps"] == 3000  # a resumed call keeps the registered step count
    args.steps = "5000"
    with pytest.raises(SystemExit, match="another plan.*steps: 3000 vs 5000"):
        t2.load_plan(args)


def test_steps_rule_from_the_pilot(bench):
    t2 = bench("table2_scaled")
    hist = [{"step": s, "kv16": a} for s, a in ((250, 0.0), (500, 0.1), (750, 0.2), (1000, 0.6))]
    rec = {"metrics": {"history": hist, "step_s": {"2": 0.004, "4": 0.006}}}
    assert t2.steps_from_pilot(rec) == 2000  # 2 x 1000, at least 2000
    hist[-1]["step"] = 3250
    assert t2.steps_from_pilot(rec) == 6500  # 2 x 3250 rounded up to 500
    rec["metrics"]["history"] = hist[:3]  # never reached 0.5: the budget cap (2 x 480 s x 2 GPUs / 16 runs)
    assert t2.steps_from_pilot(rec) == int(480 * 2 * 2 / (16 * 0.005) // 500 * 500)


def _run_scan_bwd(tmp_path, *extra):
    """scan_bwd_speed --smoke in a subprocess: TRITON_INTERPRET must be set before the kernels are imported."""
    import os
    import subprocess

    src = str(BENCH.parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(BENCH / "scan_bwd_speed.py"), "--smoke", "--out", str(tmp_path), *extra],
                       check=False, env=env, capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads((tmp_path / "ssm_scan_bwd_smoke.json").read_text())["metrics"]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_scan_bwd_speed_smoke_checks_then_times_both_backwards(tmp_path):
    m = _run_scan_bwd(tmp_path)
    rows = m["scan"]["rows"]
    assert {r["impl"] for r in rows if "bwd_s" in r} == {"sequential", "chunked"}
    for r in rows:  # every timed kernel was checked against the reference first, within the tolerance
        assert max(r["rel_err"].values()) <= m["scan"]["tolerance"] and r["bwd_s"] > 0
        assert r["bound_bwd_s"] > 0 and r["bytes_bwd"] > r["bytes_fwd"] > 0
        assert r["kernel_bwd_s"] > 0 and 0 < r["kernel_bytes_bwd"] < r["bytes_bwd"]
    assert m["scan"]["bwd_speedup"] > 0
    # the chunk-parallel forward's row (2 chunks of 32 over seq 40), checked and timed like the others
    (fc,) = [r for r in rows if r.get("fwd_chunk")]
    assert fc["fwd_chunk"] == 32 and fc["fwd_chunk_extra_bytes"] > 0
    assert list(m["scan"]["fwd_chunk"]) == ["(8, 16, 4):32"]
    impls = {(s["mode"], s["impl"]) for s in m["train"]["steps"] if s.get("step_s", 0) > 0}
    assert impls == {("reference", "sequential"), ("eager", "sequential"), ("eager", "chunked")}


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_scan_bwd_speed_refuses_to_time_a_kernel_that_disagrees(tmp_path):
    rows = _run_scan_bwd(tmp_path, "--skip-train", "--tolerance", "-1")["scan"]["rows"]
    assert rows and all("refused" in r and "bwd_s" not in r for r in rows)


def test_profile_step_smoke_writes_a_record(tmp_path):
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(BENCH.parents[1] / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # --time-limit 0: the first depth always runs, the second would end past the limit and is skipped.
    r = subprocess.run([sys.executable, str(BENCH / "profile_step.py"), "--smoke", "--layers", "2,4", "--time-limit",
                        "0", "--out", str(tmp_path)], check=False, env=env, capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rec = json.loads((tmp_path / "ssm_step_profile.json").read_text())
    assert rec["metrics"]["L2"]["steps"] == 2 and rec["metrics"]["L2"]["wall_ms_per_step_profiled"] > 0
    assert rec["metrics"]["L2"]["depth_s"] > 0 and "time-limit" in rec["metrics"]["L4"]["skipped"]
    assert rec["metrics"]["complete"] is True and rec["config"]["time_limit_s"] == 0
    assert rec["device"] and rec["config"]["mode"].startswith("eager")


def _has_cuobjdump() -> bool:
    spec = importlib.util.find_spec("triton")
    return spec is not None and (Path(spec.origin).parent / "backends/nvidia/bin/cuobjdump").exists()


@pytest.mark.skipif(not _has_cuobjdump(), reason="needs triton's NVIDIA backend tools (ptxas, cuobjdump)")
def test_scan_regs_smoke_compiles_the_grads_and_adjoint_kernels_for_sm90_spilling_only_under_a_cap(bench, tmp_path):
    # The CPU builds the H100 cubin: a kernel that does not compile for the GPU fails here, not on the device.
    sr = bench("scan_regs")
    assert sr.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "ssm_scan_regs_smoke.json").read_text())["metrics"]["kernels"]
    row, tm, gl, fold, fold_even, fold_async, adj, adj_tm, carry_jc, carry = rows
    assert row["kernel"] == "grads" and row["prefetch"] is True and tm["kernel"] == "grads_tm"
    assert gl["kernel"] == "grads_gluon" and fold["kernel"] == fold_even["kernel"] == "grads_gluon_fold"
    assert fold_async["kernel"] == "grads_gluon_fold_async"
    assert (adj["kernel"], adj_tm["kernel"], carry_jc["kernel"], carry["kernel"]) == ("adjoint", "adjoint_tm",
                                                                                     "carry_jc", "carry")
    for r in rows:
        assert 0 < r["regs"] <= 255 and r["programs_per_sm"] >= 1
        assert r["stack_bytes"] == 0 or r.get("maxnreg") == 168  # spills only under the preset's register cap
        assert 0 <= r["sass"]["SHFL"] < r["sass"]["instructions"]
    # The preset's folded kernel (B, C in shared memory, scans seeded, the next block copied ahead): no spills at 168.
    assert fold_even["stack_bytes"] == 0 and fold_async["stack_bytes"] == 0
    # The carry on (j, chunk) tiles: each thread's chunks in its registers (no lane exchanges at all with the
    # device's Triton 3.6, ssm_scan_regs_runs/triton36_s24.json); fewer than the old (chunk, j) tiles' with any.
    assert carry_jc["sass"]["SHFL"] < carry["sass"]["SHFL"]
    assert carry_jc["sass"]["instructions"] < carry["sass"]["instructions"]
    # The folded Gluon kernel (no CPU interpreter: its sm_90 build is the CPU's check) without masks when every
    # tile index is in range: the same lane exchanges, far fewer instructions.
    assert fold_even["sass"]["SHFL"] == fold["sass"]["SHFL"]
    assert fold_even["sass"]["instructions"] < 0.9 * fold["sass"]["instructions"]
    # The time-major kernels' scans and sums over a chunk run in registers: fewer lane exchanges than the defaults'.
    assert tm["sass"]["SHFL"] < row["sass"]["SHFL"] and 4 * adj_tm["sass"]["SHFL"] < adj["sass"]["SHFL"]
    # The Gluon kernel's stated layouts: inputs read where they are used, state sums by a shared-memory transpose,
    # the adjoint by a flip and a forward scan; under half the time-major kernel's lane exchanges and fewer exps.
    assert 2 * gl["sass"]["SHFL"] < tm["sass"]["SHFL"] and gl["sass"]["MUFU"] < tm["sass"]["MUFU"]


def test_table2_scaled_v2_registration_fixes_steps_step_and_run_order(bench, tmp_path):
    t2, w = bench("table2_scaled"), bench("table2_worker")
    args = type("A", (), {"state_dir": str(tmp_path / "v2"), "smoke": False, "steps": None, "registration": "v2",
                          "step": "compile+cudagraph"})
    plan = t2.load_plan(args)
    assert plan["steps"] == 24000 and plan["registration"] == "v2" and plan["lr"] == t2.PLAN["lr"]
    assert t2.load_plan(args) == plan  # a resumed call keeps it
    args.steps = "5000"
    with pytest.raises(SystemExit, match="registration v2 fixes 24000 steps"):
        t2.load_plan(args)
    args.steps, args.step = None, "auto"
    with pytest.raises(SystemExit, match="registration v2 fixes the step"):
        t2.load_plan(args)
    runs = w.all_runs(plan["seeds"], plan["order"])
    assert [w.run_name(*r) for r in runs[:3]] == ["default_L2_s123", "default_L4_s123", "zero_L2_s123"]
    assert len(set(runs)) == 16 and {s for _, _, s in runs[:8]} == {123}
    with pytest.raises(ValueError, match="each at most once"):
        w.all_runs([1], plan["order"][:-1] + ["default_L2"])
    with pytest.raises(ValueError, match="configurations of the 8"):
        w.all_runs([1], ["default_L3"])
    # v1's state folder is refused for v2 (another plan), and v1's order is unchanged (depth 4 first).
    v1 = type("A", (), {"state_dir": str(tmp_path / "v1"), "smoke": False, "steps": "4000"})
    t2.load_plan(v1)
    args.state_dir, args.step = str(tmp_path / "v1"), "compile+cudagraph"
    with pytest.raises(SystemExit, match="another plan"):
        t2.load_plan(args)
    assert w.all_runs([1])[0] == ("default", 4, 1)
    with pytest.raises(SystemExit, match="no pilot"):
        t2.main(["--pilot", "--out", str(tmp_path / "o")])


def test_table2_ordering_checks_check_what_a_partial_table_allows(bench):
    t2 = bench("table2_scaled")
    assert t2.ordering_checks({("default", 2): [1, 2, 3, 4]}) is None
    part = {("default", 2): [99, 92, 60, 84], ("default", 4): [99, 89, 57, 82], ("zero", 2): [99, 97, 80, 92],
            ("zero", 4): [99, 96, 72, 89], ("one", 2): [89, 69, 38, 65]}
    c = t2.ordering_checks(part)
    assert set(c) == {"zero_makes_depth_help", "one_helps_hardest_split"}
    assert not c["zero_makes_depth_help"]["holds"] and c["zero_makes_depth_help"]["zero_gain"] == -3
    assert not c["one_helps_hardest_split"]["holds"]
    full = {**part, ("both", 2): [1, 1, 1, 83], ("both", 4): [1, 1, 1, 95], ("one", 4): [1, 1, 1, 50]}
    assert t2.ordering_checks(full)["both_L4_best"] == {"holds": True, "best": "both_L4"}


def test_table2_scaled_v2_48k_registration_runs_the_depth2_pair_at_48000_steps(bench, tmp_path):
    t2, w = bench("table2_scaled"), bench("table2_worker")
    args = type("A", (), {"state_dir": str(tmp_path / "d"), "smoke": False, "steps": None, "registration": "v2-48k",
                          "step": "compile+cudagraph"})
    plan = t2.load_plan(args)
    # v2's plan in every key but the step count, the registration and the runs.
    same = {k for k in t2.V2 if k not in ("steps", "registration", "order")} | set(t2.PLAN)
    assert all(plan[k] == {**t2.PLAN, **t2.V2}[k] for k in same)
    assert plan["steps"] == 48000 and plan["registration"] == "v2-48k"
    assert [w.run_name(*r) for r in w.all_runs(plan["seeds"], plan["order"])] == [
        "default_L2_s123", "one_L2_s123", "default_L2_s124", "one_L2_s124"]
    args.steps = "24000"
    with pytest.raises(SystemExit, match="registration v2-48k fixes 48000 steps"):
        t2.load_plan(args)
    # A v2 state folder is refused for v2-48k: the plans differ.
    v2 = type("A", (), {"state_dir": str(tmp_path / "v2"), "smoke": False, "steps": None, "registration": "v2",
                        "step": "compile+cudagraph"})
    t2.load_plan(v2)
    args.steps, args.state_dir = None, v2.state_dir
    with pytest.raises(SystemExit, match="another plan"):
        t2.load_plan(args)
    assert t2.ordering_checks({("default", 2): [99, 92, 60, 84], ("one", 2): [99, 95, 70, 88]}) == {
        "one_helps_hardest_split": {"holds": True, "one_L2_kv64": 70, "default_L2_kv64": 60}}


def test_table2_state_restored_from_its_record_reports_the_same_rows(bench, tmp_path):
    t2, w = bench("table2_scaled"), bench("table2_worker")
    plan = {**t2.SMOKE_PLAN, "seeds": [1]}
    state = tmp_path / "state"
    w.work(state, plan, time.monotonic() + 1e4, "auto", log=lambda s: None, only={"zero_L2_s1", "both_L4_s1"})
    args = type("A", (), {"state_dir": str(state), "out": str(tmp_path / "o1"), "step": "auto", "smoke": True})
    (tmp_path / "o1").mkdir()
    t2.report(args, plan)
    rec_path = tmp_path / "o1" / "ssm_table2_scaled_smoke.json"
    first = json.loads(rec_path.read_text())["metrics"]

    # The state is lost: the record brings the finished runs back; nothing else is invented.
    lost = tmp_path / "lost"
    got = t2.restore_from_record(lost, rec_path, plan)
    assert sorted(got) == ["both_L4_s1", "zero_L2_s1"]
    back = json.loads((lost / "runs" / "both_L4_s1.json").read_text())
    assert back["restored_from"]["record"] == str(rec_path) and back["history"] == []
    assert back["diagnostics"] == first["diagnostics"]["both_L4_s1"]
    args.state_dir, args.out = str(lost), str(tmp_path / "o2")
    (tmp_path / "o2").mkdir()
    t2.report(args, plan)
    again = json.loads((tmp_path / "o2" / "ssm_table2_scaled_smoke.json").read_text())["metrics"]
    assert again["rows"] == first["rows"] and again["pending"] == first["pending"]
    assert again["ordering_checks"] == first["ordering_checks"]
    assert t2.restore_from_record(lost, rec_path, plan) == []  # runs it has are left alone

    with pytest.raises(SystemExit, match="another plan.*steps"):
        t2.restore_from_record(tmp_path / "x", rec_path, {**plan, "steps": 99})
    with pytest.raises(SystemExit, match="--restore-from .*cannot read"):
        t2.restore_from_record(tmp_path / "x", tmp_path / "missing.json", plan)


def test_table2_workers_stay_on_the_callers_visible_gpus(bench):
    t2 = bench("table2_scaled")
    assert t2.worker_gpu(0, "1") == "1"  # CUDA_VISIBLE_DEVICES=1: the worker must not land on GPU 0
    assert [t2.worker_gpu(g, "3, 2") for g in (0, 1)] == ["3", "2"]
    assert t2.worker_gpu(1, None) == "1" and t2.worker_gpu(0, "") == "0"


def test_one_channel_check_splits_the_scan_into_the_running_sum_and_the_learned_channels(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import one_channel_check as occ
    import torch.nn.functional as F

    from anybudget.ssm import MambaConfig
    from anybudget.ssm.mamba import Mamba
    from anybudget.ssm.scan import selective_scan

    torch.manual_seed(0)
    layer = Mamba(MambaConfig(d_model=8, d_state=4, polarize="one")).float()
    hidden = torch.randn(2, 20, 8)
    with torch.no_grad():
        parts = occ.group_outputs(layer, hidden)
        _, x, _, dt, B, C = layer.scan_inputs(hidden)
        full = selective_scan(x, dt, layer.A(), B, C, None, z=None, delta_bias=layer.dt_proj.bias.float(),
                              delta_softplus=True, backend="ref")
        # Eq. 5 with A-bar = 1: the one-channel's state is the running sum of delta * B * x.
        delta = F.softplus(dt + layer.dt_proj.bias.float()[:, None])
        by_hand = C[:, :1] * torch.cumsum(delta * B[:, :1] * x, dim=-1)
    torch.testing.assert_close(parts["one"] + parts["learned"], full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["one"], by_hand, rtol=1e-5, atol=1e-6)
    rms = occ.channel_outputs(layer, hidden)
    assert len(rms["one"]) == 1 and rms["one"][0] == pytest.approx(float(by_hand[..., 15].pow(2).mean().sqrt()))


@pytest.mark.parametrize("argv, match", [(["--seeds", "x"], "--seeds 'x'"), (["--seeds", ","], "--seeds"),
                                         (["--batch", "0"], "--batch 0")])
def test_one_channel_check_refuses_bad_arguments_before_any_work(monkeypatch, capsys, tmp_path, argv, match):
    monkeypatch.syspath_prepend(str(BENCH))
    import one_channel_check as occ

    with pytest.raises(SystemExit) as e:
        occ.main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2 and match in capsys.readouterr().err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["grads_gluon_speed", "scan_fold_speed"])
def test_gluon_speed_scripts_refuse_bad_arguments_before_any_work(script, bench, tmp_path, capsys):
    gs = bench(script)
    with pytest.raises(SystemExit) as e:
        gs.main(["--repeat", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--repeat 0: must be >= 1" in capsys.readouterr().err
    if script == "scan_fold_speed":  # --configs names only the script's configurations
        with pytest.raises(SystemExit) as e:
            gs.main(["--configs", "fold_gluon168_pf", "nope", "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--configs nope: unknown; allowed: split_gluon168" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as e:
        gs.main(["--out", str(blocker / "sub")])
    assert e.value.code == 2 and f"--out {blocker / 'sub'}: cannot create it" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():  # the CPU: one line, exit 2, nothing measured or written
        assert gs.main(["--out", str(tmp_path / "rec")]) == 2
        assert "needs CUDA" in capsys.readouterr().err and not list((tmp_path / "rec").iterdir())


def test_carry_speed_and_scan_ncu_refuse_bad_arguments_before_any_work(bench, tmp_path, capsys):
    cs, nc = bench("carry_speed"), bench("scan_ncu")
    with pytest.raises(SystemExit) as e:
        cs.main(["--repeat", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--repeat 0: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # --summarize needs ncu's details page there
        nc.main(["--summarize", str(tmp_path)])
    assert e.value.code == 2 and f"--summarize {tmp_path}: no details.csv there" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
