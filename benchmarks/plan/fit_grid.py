"""anybudget fit on the reference LM, over one or more GPU calls: a grid of memory x latency budgets; for each, the
combined plan (elastic sub-network x KV cache) and the best single-technique plans (elastic only with
the full cache; the full model with KV eviction only), every one *measured* on the device.

Workload (what a user deploying this model asks; chosen before any result of it, not tuned):
  the reference LM was trained on 1024-token windows, and beyond them it is not a language model
  (new-token perplexity after a 2048-token prompt: ~1100, after 960: ~11, measured on the CPU with
  the test split), so a deployment keeps prompt + new tokens within 1024: prompts of 896 tokens,
  128 new tokens. A 27M-parameter model is served to many users at once: 128 concurrent sequences,
  where the KV cache (1.07 GB in bf16) is ~20x the weights (55 MB) and with the prefill workspace
  makes the memory; that is the regime KV eviction is for. Served the fast way on CUDA
  (``--serve static``): HF's StaticCache and anybudget's fixed-slot caches, the decoding step
  compiled by ``generate`` (inductor, reduce-overhead: CUDA graphs, no autotuning; the prefill runs
  eagerly) with static shapes (``--compile static``, ``plan.device.default_compile_config``): each
  measured candidate is compiled for its own shapes in a fresh dynamo state, as the one plan a
  user deploys is. Compile time is in each trial's ``warmup_s``.
Compile time (``benchmarks/plan/compile_probe.py``, ``plan.device`` doc): calls 1-2 (H200) compiled
  one shared graph per cache kind (``--compile shared``: dynamic=True, dynamic weight shapes, no duck
  sizing) and spent 271 s (full) and 341 s (h2o) compiling, 2 of the 6 latency points in two calls.
  On the CPU the same single graph (one frame, no recompilation over decoding steps, prefill not
  compiled, no autotuning) takes dynamo 85-99 s to trace with symbolic weight sizes against 7-12 s
  per candidate with static shapes, and inductor 95 s (static) against > 900 s (shared); dynamo's
  automatic dynamic pays 70-100 s at each recompilation that makes weight sizes dynamic.
  A candidate measured once (phase 3 or an earlier fit, on the same device) is not measured again.
Device time, planned (one compiled measurement on the GPU, cold: ``fit_state.COMPILE_S`` = 60 s
  until the first is recorded; 271-341 s / the CPU's shared/static ratios, dynamo ~8x and inductor
  > 9x, put it at ~35-45 s): phase 3 is 6 measurements (2 sub-networks x 3 cache kinds); phase 4
  measured 16 fits' choices, 6 of them distinct and 1 of those already in phase 3, when simulated
  on the CPU with calls 1-2's state
  (quality data, GPU points as the latency model, every choice meeting its budget): ~11 compiled
  measurements in all, + up to ~4 fall-backs; ~15 x 60 s + 6 quality checks (~1 s each, eager) +
  loading (~15 s a call) ~ 950 s < 2 x 510 s (``--wall-seconds``); at 40 s a measurement ~ 620 s.
Budgets: 3 memory levels spread over the range the candidates span, at 0.8, 0.5 and 0.2 of the
  way from the smallest reachable predicted peak to the full model's (each needs a smaller network
  or a smaller cache; together they sample the whole range rather than only the top of it, where
  one technique always suffices, nor only its bottom) x 2 latency levels a user would state
  relative to what they run today: 1.0x the full model's predicted step ("no slower than serving
  the model as it is") and 1.25x ("a quarter slower is acceptable").
Second grid (``--grid bind``; pre-registered 2026-11-26 after the first grid completed, before
  any simulation of it; the first, ``--grid main``, is kept as it is): the first grid's budgets were
  met by the full network with KV eviction alone at 4 of 6 (its latency levels are at or above the
  full model's step, and eviction at 20-50% costs the full model 0.3-2.7% perplexity), so they test
  eviction more than a combination. A combiner is tested where both axes bind: every budget is
  below the full model (full cache) on both axes. Memory at the same 0.8, 0.5, 0.2 of the way from
  the smallest reachable predicted peak to the full model's (with 128 sequences the KV cache is
  ~20x the weights, so every level is a KV-memory budget) x latency at 0.75, 0.5, 0.25 of the way
  from the fastest reachable predicted step to the full model's (``--latency-scale range``: below
  1.0x the full step at every level; as for memory, fractions of the range the candidates span,
  so the levels come from the candidate space and no quality number). 9 budgets; the same
  workload, candidates, margin and trials; state entries ``grid_bind``, record plan_fit_grid_bind.json.
  ``fit_predict.py`` runs its selection on the CPU from a state (measured candidates reused,
  the others taken as predicted) to count the measurements a call needs.

Phases (all numbers from this run, which may span several calls through ``--state``):
  1 a quick elastic build of the reference LM (``anybudget.elastic.pipeline.build_elastic``:
    importance + permutation, ``--train-steps`` of elastic distillation, prefill latency table, a
    short router phase), kept in ``--build`` (git-ignored) so a re-run resumes or reuses it
  2 quality data on the workload's protocol (``plan.quality``): the new-token perplexity after a
    prefilled prompt, on ``--quality-seqs`` windows of prompt + new test tokens, of every uniform
    sub-network (full cache) and of the full model with each policy x budget (as ratios)
  3 the latency model (static: linear in bytes read, two compiled points per cache kind,
    ``plan.static_latency_model``; eager: ``plan.decode_latency_model``) and the memory correction
  4 the grid: per budget three ``plan.fit`` calls (both / elastic only / kv only), each measuring
    its choice and falling back while a measurement breaks the budget; then the quality check of
    every new chosen plan: its perplexity measured as it runs (dense export + its cache) on the
    same windows and protocol as phase 2, so prediction and check differ only by the assumption
    that eviction costs every sub-network the same NLL (exact for full caches and the full model)

Across calls (``fit_state.py``): one line per phase, budget and stop on stderr, also under --quiet;
  the record is rewritten after every phase and budget (``complete``, ``phase``, ``stopped``,
  ``phases_s`` summed over calls, ``calls`` with each call's seconds and compile times). Every
  phase, measurement (a candidate's first one compiles; --compile shared: a cache kind's first
  one in a process), budget and quality check
  starts only when its recorded (else default) duration ends within ``--wall-seconds``; SIGTERM
  (``timeout``) stops too. A stopped call saves ``--state`` (finished phases, the bf16 weights as
  .xz, quality, latency model, each latency measurement, whole budgets; a budget cut short runs
  again) and writes it into --out as plan_state.tar (parts .00, .01, ... of 15 MiB: the weights
  alone are ~38 MiB); the next call, given the extracted folder as ``--state``, goes on from there.
  ``--compile-cache DIR`` carries inductor's and Triton's caches in the state (dropped above
  ``--compile-cache-max-mib``), so kernels compiled by an earlier call load from it.

GPU (one H100/H200, one process on GPU 0; each call under `timeout 560`):
    timeout 560 python benchmarks/plan/fit_grid.py --out $OUT/r/plan --quiet \
        --state .carry/plan/fit_state --compile-cache /tmp/fit_grid_inductor
  then here: mkdir -p .carry/plan && cat OUT/r/plan/plan_state.tar* | tar -xf - -C .carry/plan
  until the record says "complete": true. A first call without a state carries
  .carry/reflm/model.safetensors.xz (unpacked into src/anybudget/assets/reflm/) and
  .carry/zoo2/elastic_train4m.u16.xz, and its tar holds the weights (parts .00-.02); later calls
  carry .carry/plan/fit_state only (their tars are one file, extracted over the folder). A state of
  calls 1-2 (shared graphs) resumes at phase 3: build and quality are kept, its two shared-graph
  latency measurements and compile cache are dropped (``State.switch_compile_mode``).
  The second grid on the finished state (phase 4 only; the state's device, else --refit-latency):
    timeout 560 python benchmarks/plan/fit_grid.py --out $OUT/r/plan --quiet --grid bind \
        --state .carry/plan/fit_state
  first counted on the CPU: python benchmarks/plan/fit_predict.py --state .carry/plan/fit_state --grid bind --out DIR
CPU smoke (tiny random model, every phase, seconds):  python benchmarks/plan/fit_grid.py --smoke --out /tmp/fg
Writes to --out: plan_fit_grid.json (results record), plan_fit_grid.png, plan_state.tar[.NN].
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anybudget import plan as P
from anybudget.budget import BudgetError
from anybudget.elastic.data import read_tokens
from anybudget.plan.fit import predict_all
from anybudget.plan.quality import quality_workload

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling fit_state.py when imported from tests
    sys.path.insert(0, str(HERE))
from fit_report import levels, plot, summarize, write_record
from fit_state import Clock, Run, State, Stop, stop_on_sigterm

KINDS = {"plan": ("elastic", "kv"), "elastic_only": ("elastic",), "kv_only": ("kv",)}
GRIDS = {"main": {"mem_levels": "0.8,0.5,0.2", "latency_levels": "1.0,1.25", "latency_scale": "full"},
         "bind": {"mem_levels": "0.8,0.5,0.2", "latency_levels": "0.75,0.5,0.25", "latency_scale": "range"}}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "src/anybudget/assets/reflm"))
    ap.add_argument("--train", default=str(ROOT / ".carry/zoo2/elastic_train4m.u16.xz"), help="training tokens (.u16.xz)")
    ap.add_argument("--test", default=str(ROOT / "benchmarks/zoo/data_v2/test.u16.xz"), help="held-out tokens (.u16.xz, the reference LM v2 tokenizer)")
    ap.add_argument("--build", default=str(ROOT / "benchmarks/plan/build/elastic_reflm"), help="elastic build folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-seq", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1.5e-4, help="elastic training lr (the elastic benchmark's)")
    ap.add_argument("--prompt", type=int, default=896)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--serve", choices=("static", "eager"), default="static",
                    help="static: fixed-slot caches, decoding compiled on CUDA (eager on a CPU); eager: dynamic caches")
    ap.add_argument("--compile", choices=("static", "shared"), default="static",
                    help="static: every measured candidate compiled for its own shapes (fast: module doc); shared: one "
                         "graph per cache kind, weight shapes dynamic (plan.device.compile_settings; several times slower to "
                         "compile)")
    ap.add_argument("--policies", default="h2o,local",
                    help="h2o (best quality) and local (cheapest: no scores); streaming is local + 4 sink tokens, "
                         "and every cache kind costs a compilation")
    ap.add_argument("--kv-budgets", default="50,20,10", help="percent")
    ap.add_argument("--quality-seqs", type=int, default=48, help="windows of prompt + new test tokens (quality, check)")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="main",
                    help="main: the first grid; bind: both axes below the full model (module doc); its preset levels")
    ap.add_argument("--mem-levels", default=None,
                    help="memory budgets: fractions of the way from the smallest reachable peak (0) to the full model's "
                         "(1); default the --grid's")
    ap.add_argument("--latency-levels", default=None, help="latency budgets (--latency-scale); default the --grid's")
    ap.add_argument("--latency-scale", choices=("full", "range"), default=None,
                    help="full: multiples of the full model's step; range: fractions of the way from the fastest "
                         "reachable step (0) to the full model's (1); default the --grid's")
    ap.add_argument("--max-trials", type=int, default=4)
    ap.add_argument("--margin", type=float, default=0.03, help="plans aim this fraction under each budget (noise)")
    ap.add_argument("--wall-seconds", type=float, default=510,
                    help="no phase, measurement, budget or check is started that is not expected to end by then "
                         "(recorded durations, else defaults); 510 leaves a `timeout 560` call ~50 s for the imports "
                         "and the state's tar")
    ap.add_argument("--state", default=None,
                    help="folder of what finished calls did (default benchmarks/plan/build/fit_state; --smoke: OUT/state); "
                         "a call resumes from it")
    ap.add_argument("--no-state-tar", dest="state_tar", action="store_false",
                    help="do not write the state into --out as plan_state.tar (parts .00, .01, ... above 15 MiB)")
    ap.add_argument("--state-tar-weights", action="store_true",
                    help="put the bf16 weights (.xz) in every call's tar, not only in the tar of the call that built them")
    ap.add_argument("--compile-cache", default=None,
                    help="inductor/Triton cache folder (TORCHINDUCTOR_CACHE_DIR), restored from and packed into the state; "
                         "the same absolute path every call (Triton's cache index holds absolute paths)")
    ap.add_argument("--compile-cache-max-mib", type=float, default=8.0,
                    help="the packed compile cache is dropped (and the record says so) above this many MiB")
    ap.add_argument("--refit-latency", action="store_true",
                    help="a --state whose latency model is another device's: fit it again here (else refused)")
    ap.add_argument("--stop-after", default=None,
                    help="end the call after a phase: build, quality, latency or grid:N (N budgets done)")
    ap.add_argument("--smoke", action="store_true", help="tiny random model on the CPU, every phase, seconds")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    preset = GRIDS[a.grid]
    a.mem_levels = a.mem_levels or preset["mem_levels"]
    a.latency_levels = a.latency_levels or preset["latency_levels"]
    a.latency_scale = a.latency_scale or preset["latency_scale"]
    a.grid_key, a.record = ("grid", "plan_fit_grid") if a.grid == "main" else (f"grid_{a.grid}", f"plan_fit_grid_{a.grid}")
    stops = ("build", "quality", "latency") + tuple(f"grid:{i}" for i in range(1, 100))
    if a.stop_after is not None and a.stop_after not in stops:
        ap.error(f"--stop-after {a.stop_after!r} must be build, quality, latency or grid:N (N >= 1)")
    if a.smoke:
        torch.set_num_threads(1)
        a.train_steps, a.train_batch, a.train_seq, a.prompt, a.new, a.batch = 2, 2, 32, 40, 4, 2
        a.quality_seqs, a.max_trials = 3, 3
        if a.latency_scale == "full":
            a.latency_levels = "2,4"  # a tiny model's CPU step times are mostly noise
    return a


def smoke_inputs(tmp: Path):
    """A tiny random Llama folder (reference-LM tokenizer not needed: token files are ids) and tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(str(tmp / "base"))
    g = np.random.default_rng(0)
    return tmp / "base", g.integers(0, 512, 20_000, dtype=np.int64), g.integers(0, 512, 4_000, dtype=np.int64)


def build(a, model_dir, train_tokens, dev):
    from anybudget.elastic import ElasticTrainConfig, RouterTrainConfig, Workload
    from anybudget.elastic.pipeline import ElasticBuildConfig, build_elastic

    train = ElasticTrainConfig(steps=a.train_steps, lr=a.lr, checkpoint_every=max(1, a.train_steps // 4))
    router = RouterTrainConfig(steps=20 if a.smoke else 100, surrogate_samples=4 if a.smoke else 32)
    wl = Workload(batch=1, seq=32, dtype="float32") if a.smoke else None
    data = ElasticBuildConfig(batch=a.train_batch, seq=a.train_seq, calib_batches=2 if a.smoke else 8)
    return build_elastic(model_dir, train_tokens, a.build, train, router, wl, build=data, device=str(dev), quiet=a.quiet)


def grid(a, rows):
    """Memory levels at fractions of the way from the smallest reachable predicted peak to the full
    model's x latency levels as multiples of the full model's predicted step (``--latency-scale full``)
    or fractions of the way from the fastest reachable predicted step to it (``range``; module doc)."""
    full = max(rows, key=lambda r: (r["candidate"]["kv_groups"], r["candidate"]["mlp_width"],
                                    r["candidate"]["policy"] == "full"))
    lo_mem, lo_lat = min(r["mem"] for r in rows), min(r["latency_s"] for r in rows)
    out = []
    for fm in levels(a.mem_levels):
        for fl in levels(a.latency_levels):
            mem = lo_mem + fm * (full["mem"] - lo_mem)
            lat = fl * full["latency_s"] if a.latency_scale == "full" else lo_lat + fl * (full["latency_s"] - lo_lat)
            out.append(f"mem={math.ceil(mem / 2**10)}KiB,latency={lat * 1e3:.4f}ms")
    return out, full


def plan_row(p: P.Plan) -> dict:
    return {"chosen": p.candidate.label, "predicted_mem": p.predicted["mem"], "predicted_latency_s": p.predicted["latency_s"],
            "predicted_ppl": p.predicted["ppl"], "measured_peak_bytes": p.measured["peak_bytes"],
            "measured_step_s": p.measured["step_s"], "peak_kind": p.measured["peak_kind"],
            "trials": [{"label": t["label"], "meets": t["meets"], "peak_bytes": t["measured"]["peak_bytes"],
                        "step_s": t["measured"]["step_s"], "warmup_s": t["measured"].get("warmup_s")} for t in p.trials]}


def fingerprint(a) -> dict:
    """What a --state must have been written with to be resumed (paths excluded: they differ between machines)."""
    keys = ("smoke", "train_steps", "train_batch", "train_seq", "lr", "prompt", "new", "batch", "serve", "policies",
            "kv_budgets", "quality_seqs", "max_trials", "margin")  # a grid's levels: checked by its budgets
    return {k: getattr(a, k) for k in keys} | {"model": "smoke" if a.smoke else Path(a.model).name}


def main(argv=None) -> int:
    a = parse(argv)
    clock = Clock(a.wall_seconds)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    st = State(a.state or (out / "state" if a.smoke else ROOT / "benchmarks/plan/build/fit_state"), fingerprint(a))
    device = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    st.check_device(device, a.refit_latency)
    st["calls"].append({"phases_s": {}, "compile_s": {}, "device": device, "resumed": st.resumed, "phase": "start",
                        "stopped": None})
    st.switch_compile_mode(a.compile)
    restored = 0
    if a.compile_cache:  # read lazily by inductor and Triton: set before the first compilation
        cache = Path(a.compile_cache).resolve()
        os.environ["TORCHINDUCTOR_CACHE_DIR"], os.environ["TRITON_CACHE_DIR"] = str(cache), str(cache / "triton")
        restored = st["calls"][-1]["compile_cache_restored_files"] = st.restore_compile_cache(cache)
    clock.say(f"call {len(st['calls'])} on {st['calls'][-1]['device']}, state {st.dir}"
              f" ({'resumed: ' + ', '.join(st['done']) if st.resumed else 'new'}), --wall-seconds {a.wall_seconds:g}")
    run = Run(a, st, clock, dev, out, write_record)
    run.warm_cache = restored > 0
    previous, crash = stop_on_sigterm(), None
    try:
        run_phases(run)
        run.call["phase"] = "done"
    except Stop as e:
        run.call["stopped"] = str(e)
        clock.say(f"stopped: {e}")
    except BaseException as e:  # noqa: BLE001 - a crash: what finished is written out, then it is raised again
        run.call["stopped"], crash = f"crashed: {type(e).__name__}: {e}"[:500], e
        clock.say(f"stopped: {run.call['stopped']}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the state is saved next; a second TERM must not lose it
    try:
        finish_call(run)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if crash is not None:
        raise crash
    return 0


def run_phases(run: Run) -> None:
    a, st, dev, clock = run.a, run.st, run.dev, run.clock
    if a.smoke:
        a.build = str(run.out / "build")
        model_dir, train_tokens, test_tokens = smoke_inputs(run.out / "build")
    else:
        model_dir, test_tokens, train_tokens = a.model, read_tokens(a.test), None

    def build_phase():
        meta_path = Path(a.build) / "elastic.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if "router" not in meta.get("phases", []):  # --build finished earlier on this machine: reuse it as it is
            tokens = train_tokens
            if tokens is None:
                if not Path(a.train).is_file():
                    raise SystemExit(f"error: --train {a.train} is missing: carry .carry/zoo2/elastic_train4m.u16.xz "
                                     "(the elastic benchmark's training tokens) or give any .u16.xz of reference-LM "
                                     "token ids")
                tokens = read_tokens(a.train)
            meta = build(a, model_dir, tokens, dev)
        st["build"] = {k: meta.get(k) for k in ("phases", "train")} | st.publish_build(a.build)
    run.phase("build", "phase 1 elastic build", build_phase)
    run.em, _ = P.load_elastic_folder(st.elastic_ready(), device=str(dev))
    policies, pcts = tuple(p for p in a.policies.split(",") if p), tuple(levels(a.kv_budgets))
    wl = P.ServingWorkload(a.prompt, a.new, a.batch, "bfloat16" if dev.type == "cuda" else "float32")
    run.wl, run.policies, run.pcts = wl, policies, pcts
    static = a.serve == "static"
    test = torch.as_tensor(test_tokens.astype(np.int64))
    qbatch = a.quality_seqs if dev.type == "cuda" else 16  # one batch on the GPU (only last-position logits kept)

    def quality_phase():
        q = P.measure_quality(run.em, test, wl, policies, pcts, seqs=a.quality_seqs, static=static, batch=qbatch,
                              quiet=a.quiet)
        st["quality"] = q.to_dict()
    run.phase("quality", "phase 2 quality data", quality_phase)
    quality = P.Quality.from_dict(st["quality"])
    qwl = quality_workload(wl, test.numel())
    windows = P.quality_windows(test, qwl, a.quality_seqs)

    def latency_phase():  # a stopped call's measurements come back from run.measure's memo (state "measured")
        if static:
            try:
                lat, calib = P.static_latency_model(run.em, wl, policies, pcts, measure=run.measure)
            except Exception as e:  # shared dynamic-weight graphs failed: compile per sub-network instead
                if not st["share"] or dev.type != "cuda":
                    raise
                st["shared_graphs_error"] = f"{type(e).__name__}: {e}"[:500]
                st.switch_compile_mode("static")  # drops the shared graphs' measurements and compile times
                run.compiled.clear()
                lat, calib = P.static_latency_model(run.em, wl, policies, pcts, measure=run.measure)
        else:
            lat, calib = P.decode_latency_model(run.em, wl, policies, min(pcts))
        st["latency"] = {"model": lat.to_dict(), "calibration": calib}
    run.phase("latency", "phase 3 latency model", latency_phase)
    lat = P.LatencyModel.from_dict(st["latency"]["model"])
    rows = predict_all(run.em, wl, quality, lat, policies, pcts)
    budgets, run.full = grid(a, rows)
    done = st.d.setdefault(a.grid_key, [])
    clock.say(f"phase 4 grid {a.grid}: {len(done)} of {len(budgets)} budgets done before this call")
    run.call["phase"] = a.grid_key
    for i, b in enumerate(budgets):
        if i < len(done):
            if done[i]["budget"] != b:
                raise ValueError(f"--state {str(st.dir)!r}: --grid {a.grid} budget {i} is {done[i]['budget']}, now {b} "
                                 "(other levels: give another --grid)")
            continue
        clock.need(run.est("budget"), f"grid budget {i + 1}/{len(budgets)} not started")
        clock.say(f"grid budget {i + 1}/{len(budgets)} {b}: start")
        t, compiled = time.perf_counter(), sum(run.call["compile_s"].values())
        entry, checked = fit_budget(run, b, quality, lat, rows, windows, qwl, static, qbatch)
        dt = time.perf_counter() - t
        done.append(entry)
        st["checked"].update(checked)
        st["durations"]["budget"] = dt - (sum(run.call["compile_s"].values()) - compiled)  # compiles are guarded apart
        run.call["phases_s"][a.grid_key] = run.call["phases_s"].get(a.grid_key, 0.0) + dt
        st.add_time(a.grid_key, dt)
        st.save()
        clock.say(f"grid budget {i + 1}/{len(budgets)}: end ({dt:.1f} s) "
                  f"{ {k: entry[k].get('chosen', 'infeasible') for k in KINDS} }")
        write_record(run)
        if a.stop_after == f"grid:{i + 1}" and i + 1 < len(budgets):
            raise Stop(f"--stop-after grid:{i + 1}")
    st.finish(a.grid_key, 0.0)  # its time was added per budget


def fit_budget(run: Run, b, quality, lat, rows, windows, qwl, static, qbatch):
    """The three fits of budget ``b`` and the quality check of each new choice; kept only when whole
    (a call stopped inside a budget runs it again next call)."""
    a, em, dev = run.a, run.em, run.dev
    entry, checked = {"budget": b}, {}
    for kind, tech in KINDS.items():
        try:
            p = P.fit(em, b, run.wl, quality, lat, run.policies, run.pcts, tech, a.max_trials, margin=a.margin,
                      quiet=a.quiet, measure=run.measure)
            entry[kind] = plan_row(p)
        except BudgetError as e:
            entry[kind] = {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - one failing fit must not lose the others
            if isinstance(e, torch.OutOfMemoryError) and dev.type == "cuda":
                torch.cuda.empty_cache()
            entry[kind] = {"error": f"{type(e).__name__}: {e}"[:500], "crashed": True}
    for kind in KINDS:  # the quality check of each new choice, on the quality phase's windows and protocol
        lab = entry[kind].get("chosen")
        if lab is not None and lab not in run.st["checked"] and lab not in checked:
            c = next(P.Candidate(**r["candidate"]) for r in rows if r["label"] == lab)
            pred = next(r["ppl"] for r in rows if r["label"] == lab)
            run.clock.need(run.est("check"), f"quality check of {lab}")
            t = time.perf_counter()
            ppl = P.measured_ppl(em, c, windows, qwl, static, qbatch)
            run.st["durations"]["check"] = max(time.perf_counter() - t, run.st["durations"].get("check", 0.0))
            checked[lab] = {"predicted_ppl": pred, "measured_ppl": ppl,
                            "exact": c.policy == "full" or (c.kv_groups, c.mlp_width) == (max(em.kv_choices),
                                                                                         max(em.mlp_choices))}
    return entry, checked


def finish_call(run: Run) -> None:
    """End of a call: the compile cache and the state into the state folder and ``--out``, the record, the plot."""
    a, st, clock = run.a, run.st, run.clock
    if a.compile_cache:
        st["compile_cache"] = st.pack_compile_cache(a.compile_cache, int(a.compile_cache_max_mib * 2**20))
        clock.say(f"compile cache: {st['compile_cache']}")
    run.call["total_s"] = clock.elapsed()
    st.save()
    if a.state_tar:
        t = time.perf_counter()
        files = st.write_tar(run.out, weights=a.state_tar_weights or "build" in run.call["phases_s"])
        st["tar"] = {"files": [f.name for f in files], "bytes": sum(f.stat().st_size for f in files),
                     "seconds": time.perf_counter() - t}
        clock.say(f"state: {st['tar']['bytes'] / 2**20:.1f} MiB in {', '.join(st['tar']['files'])}; next call: "
                  f"cat plan_state.tar* | tar -xf - -C {st.dir.parent}")
    path = write_record(run)
    st.save()
    plot(st.get(a.grid_key, []), run.out / f"{a.record}.png")
    done = a.grid_key in st["done"]
    clock.say(f"wrote {path} ({'complete' if done else 'NOT complete: resume with --state'}; "
              f"{summarize(st.get(a.grid_key, []), st['checked'])})")


if __name__ == "__main__":
    sys.exit(main())
