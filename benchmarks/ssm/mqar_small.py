"""Does a small Mamba learn a small MQAR? Short runs of the reference recipe on short segments.

Before spending GPU-hours on Table 2 this checks, in a minute, that the model, the data and the
trainer can learn associative recall at all: MambaLM (vocab 8192, d_model 128) trained on
(seq 64, 4 kv) + (seq 128, 8 kv) + (seq 256, 16 kv) (the first three segments of the reference
mixture), tested on held-out examples of the same shapes, for each (config, lr) given.

    PYTHONPATH=src python benchmarks/ssm/mqar_small.py --out benchmarks/results/ssm [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def parse_segments(text: str, n: int):
    from anybudget.ssm.mqar import MQARSegment

    out = []
    for part in text.split(","):
        seq, kv = part.split(":")
        out.append(MQARSegment(int(seq), n, int(kv)))
    return tuple(out)


def run_file_name(spec: str) -> str:
    return spec.replace("@", "_lr").replace(":", "_")


def save_model(model, path: Path, meta: dict) -> None:
    from anybudget.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"meta": meta, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, tmp)


def run_parallel(args, argv) -> int:
    """One process per run (at most ``--workers`` at once), then one merged record and plot."""
    import subprocess

    from anybudget.io import write_results
    from anybudget.ssm.plots import plot_history

    specs = args.runs.split(",")
    tmp = Path(args.out) / f"{args.name}_parts"
    tmp.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, spec in enumerate(specs):
        while len([p for p in procs if p.poll() is None]) >= args.workers:
            time.sleep(1.0)
        cmd = [sys.executable, __file__, *argv, "--workers", "1", "--runs", spec, "--out", str(tmp / str(i)),
               "--name", "part"]
        procs.append(subprocess.Popen(cmd))
    rcs = [p.wait() for p in procs]
    runs, hist, config = [], {}, None
    for i, spec in enumerate(specs):
        f = tmp / str(i) / "part.json"
        if not f.exists():
            print(f"run {spec} failed (exit {rcs[i]})", file=sys.stderr)
            continue
        rec = json.loads(f.read_text())
        config = rec["config"]
        for r in rec["metrics"]["runs"]:
            runs.append(r)
            hist[r["run"]] = r["history"]
    if not runs:
        return 1
    config["workers"] = args.workers
    path = write_results(args.name, config, {"runs": runs}, out_dir=args.out)
    plot_history(hist, Path(args.out) / f"{args.name}.png", title="small MQAR: test accuracy")
    print("wrote", path)
    return 0 if all(rc == 0 for rc in rcs) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from anybudget.io import results_dir

    ap.add_argument("--out", default=str(results_dir("ssm_mqar_small", ROOT / "benchmarks/results")))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--train", default="64:4,128:8,256:16", help="seq:kv,... (equal weights)")
    ap.add_argument("--test", default="64:4,128:8,256:16")
    ap.add_argument("--runs", default="default_L2@1e-3,default_L2@3e-3,both_L2@1e-3,both_L4@1e-3",
                    help="config_L<depth>@lr[:scan backend],...; config attn = attention baseline")
    ap.add_argument("--test-examples", type=int, default=500)
    ap.add_argument("--name", default="ssm_mqar_small")
    ap.add_argument("--save-models", default=None, help="folder: save each run's trained weights as <run>.pt")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds per run: stop training there and report the last evaluation")
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel processes (one GPU shared)")
    args = ap.parse_args(argv)

    from anybudget.io import write_results
    from anybudget.ssm import AttentionLM, LMConfig, MambaConfig, MambaLM
    from anybudget.ssm.plots import plot_history
    from anybudget.ssm.train import TrainConfig, train_mqar

    if args.workers > 1:
        return run_parallel(args, argv or sys.argv[1:])
    torch.backends.cuda.matmul.allow_tf32 = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train = parse_segments(args.train, 20_000)
    test = parse_segments(args.test, args.test_examples)
    runs, hist = [], {}
    for spec in args.runs.split(","):
        name, lr = spec.split("@")
        lr, _, backend = lr.partition(":")  # optional ":chunked" / ":ref" scan backend
        pol, depth = name.rsplit("_L", 1)
        torch.manual_seed(123)
        if pol == "attn":  # the attention baseline of the same width (1 head, MLP x4, learned positions)
            model = AttentionLM(LMConfig(vocab_size=8192, d_model=128, n_layers=int(depth), mixer="attention",
                                         max_seq_len=1024)).to(device)
        else:
            mc = MambaConfig(d_model=128, d_state=16, polarize=None if pol == "default" else pol,
                             scan_backend=backend or "auto")
            model = MambaLM(LMConfig(vocab_size=8192, d_model=128, n_layers=int(depth), mamba=mc)).to(device)
        cfg = TrainConfig(lr=float(lr), max_steps=args.steps, eval_every=args.eval_every,
                          test_examples=args.test_examples, checkpoint_every=10**9, early_stop_acc=1.01)
        t0 = time.perf_counter()
        res = train_mqar(model, cfg, segments=train, test_sets=test, quiet=True, time_budget_s=args.time_budget,
                         log=lambda h, s=spec: print(s, json.dumps(h), flush=True))
        if res["final"] is None:  # stopped by --time-budget: the last evaluation stands
            res["final"] = dict(res["history"][-1], stopped_by_time_budget=True) if res["history"] else None
        secs = time.perf_counter() - t0
        runs.append({"run": spec, "config": pol, "layers": int(depth), "lr": float(lr), "scan": backend or "auto",
                     "final": res["final"], "seconds": secs, "history": res["history"]})
        hist[spec] = res["history"]
        if args.save_models:
            save_model(model, Path(args.save_models) / f"{run_file_name(spec)}.pt",
                       {"run": spec, "config": pol, "layers": int(depth)})
        print(spec, "final", res["final"], f"{secs:.1f} s", flush=True)
    config = {"task": f"MQAR vocab 8192, d_model 128, d_state 16; train segments {args.train} (equal weight), "
                      f"test {args.test} ({args.test_examples} held-out examples each)",
              "recipe": "AdamW wd 0.1, cosine over the run, batch 128 (anybudget.ssm.train)",
              "steps": args.steps, "device": device}
    path = write_results(args.name, config, {"runs": runs}, out_dir=args.out)
    plot_history(hist, Path(args.out) / f"{args.name}.png", title="small MQAR: test accuracy")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
