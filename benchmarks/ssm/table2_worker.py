"""One worker process of ``table2_scaled.py``: claims runs, trains each with a checkpoint, records it.

A run is one (polarization, depth, seed). Workers on the same machine share ``<state>/runs`` and
claim runs by creating ``<state>/claims/<run>`` exclusively (the launcher clears claims at the
start of each call). A run is started only when its predicted time (steps left x the step time
measured on this machine, +15%) fits in the call's remaining time, so calls end with whole runs;
one cut by the guard anyway leaves its checkpoint (with its configuration: a mismatch is refused).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

POLS = ("default", "one", "zero", "both")
DIAG_TARGETS = {("default", 4), ("both", 4)}  # issue 17 item 4: default vs both at depth 4
DEFAULT_STEP_S = {2: 0.008, 4: 0.014}  # until this machine has measured its own
PARTIAL_MIN_S = 120.0  # a partial run gets at least this long (compile warm-up included) or is not started


def run_name(pol, layers, seed):
    return f"{pol}_L{layers}_s{seed}"


def all_runs(seeds, order=None):
    """(pol, layers, seed) in claim order. v1 (``order`` None): depth 4 first, so the longest runs start
    first and short ones fill the end of a call. v2: ``order`` ("default_L2", ...) per seed, seeds in turn
    (all 8 configurations, or a subset for a diagnostic registration, each at most once)."""
    if order is None:
        return [(p, L, s) for L in (4, 2) for s in seeds for p in POLS]
    cfgs = [(o.rsplit("_L", 1)[0], int(o.rsplit("_L", 1)[1])) for o in order]
    known = {(p, L) for p in POLS for L in (2, 4)}
    if not cfgs or len(set(cfgs)) != len(cfgs) or not set(cfgs) <= known:
        raise ValueError(f"order {order}: must name configurations of the 8 ({', '.join(sorted(f'{p}_L{L}' for p, L in known))}), "
                         "each at most once")
    return [(p, L, s) for s in seeds for p, L in cfgs]


def build(pol, layers, seed, plan):
    from anybudget.ssm import LMConfig, MambaConfig, MambaLM

    torch.manual_seed(seed)
    mc = MambaConfig(d_model=plan["d_model"], d_state=16, polarize=None if pol == "default" else pol)
    return MambaLM(LMConfig(vocab_size=plan["vocab_size"], d_model=plan["d_model"], n_layers=layers, mamba=mc))


def segments_and_tests(plan):
    from anybudget.ssm.mqar import TRAIN_MIXTURE, MQARSegment

    L = plan["seq_len"]
    segs = tuple(s for s in TRAIN_MIXTURE if s.seq_len <= L)
    tests = tuple(MQARSegment(L, plan["test_examples"], L // k) for k in (16, 8, 4))
    return segs, tests


def train_config(plan, seed, steps=None):
    from anybudget.ssm.train import TrainConfig

    return TrainConfig(lr=plan["lr"], weight_decay=plan["weight_decay"], batch_size=plan["batch_size"],
                       test_batch_size=250, max_steps=steps or plan["steps"], eval_every=plan["eval_every"],
                       early_stop_acc=plan["early_stop_acc"], seed=seed, vocab_size=plan["vocab_size"],
                       test_examples=plan["test_examples"], checkpoint_every=plan["checkpoint_every"])


def diagnose(model, plan, seed, device):
    """Recency (influence vs distance) and over-smoothing (sharpness per layer) of a trained model."""
    from anybudget.ssm.diagnostics import influence_scores, layer_sharpness
    from anybudget.ssm.mqar import multiquery_ar

    L = plan["seq_len"]
    ids, _ = multiquery_ar(plan["vocab_size"], L, L // 16, 4, seed=seed, random_non_queries=True, device=device)
    infl = influence_scores(model, ids).cpu()
    t = infl.numel() - 1
    return {"influence_log_norm": [round(float(v), 4) for v in infl],
            "influence_at_distance": {d: float(infl[t - d]) for d in (0, 16, 64, 128, 255) if d <= t},
            "sharpness_normalized": layer_sharpness(model, ids, normalize=True)}


def step_time(state: Path, layers: int) -> float:
    """Seconds per step at this depth: measured by an earlier run here, else by the pilot, else a guess."""
    f = state / f"step_time_L{layers}.json"
    if f.exists():
        return json.loads(f.read_text())["step_s"]
    pf = state / "pilot.json"
    if pf.exists():
        return json.loads(pf.read_text())["metrics"]["step_s"][str(layers)]
    return DEFAULT_STEP_S[layers]


def _claim(state: Path, name: str) -> bool:
    (state / "claims").mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(state / "claims" / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def work(state: Path, plan: dict, deadline: float, step_mode: str, log=print, only=None,
         allow_partial: bool = False) -> None:
    """Train unclaimed, unfinished runs until none is left or none fits before ``deadline``.

    ``only``: run names to restrict to (default: all 8 configs x seeds). ``allow_partial``: also start a
    run that cannot finish before the deadline when at least PARTIAL_MIN_S are left (it checkpoints and
    the next call resumes it), e.g. a 48,000-step run whose estimate with the 15% margin exceeds a call."""
    from anybudget.io import atomic_write_json
    from anybudget.ssm.checkpoint import CheckpointMismatch
    from anybudget.ssm.train import train_mqar

    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs_dir = state / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    segs, tests = segments_and_tests(plan)
    for pol, L, seed in all_runs(plan["seeds"], plan.get("order")):
        name = run_name(pol, L, seed)
        if (only and name not in only) or (runs_dir / f"{name}.json").exists() or not _claim(state, name):
            continue
        ck = runs_dir / f"{name}.ckpt.pt"
        done_steps = 0
        if ck.exists():
            done_steps = torch.load(ck, map_location="cpu", weights_only=True)["step"]
        need = (plan["steps"] - done_steps) * step_time(state, L) * 1.15 + 30
        left = deadline - time.monotonic()
        if need > left:
            if not (allow_partial and left > PARTIAL_MIN_S):
                log(f"skip {name}: needs ~{need:.0f}s, {left:.0f}s left in this call")
                continue
            log(f"start {name} anyway (--allow-partial): needs ~{need:.0f}s, {left:.0f}s left; the next call resumes it")
        model = build(pol, L, seed, plan).to(device)
        cfg = train_config(plan, seed)
        t0 = time.monotonic()
        mode = step_mode
        try:
            res = train_mqar(model, cfg, segs, tests, checkpoint=ck, time_budget_s=left - 20, quiet=True,
                             step=mode)
        except CheckpointMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - the fast step failed on this machine: the reference step, from scratch
            log(f"{name}: step={mode} failed ({e!r:.200}); retrying with step=reference")
            mode = "reference"
            ck.unlink(missing_ok=True)
            model = build(pol, L, seed, plan).to(device)
            res = train_mqar(model, cfg, segs, tests, checkpoint=ck, time_budget_s=deadline - time.monotonic() - 20,
                             quiet=True, step=mode)
        wall = time.monotonic() - t0
        steps_run = res["step"] - done_steps
        if steps_run > 200:
            atomic_write_json(state / f"step_time_L{L}.json", {"step_s": wall / steps_run, "from": name})
        if not res["done"]:
            log(f"time guard: {name} stopped at step {res['step']} (checkpoint {ck.name})")
            continue
        record = {"run": name, "config": pol, "layers": L, "seed": seed, "final": res["final"],
                  "history": res["history"], "step_mode": mode, "wall_s_this_call": wall,
                  "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
        if (pol, L) in DIAG_TARGETS:
            record["diagnostics"] = diagnose(model, plan, seed, device)
            if seed == plan["seeds"][0]:
                from safetensors.torch import save_file

                wdir = state / "weights"
                wdir.mkdir(exist_ok=True)
                # bf16 keeps the carried folder small (3 MB at depth 4); diagnostics ran on fp32.
                save_file({k: v.detach().to(torch.bfloat16).contiguous().cpu()
                           for k, v in model.state_dict().items() if k != "lm_head.weight"},
                          str(wdir / f"{name}.safetensors"))
        atomic_write_json(runs_dir / f"{name}.json", record)
        ck.unlink(missing_ok=True)
        log(f"done {name}: {json.dumps({k: round(v, 4) for k, v in res['final'].items() if k.startswith('kv') or k == 'avg'})}")
