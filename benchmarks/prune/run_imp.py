"""GPU call 2: lottery tickets of the project's pre-trained BERT on every task, >= 3 seeds.

  python benchmarks/prune/run_imp.py --data .carry/prune/imp --out $OUT          # one H100, < 9 min
  python benchmarks/prune/run_imp.py --smoke --out /tmp/x                        # CPU, seconds

Phase 1 (worker processes on the one GPU): IMP per task and seed (9 rounds: 10%..90% of the
original encoder weights, rewinding to the pre-trained weights), and IMP with the MLM objective.
Phase 2: the four controls at a few IMP sparsities, the MLM mask transferred to every task, and a
2:4 magnitude mask fine-tuned per task. Then (main process, GPU idle otherwise) the 2:4 speed test.
A deadline skips phase-2 jobs that would not finish in time; skipped jobs are listed.
Writes <out>/prune_imp.json (record), <out>/imp_curves.png, <out>/transfer.png, <out>/mlm_mask70.safetensors (the
MLM mask of --transfer-round, seed 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(HERE) not in sys.path:  # the sibling scripts (jobs, report, speed24) when imported from tests
    sys.path.insert(0, str(HERE))
import jobs
import report

from anybudget.io import write_results
from anybudget.prune.controls import CONTROLS
from anybudget.prune.tasks import TASKS


def spread(todo: list[tuple], gpus: int) -> list[tuple]:
    """Independent jobs round-robin over ``gpus`` devices (``cuda:i``); unchanged on the CPU or one GPU."""
    if gpus < 2:
        return todo
    return [(fn, {**j, "device": f"cuda:{i % gpus}"}) for i, (fn, j) in enumerate(todo)]


def run_phase(todo: list[tuple], workers: int, quiet: bool) -> list[dict]:
    from tqdm.auto import tqdm

    out = []
    if workers == 0:
        for fn, j in tqdm(todo, disable=quiet, desc="jobs"):
            out.append(jobs.run(fn, j))
        return out
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(jobs.run, fn, j) for fn, j in todo]
        for f in tqdm(as_completed(futs), total=len(futs), disable=quiet, desc="jobs"):
            out.append(f.result())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / ".carry/prune/imp")
    ap.add_argument("--model", type=Path, default=None, help="pre-trained BERT (default <data>/model)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--control-rounds", default="5,7,9", help="IMP rounds whose sparsity the controls use")
    ap.add_argument("--transfer-round", type=int, default=7, help="MLM IMP round transferred (7 = 70%%)")
    ap.add_argument("--tasks24", default="rt,consecutive", help="tasks with a 2:4 ticket")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--mlm-steps", type=int, default=300, help="MLM steps per IMP round")
    ap.add_argument("--workers", type=int, default=8,
                    help="worker processes per GPU (0: in this process); jobs go round-robin over the visible GPUs")
    ap.add_argument("--name", default="prune_imp", help="record name (e.g. prune_imp_minilm)")
    ap.add_argument("--minutes", type=float, default=7.0, help="no job starts after this (default 7)")
    ap.add_argument("--work", type=Path, default=None, help="IMP checkpoints (default: a temp dir)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    import torch

    tmp = tempfile.mkdtemp(prefix="prune_imp_")
    work = args.work or Path(tmp)
    if args.smoke:
        import smoke

        args.data, args.model = smoke.build(Path(tmp) / "data")
        args.tasks, args.seeds, args.rounds, args.control_rounds = "rt,rt_reg", 2, 2, "2"
        args.transfer_round, args.tasks24, args.epochs, args.mlm_steps, args.lr = 2, "rt", 1.0, 4, 3e-3
    model = str(args.model or args.data / "model")
    tasks = args.tasks.split(",")
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    workers = args.workers * max(1, gpus)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    deadline = t0 + args.minutes * 60
    base = {"data": str(args.data), "model": model, "device": device, "deadline": deadline,
            "threads": 1 if args.smoke else 2,
            "finetune": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "bf16": False},
            "imp": {"rounds": args.rounds}}
    mlm_ft = {"lr": args.lr, "batch_size": 64, "max_steps": args.mlm_steps, "weight_decay": 0.01, "bf16": True}
    phase1 = []
    for seed in range(args.seeds):
        phase1.append(("job_mlm_imp", {**base, "seed": seed, "task": "mlm", "finetune": mlm_ft,
                                       "seq_len": 32 if args.smoke else 128, "eval_windows": 16 if args.smoke else 512,
                                       "work": str(work / f"mlm_s{seed}")}))
        phase1 += [("job_imp", {**base, "task": t, "seed": seed, "work": str(work / f"{t}_s{seed}")}) for t in tasks]
    res1 = run_phase(spread(phase1, gpus), workers, args.quiet)
    phase2 = []
    for seed in range(args.seeds):
        mpath = work / f"mlm_s{seed}" / f"round_{args.transfer_round:02d}.mask.safetensors"
        phase2 += [("job_transfer", {**base, "task": t, "seed": seed, "mask_path": str(mpath)}) for t in tasks]
        phase2 += [("job_24", {**base, "task": t, "seed": seed,
                               "save": str(work / "m24") if (seed == 0 and i == 0) else None})
                   for i, t in enumerate(args.tasks24.split(",")) if t in tasks]
    for seed in range(args.seeds):
        for r in sorted(map(int, args.control_rounds.split(",")), key=lambda r: -abs(r - 7)):
            phase2 += [("job_control", {**base, "task": t, "seed": seed, "kind": k, "round": r,
                                        "imp_work": str(work / f"{t}_s{seed}")})
                       for t in tasks for k in CONTROLS if k != "imp"]
    res2 = run_phase(spread(phase2, gpus), workers, args.quiet)
    speed = {}
    if device == "cuda" and (work / "m24").exists():
        import speed24

        from anybudget.prune.tasks import load_task

        spec, splits, _ = load_task(args.data / "tasks" / f"{args.tasks24.split(',')[0]}.safetensors.xz")
        import numpy as np

        batch = splits["dev"].batch(np.arange(min(256, len(splits["dev"]))))
        acc = {s: splits[s] for s in ("dev", "test")} if spec.kind == "binary" else None
        speed = speed24.all_backends(str(work / "m24"), batch, acc)
    summary = report.summarise(res1 + res2, tasks, args)
    summary["speed24"] = speed
    summary["seconds"] = time.time() - t0
    summary["gpus"] = gpus
    name = args.name + ("_smoke" if args.smoke else "")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_results(name, config, summary, baseline={"paper_sparsest_matching": report.PAPER}, out_dir=args.out)
    report.plots(summary, args.out)
    mlm_mask = work / "mlm_s0" / f"round_{args.transfer_round:02d}.mask.safetensors"
    if mlm_mask.exists():
        shutil.copy(mlm_mask, args.out / f"mlm_mask{10 * args.transfer_round}.safetensors")
    if args.work is None:  # checkpoints were only for this run's own resumption
        shutil.rmtree(tmp, ignore_errors=True)
    print(report.table(summary))
    print(f"done in {summary['seconds']:.0f} s; skipped jobs: {len(summary['skipped'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
