"""Does a small Mamba learn a small MQAR? Short runs of the reference recipe on short segments.

Before spending GPU-hours on Table 2 this checks, in a minute, that the model, the data and the
trainer can learn associative recall at all: MambaLM (vocab 8192, d_model 128) trained on
(seq 64, 4 kv) + (seq 128, 8 kv) + (seq 256, 16 kv) (the first three segments of the reference
mixture), tested on held-out examples of the same shapes, for each (config, lr) given.

    PYTHONPATH=src python benchmarks/ssm/mqar_small.py --out benchmarks/results [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def parse_segments(text: str, n: int):
    from anybudget.ssm.mqar import MQARSegment

    out = []
    for part in text.split(","):
        seq, kv = part.split(":")
        out.append(MQARSegment(int(seq), n, int(kv)))
    return tuple(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--train", default="64:4,128:8,256:16", help="seq:kv,... (equal weights)")
    ap.add_argument("--test", default="64:4,128:8,256:16")
    ap.add_argument("--runs", default="default_L2@1e-3,default_L2@3e-3,both_L2@1e-3,both_L4@1e-3",
                    help="config_L<depth>@lr[:scan backend],...; config attn = attention baseline")
    ap.add_argument("--test-examples", type=int, default=500)
    ap.add_argument("--name", default="ssm_mqar_small")
    args = ap.parse_args(argv)

    from anybudget.io import write_results
    from anybudget.ssm import AttentionLM, LMConfig, MambaConfig, MambaLM
    from anybudget.ssm.plots import plot_history
    from anybudget.ssm.train import TrainConfig, train_mqar

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
        res = train_mqar(model, cfg, segments=train, test_sets=test, quiet=True,
                         log=lambda h, s=spec: print(s, json.dumps(h), flush=True))
        secs = time.perf_counter() - t0
        runs.append({"run": spec, "config": pol, "layers": int(depth), "lr": float(lr), "scan": backend or "auto",
                     "final": res["final"], "seconds": secs, "history": res["history"]})
        hist[spec] = res["history"]
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
