"""fit_grid.py across calls: stopped after a phase, killed (SIGTERM) inside the grid, stopped by the
wall-clock guard, and resumed from the state tar each time, it writes the record an uninterrupted run
writes; the state tar round trip; progress lines under --quiet."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMING = {"phases_s", "calls", "total_s", "seconds", "state", "compile_cache"}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"plan_{name}", ROOT / "benchmarks/plan" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def steady_measure(kill_at: list | None = None):
    """The real measurement with its timings replaced by a function of the bytes (CPU step times are
    noise, and they set the latency budgets); ``kill_at=[n]``: SIGTERM to this process at the n-th call."""
    from anybudget.plan.device import measure_candidate

    calls = [0]

    def measure(model, c, wl, **kw):
        calls[0] += 1
        if kill_at and calls[0] == kill_at[0]:
            os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` sends; handled at the next bytecode
        m = measure_candidate(model, c, wl, **kw)
        return m | {"step_s": 1e-4 + 1e-9 * (m["weights_bytes"] + m["kv_alloc_bytes"]), "warmup_s": 0.0}
    return measure


def strip(x):
    """The record without wall-clock numbers."""
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x


@pytest.fixture(scope="module")
def grid_mod():
    return load("fit_grid")


@pytest.fixture(scope="module")
def uninterrupted(grid_mod, tmp_path_factory):
    import anybudget.plan as P

    out = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(P, "measure_candidate", steady_measure())
        assert grid_mod.main(["--smoke", "--quiet", "--out", str(out)]) == 0
    rec = json.loads((out / "plan_fit_grid.json").read_text())
    rec["out"] = str(out)
    return rec


def test_whole_smoke_record(uninterrupted):
    """The GPU benchmark's --smoke mode, one call: the same code path on a tiny random model on the CPU."""
    rec, out = uninterrupted, Path(uninterrupted["out"])
    m = rec["metrics"]
    assert m["complete"] and m["phase"] == "done" and m["stopped"] is None
    assert len(m["grid"]) == 6 and m["summary"]["budgets"] == 6 and len(m["calls"]) == 1
    assert set(m["phases_s"]) == {"build", "quality", "latency", "grid"}
    assert m["build"]["weights_xz_bytes"] < m["build"]["weights_bf16_bytes"]
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
    assert (out / "plan_fit_grid.png").stat().st_size > 1000
    files = [p.name for p in out.iterdir() if p.is_file()]
    assert "plan_state.tar" in files and len(files) <= 8  # what the device returns


def test_stopped_killed_and_guarded_calls_resume_to_the_same_record(grid_mod, uninterrupted, tmp_path, monkeypatch,
                                                                    capfd):
    import anybudget.plan as P

    extract_state = load("fit_state").extract_state

    calls = [(["--stop-after", "build"], None, "--stop-after build"),
             (["--stop-after", "latency"], None, "--stop-after latency"),
             (["--stop-after", "grid:2"], None, "--stop-after grid:2"),
             ([], "slow budgets", "grid budget 3/6 not started"),  # the guard, from a recorded duration
             ([], 2, "SIGTERM"),  # killed at budget 3's second measurement: budget 3 runs again next call
             ([], None, None)]
    state = None
    for i, (extra, twist, stopped) in enumerate(calls):
        out = tmp_path / f"call{i}"
        monkeypatch.setattr(P, "measure_candidate", steady_measure([twist] if isinstance(twist, int) else None))
        if twist == "slow budgets":  # a budget is recorded as taking longer than the wall clock leaves
            d = json.loads((state / "progress.json").read_text())
            assert len(d["grid"]) == 2 and d["done"] == ["build", "quality", "latency"]
            d["durations"]["budget"] = 1e6
            (state / "progress.json").write_text(json.dumps(d))
        if state is not None:  # the device works on a copy of what the coordinator carries
            state = Path(shutil.copytree(state, tmp_path / f"device{i}" / state.name))
        args = ["--smoke", "--quiet", "--out", str(out)] + (["--state", str(state)] if state else []) + extra
        assert grid_mod.main(args) == 0
        err = capfd.readouterr().err
        m = json.loads((out / "plan_fit_grid.json").read_text())["metrics"]
        assert m["stopped"] == stopped or stopped in m["stopped"], (i, m["stopped"])
        assert m["complete"] == (stopped is None) and len(m["calls"]) == i + 1
        assert stopped is None or f"stopped: {stopped}" in err
        if i == 0:  # progress lines under --quiet, one per phase start and end; the record after the phase
            assert err.count("phase 1 elastic build: start") == 1 and err.count("phase 1 elastic build: end (") == 1
            assert "phase 2" not in err and m["phase"] == "build" and set(m["phases_s"]) == {"build"}
        else:
            assert "phase 1 elastic build: done in an earlier call, skipped" in err
        if i == 1:
            assert set(m["phases_s"]) == {"build", "quality", "latency"} and not m["grid"]
        if i in (3, 4):
            assert len(m["grid"]) == 2
        parts = sorted(out.glob("plan_state.tar*"))
        with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as t:
            names = {n.split("/", 1)[1] for n in t.getnames()}
        assert ("elastic/model.safetensors.xz" in names) == (i == 0)  # from the call that built them only
        assert "elastic/model/model.safetensors" not in names and "progress.json" in names  # weights: as .xz only
        state = extract_state(parts, tmp_path / "carry")  # the coordinator extracts over the same folder
        if twist == "slow budgets":  # back to the true duration
            d = json.loads((state / "progress.json").read_text())
            d["durations"]["budget"] = 0.0
            (state / "progress.json").write_text(json.dumps(d))
    rec = json.loads((out / "plan_fit_grid.json").read_text())
    assert strip(rec["metrics"]) == strip(uninterrupted["metrics"])
    assert strip(rec["config"]) == strip(uninterrupted["config"])


def test_wall_clock_stops_before_a_phase_and_says_so(grid_mod, tmp_path, capfd):
    out, cache = tmp_path / "out", tmp_path / "inductor"
    assert grid_mod.main(["--smoke", "--quiet", "--out", str(out), "--wall-seconds", "0",
                          "--compile-cache", str(cache)]) == 0
    err = capfd.readouterr().err
    m = json.loads((out / "plan_fit_grid.json").read_text())["metrics"]
    assert "phase 1 elastic build not started" in m["stopped"] and "stopped: phase 1" in err
    assert not m["complete"] and m["phase"] == "start" and (out / "plan_state.tar").is_file()
    assert m["compile_cache"]["kept"] and m["compile_cache"]["files"] == 0  # nothing compiles on a CPU
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == str(cache.resolve())


def test_a_crash_still_writes_the_state_then_raises(grid_mod, tmp_path, monkeypatch, capfd):
    import anybudget.plan as P

    def broken(*args, **kw):
        raise RuntimeError("measurement exploded")
    monkeypatch.setattr(P, "static_latency_model", broken)
    with pytest.raises(RuntimeError, match="measurement exploded"):
        grid_mod.main(["--smoke", "--quiet", "--out", str(tmp_path)])
    assert "stopped: crashed: RuntimeError" in capfd.readouterr().err
    m = json.loads((tmp_path / "plan_fit_grid.json").read_text())["metrics"]
    assert m["phase"] == "latency" and set(m["phases_s"]) == {"build", "quality"} and (tmp_path / "plan_state.tar").is_file()


def test_guard_estimates(tmp_path):
    import argparse

    import torch

    fs = load("fit_state")
    st = fs.State(tmp_path, {})
    st["calls"].append({})
    run = fs.Run(argparse.Namespace(serve="static"), st, fs.Clock(100), torch.device("cuda"), tmp_path, None)
    assert run.est("compile:h2o") == fs.DEFAULT_S_CUDA["compile"] and run.est("build") == fs.DEFAULT_S_CUDA["build"]
    st["durations"].update({"compile:full": 100.0, "build": 80.0})
    assert run.est("build") == pytest.approx(92.0)
    assert run.est("compile:h2o") == pytest.approx(115.0)  # never compiled: the slowest compilation recorded
    assert run.est("compile:full") == pytest.approx(115.0)  # no cache restored: compiles as the first time
    run.warm_cache = True
    assert run.est("compile:full") == pytest.approx(57.5)  # cached, not yet timed: half
    st["durations"]["compile_warm:full"] = 20.0
    assert run.est("compile:full") == pytest.approx(23.0) and run.est("compile:h2o") == pytest.approx(115.0)


def test_state_tar_round_trip_in_parts(tmp_path):
    fs = load("fit_state")
    st = fs.State(tmp_path / "a" / "fit_state", {"x": 1})
    payload = {"progress.json": None, "elastic/model.safetensors.xz": os.urandom(70_000),
               "elastic/model/config.json": b"{}", "compile_cache.tar.xz": os.urandom(5_000)}
    for name, data in payload.items():
        if data is not None:
            (st.dir / name).parent.mkdir(parents=True, exist_ok=True)
            (st.dir / name).write_bytes(data)
    st["grid"].append({"budget": "mem=1KiB"})
    st.save()
    (st.elastic / "model" / "model.safetensors").write_bytes(b"raw weights stay behind")
    for part, n in ((10**6, 1), (30_000, 3)):
        out = tmp_path / f"out{part}"
        files = st.write_tar(out, part_bytes=part)
        assert len(files) == n and all(f.stat().st_size <= part for f in files)
        assert [f.name for f in files] == (["plan_state.tar"] if n == 1 else [f"plan_state.tar.{i:02d}" for i in range(n)])
        back = fs.extract_state(files, tmp_path / f"back{part}")
        assert back.name == "fit_state"
        got = sorted(str(p.relative_to(back)) for p in back.rglob("*") if p.is_file())
        assert got == sorted(payload)
        for name in payload:
            assert (back / name).read_bytes() == (st.dir / name).read_bytes()
        assert fs.State(back, {"x": 1})["grid"] == [{"budget": "mem=1KiB"}]
    with pytest.raises(Exception, match="x: 1 there, 2 now"):
        fs.State(back, {"x": 2})


def test_compile_cache_packed_restored_or_dropped(tmp_path):
    fs = load("fit_state")
    cache = tmp_path / "cache"
    (cache / "fxgraph" / "ab").mkdir(parents=True)
    (cache / "fxgraph" / "ab" / "entry").write_bytes(b"graph" * 1000)
    (cache / "triton" / "0").mkdir(parents=True)
    (cache / "triton" / "0" / "k.cubin").write_bytes(os.urandom(20_000))
    (cache / "triton" / "0" / "x.lock").write_bytes(b"")
    st = fs.State(tmp_path / "s", {})
    info = st.pack_compile_cache(cache, 10**6)
    assert info["kept"] and info["files"] == 2 and info["raw_bytes"] == 25_000
    new = tmp_path / "new"
    assert st.restore_compile_cache(new) == 2
    assert (new / "triton/0/k.cubin").read_bytes() == (cache / "triton/0/k.cubin").read_bytes()
    info = st.pack_compile_cache(cache, 1000)  # larger than allowed: dropped, and said so
    assert not info["kept"] and "dropped" in info["why"] and not (st.dir / "compile_cache.tar.xz").exists()
    assert st.restore_compile_cache(tmp_path / "none") == 0


def test_clock_guard():
    fs = load("fit_state")
    c = fs.Clock(100.0, t0=0.0)
    with pytest.raises(fs.Stop, match="phase 9: needs ~5 s, 0 s left of --wall-seconds 100"):
        c.need(5, "phase 9")


def test_first_measurement_of_a_cache_kind_is_guarded_as_a_compilation(tmp_path, monkeypatch, capfd):
    import argparse

    import torch

    import anybudget.plan as P

    fs = load("fit_state")
    st = fs.State(tmp_path, {})
    st["calls"].append({"compile_s": {}})
    st["share"] = True
    run = fs.Run(argparse.Namespace(serve="static"), st, fs.Clock(100), torch.device("cpu"), tmp_path, None)
    run.cuda_static = True  # as on CUDA: the first measurement of each cache kind in a process compiles
    monkeypatch.setattr(P, "measure_candidate", lambda *a, **k: {"warmup_s": 0.0})
    st["durations"]["compile:h2o"] = 1e6  # an h2o compilation was recorded as longer than the call has
    with pytest.raises(fs.Stop, match="measuring kv2/mlp64 h2o@20% \\(compiles\\): needs ~1150000 s"):
        run.measure(None, P.Candidate(2, 64, "h2o", 20.0), None)
    with pytest.raises(fs.Stop, match="kv2/mlp64 full \\(compiles\\): needs ~1150000 s"):  # the slowest recorded
        run.measure(None, P.Candidate(2, 64), None)
    st["durations"]["compile:h2o"] = 1.0
    run.measure(None, P.Candidate(2, 64), None)
    assert "full" in run.compiled and "compile:full" in st["durations"] and "full" in st["calls"][-1]["compile_s"]
    assert "compiles cache kind full" in capfd.readouterr().err
    run.measure(None, P.Candidate(4, 128), None)  # the same kind again: a measurement, no compilation
    run.measure(None, P.Candidate(1, 128), None)  # one KV group: compilers specialise it, a kind of its own
    assert run.compiled == {"full", "full/g1"} and "measure" in st["durations"]


def test_static_compile_mode_guards_each_candidate_and_reuses_measurements(tmp_path, monkeypatch, capfd):
    import argparse

    import torch

    import anybudget.plan as P

    fs = load("fit_state")
    st = fs.State(tmp_path, {})
    st["calls"].append({"compile_s": {}, "device": "gpu A"})
    st["share"] = False
    run = fs.Run(argparse.Namespace(serve="static"), st, fs.Clock(100), torch.device("cpu"), tmp_path, None)
    run.cuda_static = True
    seen = []
    monkeypatch.setattr(P, "measure_candidate", lambda m, c, w, **k: seen.append((c.label, k)) or {"step_s": len(seen)})
    a, b = P.Candidate(2, 64, "h2o", 20.0), P.Candidate(2, 64, "h2o", 50.0)
    assert run.measure(None, a, None) == {"step_s": 1} and run.measure(None, b, None) == {"step_s": 2}
    assert run.compiled == {a.label, b.label}  # static shapes: every candidate is a graph of its own
    assert seen[0][1] == {"serve": "static", "share_graphs": False}
    assert "compiles its static-shape graph" in capfd.readouterr().err
    assert run.measure(None, a, None) == {"step_s": 1} and len(seen) == 2 and st["calls"][-1]["reused"] == 1
    st["calls"].append({"compile_s": {}, "device": "gpu B"})  # another device: measured again
    run.call = st["calls"][-1]
    assert run.measure(None, a, None) == {"step_s": 3}
    st["durations"]["compile:" + P.Candidate(1, 64).label] = 1e6
    with pytest.raises(fs.Stop, match="kv1/mlp64 full \\(compiles\\): needs ~1150000 s"):
        run.measure(None, P.Candidate(1, 64), None)


def test_a_state_of_shared_graphs_redoes_phases_3_and_4_only(tmp_path):
    """A state of calls 1-2 (shared graphs, before --compile existed): build and quality are kept; the
    latency measurements, their compile durations and the compile cache are dropped."""
    fs = load("fit_state")
    st = fs.State(tmp_path / "s", {"prompt": 896})
    st.d.update({"done": ["build", "quality", "latency"], "share": True, "latency": {"model": {}},
                 "durations": {"build": 138.0, "quality": 13.0, "compile:full": 271.0, "measure": 9.0},
                 "latency_memo": [{"label": "kv4/mlp1024 full"}], "grid": [{"budget": "b"}], "quality": {"q": 1}})
    (st.dir / "compile_cache.tar.xz").write_bytes(b"xz")
    st.switch_compile_mode("static")
    assert st["done"] == ["build", "quality"] and st["durations"] == {"build": 138.0, "quality": 13.0}
    assert "latency_memo" not in st.d and st["grid"] == [] and "latency" not in st.d and st["quality"] == {"q": 1}
    assert not (st.dir / "compile_cache.tar.xz").exists() and (st["compile_mode"], st["share"]) == ("static", False)
    assert st["compile_mode_changed"] == [{"from": "shared", "to": "static", "call": 0}]
    st["done"].append("latency")
    st.switch_compile_mode("static")  # the same mode again: nothing dropped
    assert st["done"] == ["build", "quality", "latency"] and len(st["compile_mode_changed"]) == 1


def test_second_grid_on_the_same_state_and_its_cpu_prediction(grid_mod, uninterrupted, tmp_path, monkeypatch):
    """fit_predict.py (no GPU) reproduces a finished grid's choices from its state and leaves the state
    as it was; ``--grid bind`` then runs on that state as a GPU call would: phase 4 only, every budget
    below the full model on both axes, the first grid kept; the prediction then reproduces it too."""
    import anybudget.plan as P
    from anybudget.budget import Budget

    pred = load("fit_predict")
    state = Path(shutil.copytree(Path(uninterrupted["out"]) / "state", tmp_path / "carry" / "fit_state"))
    files = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}

    def predicted(grid, out):
        assert pred.main(["--state", str(state), "--grid", grid, "--out", str(out)]) == 0
        name = "plan_fit_grid" if grid == "main" else f"plan_fit_grid_{grid}"
        return json.loads((out / f"{name}_predicted.json").read_text())["metrics"]

    m = predicted("main", tmp_path / "p1")
    assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == files  # read only
    s = m["summary"]
    assert s["recorded_budgets"] == s["recorded_budgets_reproduced"] == 6 and s["budgets_to_run"] == 0
    assert s["new_measurements"] == 0 and s["device_seconds_estimate"] == pred.LOAD_S
    for e, r in zip(m["grid"], uninterrupted["metrics"]["grid"], strict=True):
        for k in ("plan", "elastic_only", "kv_only"):  # the same budgets and trials, measured ones reused
            assert e["budget"] == r["budget"] and e[k].get("chosen") == r[k].get("chosen")
            assert [t["label"] for t in e[k].get("trials", [])] == [t["label"] for t in r[k].get("trials", [])]
    b = predicted("bind", tmp_path / "p2")
    assert b["summary"]["budgets_to_run"] == 9 and b["summary"]["recorded_budgets"] == 0
    new = {lab for e in b["grid"] for k in ("plan", "elastic_only", "kv_only") for lab in e[k].get("simulated", [])}
    assert new == set(b["new_measurements"]) and not new & set(json.loads(files[state / "progress.json"])["measured"])

    monkeypatch.setattr(P, "measure_candidate", steady_measure())
    out = tmp_path / "bind"
    assert grid_mod.main(["--smoke", "--quiet", "--grid", "bind", "--state", str(state), "--out", str(out)]) == 0
    rec = json.loads((out / "plan_fit_grid_bind.json").read_text())
    m2, full = rec["metrics"], uninterrupted["metrics"]["full_model"]
    assert m2["complete"] and len(m2["grid"]) == 9 and set(m2["calls"][-1]["phases_s"]) == {"grid_bind"}
    assert rec["config"]["grid"] == "bind" and rec["config"]["latency_scale"] == "range"
    for e in m2["grid"]:
        bud = Budget(e["budget"])
        assert bud.mem.value < full["predicted_mem"] and bud.latency.value < full["predicted_latency_s"]
    d = json.loads((state / "progress.json").read_text())
    assert d["grid"] == uninterrupted["metrics"]["grid"] and {"grid", "grid_bind"} <= set(d["done"])
    b2 = predicted("bind", tmp_path / "p3")
    assert b2["summary"]["recorded_budgets_reproduced"] == 9 and b2["summary"]["new_measurements"] == 0


def test_a_state_of_another_device_is_refused_or_its_latency_refitted(grid_mod, uninterrupted, tmp_path, monkeypatch):
    import anybudget.plan as P

    state = Path(shutil.copytree(Path(uninterrupted["out"]) / "state", tmp_path / "fit_state"))
    d = json.loads((state / "progress.json").read_text())
    d["latency"]["model"]["device"] = "GPU X"
    (state / "progress.json").write_text(json.dumps(d))
    args = ["--smoke", "--quiet", "--grid", "bind", "--state", str(state), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="from GPU X, this call runs on cpu: run it on GPU X, or give --refit-latency"):
        grid_mod.main(args)
    assert json.loads((state / "progress.json").read_text()) == d  # refused before anything changed
    monkeypatch.setattr(P, "measure_candidate", steady_measure())
    assert grid_mod.main(args + ["--refit-latency"]) == 0
    m = json.loads((tmp_path / "o" / "plan_fit_grid_bind.json").read_text())["metrics"]
    assert m["complete"] and m["latency_model"]["device"] == "cpu"
    assert set(m["calls"][-1]["phases_s"]) == {"latency", "grid_bind"}


def test_a_cuda_peak_measured_before_the_garbage_collection_is_measured_again(tmp_path, monkeypatch):
    import argparse

    import torch

    import anybudget.plan as P

    fs = load("fit_state")
    st = fs.State(tmp_path, {})
    st["calls"].append({"compile_s": {}, "device": "gpu A"})
    st["share"] = False
    old = {"step_s": 1.0, "peak_bytes": 5, "peak_kind": "cuda_max_allocated"}
    st["measured"] = {"kv2/mlp64 full": {"device": "gpu A", "measured": old},
                      "kv1/mlp64 full": {"device": "gpu A", "measured": old | {"baseline": "gc"}}}
    run = fs.Run(argparse.Namespace(serve="static"), st, fs.Clock(100), torch.device("cpu"), tmp_path, None)
    monkeypatch.setattr(P, "measure_candidate", lambda m, c, w, **k: {"step_s": 2.0, "baseline": "gc"})
    assert run.measure(None, P.Candidate(1, 64), None) == old | {"baseline": "gc"}  # reused
    assert run.measure(None, P.Candidate(2, 64), None) == {"step_s": 2.0, "baseline": "gc"}  # measured again
    assert st["measured"]["kv2/mlp64 full"]["measured"]["baseline"] == "gc" and st["calls"][-1]["reused"] == 1
    assert fs.reusable({"peak_kind": "cpu_weights_plus_cache"}) and not fs.reusable(old)
