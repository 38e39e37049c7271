"""A scaled Table 2 of Wang et al. (ICLR 2025), pre-registered here before it runs, on 1-2 GPUs.

PRE-REGISTERED SETTING (issue 17 item 3; fixed before any result of the scaled run is seen):
  * task: MQAR (Zoology generator), vocab 8192, filler tokens 0, power_a 0.01;
  * train: the reference mixture truncated at seq 256: (64, 4 pairs), (128, 8), (256, 16/32/64),
    weighted by the reference's example counts (100k / 20k / 3 x 20k); fresh examples every step;
  * test: seq 256 with 16 / 32 / 64 pairs (the paper's seq//16, //8, //4), 1000 examples each;
    also the validation set for early stopping, as in the reference code;
  * model: MambaLM d_model 128, d_state 16 (+1 one / +1 zero channel when polarized, exact form
    A-bar = 1 / 0), configs default / one / zero / both at depth 2 and 4 (8 configs);
  * optimisation: AdamW lr 1e-3, weight decay 0.1 (not on A_log, D, norms, biases), batch 128,
    cosine decay to 0 over STEPS, the same STEPS for all 8 configs, early stop once the mean
    validation accuracy reaches 0.99 (evaluated every 500 steps), 2 seeds (123, 124);
  * STEPS: from the pilot (``--pilot``: default depth 2, seed 123, the same setting), the first
    evaluated step at which accuracy on 16 pairs reaches 0.5, times 2, rounded up to 500, at
    least 2000, at most what 16 runs fit into two 9-minute calls on 2 GPUs (from the pilot's
    measured step times); if the pilot never reaches 0.5, that maximum. ``--steps auto`` applies
    this rule to ``ssm_table2_scaled_pilot.json``;
  * orderings tested (paper's claims): (a) both-L4 has the best mean accuracy of the 8;
    (b) zero makes depth help: zero's L4 - L2 gain exceeds default's; (c) one helps at the
    hardest split: one-L2 beats default-L2 on 64 pairs. Reported per seed and on the seed mean.
  * diagnostics on the trained default-L4 and both-L4 models: influence vs distance (recency)
    and normalised sharpness per layer (over-smoothing), seq 256 inputs.

SECOND REGISTRATION, v2 (written 2026-11-26 after v1 ran in full and before any v2 run; ``--registration v2``,
the default from then on; v1's record stays ``ssm_table2_scaled.json``):
  * why: v1's rule set STEPS to its cap, 4,000, where the pilot was at 0.17 on 16 pairs and nothing
    had learned the task (all 16 runs at 2.3-3.2% except one); the orderings could not be tested;
  * everything above is unchanged (task, test splits, model, optimiser, lr, cosine to 0, batch,
    early stop at 0.99, 2 seeds, the three orderings, the diagnostics) except:
  * STEPS = 24,000 for all 16 runs, fixed here, not from a new pilot: v1's pilot (default L2,
    cosine over 10,000 steps) was still rising on 16 pairs (0.49) until its learning rate decayed;
    v1's own rule, 2 x the step reaching 0.5, gives at least 20,000; 24,000 adds a fifth;
  * the step: ``compile+cudagraph`` (v1: ``auto``, CUDA graphs without compile); the same arithmetic,
    held to the reference step by the fast step's tests;
  * run order (several calls, resumable): seed 123 before seed 124, each seed in the order
    default L2, default L4, zero L2, zero L4, one L2, both L4, both L2, one L4 (the pairs each
    ordering needs first); record ``ssm_table2_scaled_v2.json``, state ``.carry/ssm/table2_scaled_v2``.

DIAGNOSTIC REGISTRATION, v2-48k (written 2026-11-26 after 15 of v2's 16 runs, before any v2-48k run;
``--registration v2-48k``; record ``ssm_table2_scaled_v2_48k.json``, state ``.carry/ssm/table2_scaled_v2_48k``):
  * why: in v2 the one-channel at depth 2 lost to the default (seed mean 53.0 against 88.0; 64 pairs
    26.6 against 69.7), yet both its seeds sat on a loss plateau from ~7k to 12k steps and were still
    climbing when the 24,000-step schedule ended; v2's step count is about a quarter of the
    reference's schedule (64 epochs of the mixture: ~90k steps here);
  * setting: v2's in every respect except STEPS = 48,000 and only default L2 and one L2, seeds 123
    and 124 (4 runs, in that order per seed);
  * the question, answered by the seed means of the 16/32/64-pair average: if one L2 reaches at
    least default L2's at 48,000 steps, v2's depth-2 gap is learning speed at v2's schedule; if it
    stays below, the one-channel costs accuracy at this scale. Ordering (c) (64 pairs) is reported too.

Runs are spread over the GPUs by worker processes (``--procs-per-gpu`` per GPU), each claiming
the next unfinished run (``table2_worker.py``). State lives in ``--state-dir`` (finished runs'
records, checkpoints of runs the time guard cut, step times, the plan); a later call with the same
folder resumes, and a folder made with another plan is refused. The small state is also packed
into ``$OUT/table2_scaled_state.tar`` for the coordinator to carry back.

    python benchmarks/ssm/table2_scaled.py --pilot --out $OUT --state-dir .carry/ssm/table2_scaled
    python benchmarks/ssm/table2_scaled.py --steps auto --out $OUT --state-dir .carry/ssm/table2_scaled
    python benchmarks/ssm/table2_scaled.py --smoke --out /tmp/t2   # CPU, seconds, whole code path
    python benchmarks/ssm/table2_scaled.py --registration v2 --out $OUT   # v2: 24,000 steps, resumes
    # a lost state folder: its finished runs come back from the committed record, the rest train
    python benchmarks/ssm/table2_scaled.py --registration v2 --out $OUT \
        --restore-from benchmarks/results/ssm/ssm_table2_scaled_v2.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# Paper Table 2 (accuracy %, seq 1024, 64 / 128 / 256 pairs, avg); None where not reported.
PAPER = {
    ("default", 2): (98.38, 81.81, 36.00, 72.06), ("default", 4): (99.23, 82.08, 33.52, 71.61),
    ("one", 2): (99.81, 94.70, 56.39, 83.63), ("one", 4): None,
    ("zero", 2): (98.41, 81.35, 36.55, 72.10), ("zero", 4): (99.74, 92.20, 52.21, 81.38),
    ("both", 2): (99.23, 95.54, 54.74, 83.17), ("both", 4): (99.94, 98.80, 81.56, 93.43),
}
PLAN = {"seq_len": 256, "vocab_size": 8192, "d_model": 128, "lr": 1e-3, "weight_decay": 0.1, "batch_size": 128,
        "eval_every": 500, "early_stop_acc": 0.99, "test_examples": 1000, "seeds": [123, 124],
        "checkpoint_every": 1000}
# v2 (docstring): the same plan with a fixed step count, the compiled step and a priority order of runs.
V2 = {"steps": 24000, "registration": "v2", "step_mode": "compile+cudagraph",
      "order": [f"{p}_L{n}" for p, n in (("default", 2), ("default", 4), ("zero", 2), ("zero", 4), ("one", 2),
                                         ("both", 4), ("both", 2), ("one", 4))]}
REGISTRATIONS = {"v1": {"record": "ssm_table2_scaled", "state": ".carry/ssm/table2_scaled"},
                 "v2": {"record": "ssm_table2_scaled_v2", "state": ".carry/ssm/table2_scaled_v2"},
                 "v2-48k": {"record": "ssm_table2_scaled_v2_48k", "state": ".carry/ssm/table2_scaled_v2_48k"}}
# v2-48k (docstring): v2's plan, 48,000 steps, default and one at depth 2 only.
V2_48K = {**V2, "steps": 48000, "registration": "v2-48k", "order": ["default_L2", "one_L2"]}
FIXED = {"v2": V2, "v2-48k": V2_48K}  # registrations whose step count and step mode are fixed
SMOKE_PLAN = {**PLAN, "seq_len": 64, "vocab_size": 96, "d_model": 16, "batch_size": 4, "eval_every": 4,
              "test_examples": 8, "seeds": [1, 2], "checkpoint_every": 4, "steps": 8}
CALL_S, N_GPU_CALLS = 480, 2  # the budget rule: 16 runs in two 9-minute calls on 2 GPUs


def steps_from_pilot(pilot: dict) -> int:
    """The pre-registered rule (module docstring) applied to a pilot record's metrics."""
    m = pilot["metrics"]
    per_run = (m["step_s"]["2"] + m["step_s"]["4"]) / 2
    cap = int(CALL_S * N_GPU_CALLS * 2 / (16 * per_run) // 500 * 500)
    hit = next((h["step"] for h in m["history"] if h["kv16"] >= 0.5), None)
    if hit is None:
        return max(cap, 2000)
    return max(2000, min(cap, math.ceil(2 * hit / 500) * 500))


def pilot(args, plan) -> int:
    import table2_worker as w

    from anybudget.io import write_results
    from anybudget.ssm.train import train_mqar

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    segs, tests = w.segments_and_tests(plan)
    steps = 8 if args.smoke else args.pilot_steps
    step_s = {}
    for L in (4, 2):  # the depth-4 step time, for the budget rule, from a short run
        n = 4 if args.smoke else 300
        # A tiny final evaluation; the graph captures / compiles stay in: every real run pays them.
        cfg = w.train_config({**plan, "eval_every": 10**6, "test_examples": 8}, plan["seeds"][0], steps=n)
        t0 = time.monotonic()
        try:
            train_mqar(w.build("both", L, plan["seeds"][0], plan).to(device), cfg, segs, tests, quiet=True,
                       step=args.step)
        except Exception as e:  # noqa: BLE001 - the fast step failed here: the workers will fall back too
            print(f"step={args.step} failed ({e!r:.200}); the pilot uses step=reference", flush=True)
            args.step = "reference"
            t0 = time.monotonic()
            train_mqar(w.build("both", L, plan["seeds"][0], plan).to(device), cfg, segs, tests, quiet=True,
                       step=args.step)
        step_s[str(L)] = (time.monotonic() - t0) / n
    model = w.build("default", 2, plan["seeds"][0], plan).to(device)
    cfg = w.train_config({**plan, "eval_every": 4 if args.smoke else 250, "test_examples": plan["test_examples"]},
                         plan["seeds"][0], steps=steps)
    res = train_mqar(model, cfg, segs, tests, quiet=args.quiet, step=args.step,
                     log=lambda h: print(json.dumps(h), flush=True))
    metrics = {"history": res["history"], "step_s": step_s, "final": res["final"]}
    record = {"metrics": metrics}
    metrics["suggested_steps"] = steps_from_pilot(record)
    config = {"run": "pilot: default Mamba, depth 2, seed 123, the pre-registered scaled setting",
              "plan": plan, "pilot_steps": steps, "step_mode": args.step, "device": device,
              "rule": "STEPS = 2 x first eval step with kv16 >= 0.5, rounded up to 500, in [2000, budget cap]"}
    path = write_results("ssm_table2_scaled_pilot", config, metrics, out_dir=args.out)
    (Path(args.state_dir) / "pilot.json").parent.mkdir(parents=True, exist_ok=True)
    (Path(args.state_dir) / "pilot.json").write_text(json.dumps({"metrics": metrics}))
    print(f"suggested --steps {metrics['suggested_steps']}; wrote {path}")
    pack_state(Path(args.state_dir), Path(args.out) / "table2_scaled_state.tar")
    return 0


def plan_diff(a: dict, b: dict) -> list[str]:
    """The keys whose values differ between two plans (a key missing on one side counts)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def load_plan(args) -> dict:
    """The plan of this state folder; the first call writes it, later calls must match it."""
    from anybudget.io import atomic_write_json

    state = Path(args.state_dir)
    base = dict(SMOKE_PLAN if args.smoke else PLAN)
    reg = getattr(args, "registration", "v1")
    if reg in FIXED:
        fixed = FIXED[reg]
        if args.steps not in (None, str(fixed["steps"])) and not args.smoke:
            raise SystemExit(f"--steps {args.steps}: registration {reg} fixes {fixed['steps']} steps; leave --steps out")
        base.update({k: v for k, v in fixed.items() if not (args.smoke and k == "steps")})
        if args.step != fixed["step_mode"] and not args.smoke:
            raise SystemExit(f"--step {args.step}: registration {reg} fixes the step {fixed['step_mode']!r}")
    elif not args.smoke:
        if args.steps == "auto":
            pf = state / "pilot.json"
            if not pf.exists():
                raise SystemExit(f"--steps auto: no pilot record {pf}; run with --pilot first or give --steps N")
            base["steps"] = steps_from_pilot(json.loads(pf.read_text()))
        elif args.steps is not None:
            base["steps"] = int(args.steps)
    f = state / "plan.json"
    if f.exists():
        saved = json.loads(f.read_text())
        if args.steps is None or args.steps == "auto":
            base["steps"] = saved["steps"]  # auto on a resumed run keeps the registered step count
        diff = plan_diff(saved, base)
        if diff:
            raise SystemExit(f"--state-dir {state} holds a run with another plan ({', '.join(f'{k}: {saved.get(k)} vs {base.get(k)}' for k in diff)}); "
                             "use another --state-dir or the same settings")
        return saved
    if "steps" not in base:
        raise SystemExit("--steps: give a step count or 'auto' (after --pilot)")
    state.mkdir(parents=True, exist_ok=True)
    atomic_write_json(f, base)
    return base


def restore_from_record(state: Path, record_path: Path, plan: dict) -> list[str]:
    """Seed a lost state folder's finished runs from a committed record of the same plan.

    Writes ``runs/<name>.json`` for every (config, depth, seed) in the record's rows that the folder
    lacks, with the record's final accuracies, its diagnostics and ``restored_from`` (the record and
    its commit); histories and weights are not in a record, so they stay empty. Runs the folder
    already has are left alone. Returns the names written."""
    import table2_worker as w

    from anybudget.io import atomic_write_json

    try:
        rec = json.loads(Path(record_path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--restore-from {record_path}: cannot read a results record ({e})") from e
    saved = rec.get("config", {}).get("pre_registered")
    if saved != plan:
        diff = plan_diff(saved or {}, plan)
        raise SystemExit(f"--restore-from {record_path}: the record was made with another plan "
                         f"(differs in: {', '.join(diff) or 'everything'}); restore only from this registration's record")
    keys = rec["config"]["test_keys"]
    diags = rec["metrics"].get("diagnostics", {})
    runs_dir = state / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for row in rec["metrics"]["rows"]:
        for i, (seed, vals) in enumerate(row["seeds"].items()):
            name = w.run_name(row["config"], row["layers"], int(seed))
            if (runs_dir / f"{name}.json").exists():
                continue
            final = {k: v / 100 for k, v in zip(keys, vals, strict=True)}
            final["step"] = row["steps_run"][i]
            out = {"run": name, "config": row["config"], "layers": row["layers"], "seed": int(seed), "final": final,
                   "history": [], "restored_from": {"record": str(record_path), "commit": rec.get("commit"),
                                                    "device": rec.get("device")}}
            if name in diags:
                out["diagnostics"] = diags[name]
            atomic_write_json(runs_dir / f"{name}.json", out)
            written.append(name)
    return written


def worker_gpu(g: int, visible: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES of the worker on this process's GPU ``g``: the g-th of the caller's list if set."""
    ids = [v.strip() for v in (visible or "").split(",") if v.strip()]
    return ids[g] if g < len(ids) else str(g)


def launch(args, plan) -> None:
    """Start the workers (one or more per GPU), wait for them; each stops before the deadline."""
    state = Path(args.state_dir)
    for c in (state / "claims").glob("*") if (state / "claims").exists() else []:
        c.unlink()
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() and not args.smoke else 0
    slots = [(g, k) for g in range(max(n_gpu, 1)) for k in range(args.procs_per_gpu if n_gpu else 1)]
    left = args.time_limit - (time.monotonic() - T_START)
    procs = []
    for g, k in slots:
        env = dict(os.environ)
        if n_gpu:
            env["CUDA_VISIBLE_DEVICES"] = worker_gpu(g, os.environ.get("CUDA_VISIBLE_DEVICES"))
        cmd = [sys.executable, str(HERE / "table2_scaled.py"), "--worker", "--registration", args.registration,
               "--state-dir", str(state),
               "--time-limit", str(left), "--step", args.step] + (["--smoke"] if args.smoke else []) \
            + (["--runs", args.runs] if args.runs else []) + (["--allow-partial"] if args.allow_partial else [])
        log = open(state / f"worker_{g}_{k}.log", "a")  # noqa: SIM115 - closed after the process ends
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        print(f"worker {g}.{k} started", flush=True)
    for p, log in procs:
        p.wait()
        log.close()
    for g, k in slots:
        tail = (state / f"worker_{g}_{k}.log").read_text().splitlines()[-5:]
        print(f"--- worker {g}.{k}:", *tail, sep="\n  ")


def ordering_checks(mean):
    """The paper's three claims on a {(pol, L): (kv16, kv32, kv64, avg)} table (accuracy %).

    Each claim is checked once the configurations it compares are in the table (a partial table
    checks what it can); None when none can be checked."""
    out = {}
    if len(mean) == 8:
        best = max(mean, key=lambda k: mean[k][3])
        out["both_L4_best"] = {"holds": best == ("both", 4), "best": f"{best[0]}_L{best[1]}"}
    if all(k in mean for k in (("zero", 2), ("zero", 4), ("default", 2), ("default", 4))):
        out["zero_makes_depth_help"] = {"holds": mean[("zero", 4)][3] - mean[("zero", 2)][3]
                                        > mean[("default", 4)][3] - mean[("default", 2)][3],
                                        "zero_gain": mean[("zero", 4)][3] - mean[("zero", 2)][3],
                                        "default_gain": mean[("default", 4)][3] - mean[("default", 2)][3]}
    if all(k in mean for k in (("one", 2), ("default", 2))):
        out["one_helps_hardest_split"] = {"holds": mean[("one", 2)][2] > mean[("default", 2)][2],
                                          "one_L2_kv64": mean[("one", 2)][2], "default_L2_kv64": mean[("default", 2)][2]}
    return out or None


def report(args, plan) -> int:
    import table2_worker as w

    from anybudget.io import write_results

    state = Path(args.state_dir)
    runs = {p.stem: json.loads(p.read_text()) for p in sorted((state / "runs").glob("*.json"))}
    L = plan["seq_len"]
    keys = [f"kv{L // 16}", f"kv{L // 8}", f"kv{L // 4}", "avg"]
    rows, per_seed, mean = [], {s: {} for s in plan["seeds"]}, {}
    for pol, layers, _ in w.all_runs(plan["seeds"][:1], plan.get("order")):
        got = [runs[w.run_name(pol, layers, s)] for s in plan["seeds"] if w.run_name(pol, layers, s) in runs]
        for r in got:
            per_seed[r["seed"]][(pol, layers)] = [round(100 * r["final"][k], 2) for k in keys]
        if len(got) == len(plan["seeds"]):
            mean[(pol, layers)] = [round(sum(per_seed[s][(pol, layers)][i] for s in plan["seeds"]) / len(got), 2)
                                   for i in range(4)]
        rows.append({"config": pol, "layers": layers, "seeds": {r["seed"]: per_seed[r["seed"]][(pol, layers)] for r in got},
                     "mean": mean.get((pol, layers)), "steps_run": [r["final"]["step"] for r in got],
                     "paper_seq1024": PAPER[(pol, layers)]})
    checks = {"seed_mean": ordering_checks(mean),
              **{f"seed_{s}": ordering_checks(per_seed[s]) for s in plan["seeds"]}}
    diags = {r["run"]: r["diagnostics"] for r in runs.values() if "diagnostics" in r}
    pending = [w.run_name(*r) for r in w.all_runs(plan["seeds"], plan.get("order")) if w.run_name(*r) not in runs]
    config = {"pre_registered": plan, "paper": "Table 2 at seq 1024 (64/128/256 pairs); ours at seq 256 (16/32/64)",
              "test_keys": keys, "step_mode": args.step, "smoke": args.smoke}
    metrics = {"complete": not pending, "pending": pending, "rows": rows, "ordering_checks": checks,
               "diagnostics": diags}
    name = REGISTRATIONS[getattr(args, "registration", "v1")]["record"] + ("_smoke" if args.smoke else "")
    path = write_results(name, config, metrics,
                         baseline={"source": "Wang et al. ICLR 2025 Table 2",
                                   "rows": {f"{p}_L{n}": v for (p, n), v in PAPER.items()}}, out_dir=args.out)
    print(json.dumps(checks["seed_mean"]), f"pending: {pending}", f"wrote {path}", sep="\n")
    try:
        plot(rows, keys, diags, Path(args.out) / f"{name}.png")
    except Exception as e:  # noqa: BLE001 - the record matters more than the picture
        print("plot failed:", e)
    pack_state(state, Path(args.out) / "table2_scaled_state.tar")
    return 0


def plot(rows, keys, diags, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if diags else 1, figsize=(15 if diags else 7, 4), squeeze=False)
    ax = axes[0][0]
    labels = [f"{r['config']} L{r['layers']}" for r in rows]
    x = range(len(rows))
    for j, (k, off) in enumerate(zip(keys[:3], (-0.25, 0, 0.25))):
        for i, r in enumerate(rows):
            for acc in r["seeds"].values():
                ax.plot(i + off, acc[j], "o", ms=3, color=f"C{j}")
        ax.bar([i + off for i in x], [(r["mean"] or [0] * 4)[j] for r in rows], width=0.25, alpha=0.5,
               color=f"C{j}", label=f"ours {k} (seq 256)")
    ax.plot(list(x), [r["paper_seq1024"][3] if r["paper_seq1024"] else float("nan") for r in rows], "k_", ms=14,
            label="paper avg (seq 1024)")
    ax.set_xticks(list(x), labels, rotation=45, ha="right")
    ax.set_ylabel("accuracy %")
    ax.set_title("Scaled Table 2 (bars: seed mean, dots: seeds)")
    ax.legend(fontsize=7)
    if diags:
        for name, d in sorted(diags.items()):
            axes[0][1].plot(list(reversed(d["influence_log_norm"])), label=name)
            axes[0][2].plot(d["sharpness_normalized"], "o-", label=name)
        axes[0][1].set(xlabel="distance t - s", ylabel="log ||dh_t/dx_s||", title="Recency (trained)")
        axes[0][2].set(xlabel="layer (0 = embedding)", ylabel="normalised sharpness", title="Over-smoothing (trained)")
        axes[0][1].legend(fontsize=7)
        axes[0][2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pack_state(state: Path, tar_path: Path, limit=15 * 2**20) -> None:
    """Pack the state (records, plan, step times, weights; cut runs' checkpoints while it fits)."""
    files = [p for p in state.rglob("*") if p.is_file() and "claims" not in p.parts and not p.name.endswith(".log")]
    small = [p for p in files if not p.name.endswith(".ckpt.pt")]
    total = sum(p.stat().st_size for p in small)
    dropped = []
    for ck in (p for p in files if p.name.endswith(".ckpt.pt")):
        if total + ck.stat().st_size <= limit:
            small.append(ck)
            total += ck.stat().st_size
        else:
            dropped.append(ck.name)
    with tarfile.open(tar_path, "w") as tar:
        for p in small:
            tar.add(p, arcname=str(Path(state.name) / p.relative_to(state)))
    print(f"state: {tar_path} ({total / 2**20:.1f} MiB){'; not packed (too large): ' + ', '.join(dropped) if dropped else ''}")


T_START = time.monotonic()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from anybudget.io import results_dir

    ap.add_argument("--out", default=str(results_dir("ssm_table2_scaled")))
    ap.add_argument("--registration", choices=sorted(REGISTRATIONS), default="v2",
                    help="which pre-registered setting (module docstring): v1 (ran in full, 4,000 steps), v2, "
                         "or v2-48k (the depth-2 default / one pair at 48,000 steps)")
    ap.add_argument("--state-dir", default=None, help="state folder (default .carry/ssm/table2_scaled[_v2])")
    ap.add_argument("--steps", default=None, help="training steps for every run, or 'auto' (from the pilot)")
    ap.add_argument("--pilot", action="store_true", help="only the pilot (default L2), its own JSON")
    ap.add_argument("--pilot-steps", type=int, default=10000)
    ap.add_argument("--time-limit", type=float, default=480.0,
                    help="seconds of training in this call (default 480: a 9-minute call with start-up and report)")
    ap.add_argument("--procs-per-gpu", type=int, default=1,
                    help="worker processes per GPU (default 1; 2 may overlap small kernels better)")
    ap.add_argument("--step", default=None,
                    help="training step mode (anybudget.ssm.fast_step.STEP_MODES; default v1 'auto', v2 its registered one)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny settings, whole code path")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--runs", default=None, help="comma list of run names (e.g. both_L4_s123) to restrict to")
    ap.add_argument("--restore-from", default=None,
                    help="a committed record of this registration (e.g. benchmarks/results/ssm/ssm_table2_scaled_v2.json): "
                         "seeds a lost state folder with its finished runs, so only the missing ones train")
    ap.add_argument("--allow-partial", action="store_true",
                    help="start a run that cannot finish in this call (it checkpoints; the next call resumes it)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.state_dir is None:
        args.state_dir = REGISTRATIONS[args.registration]["state"]
    if args.step is None:
        args.step = FIXED[args.registration]["step_mode"] if args.registration in FIXED and not args.smoke else "auto"
    if args.registration in FIXED and args.pilot:
        raise SystemExit(f"--pilot: registration {args.registration} has no pilot (its step count is fixed); "
                         "use --registration v1")
    sys.path.insert(0, str(HERE))  # the sibling worker module
    if not args.smoke and not torch.cuda.is_available() and not args.report_only:
        print("needs CUDA (or --smoke)", file=sys.stderr)
        return 2
    plan = dict(SMOKE_PLAN if args.smoke else PLAN)
    if args.pilot:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        return pilot(args, plan)
    plan = load_plan(args)
    if args.restore_from and not args.worker:
        got = restore_from_record(Path(args.state_dir), Path(args.restore_from), plan)
        print(f"restored {len(got)} finished runs from {args.restore_from}: {', '.join(got) or 'none missing'}")
    if args.worker:
        import table2_worker as w

        w.work(Path(args.state_dir), plan, T_START + args.time_limit, args.step,
               log=lambda s: print(s, flush=True), only=set(args.runs.split(",")) if args.runs else None,
               allow_partial=args.allow_partial)
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        launch(args, plan)
    return report(args, plan)


if __name__ == "__main__":
    sys.exit(main())
