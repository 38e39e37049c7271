"""A training record rebuilt from a train_lm_v2/v3 log, for a run whose packed record did not come back.

The 48M-parameter v3 run of session 16 trained and evaluated on the GPU machine, but its pack (weights +
train_record.json) was larger than one call may return, so only the log's tail came back
(benchmarks/zoo/logs/reflm_v3_48m_train.log: throughput, every eval step, final bits per byte, samples).
This script turns such a log into a results record marked ``from_log``; device and commit are those of
the run, given on the command line (the same machine as a run whose record did come back).

  python benchmarks/zoo/record_from_log.py --log benchmarks/zoo/logs/reflm_v3_48m_train.log \
      --name reflm_v3_48m_train --device-from benchmarks/results/reflm/reflm_v3_train.json --gpu-count 4 \
      --config layers=8,hidden=640,ffn=1792,batch=32,max_epochs=7,minutes=7.6 --date 2026-11-26T08:59:00+00:00
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anybudget.io import atomic_write_json, read_json, results_record  # noqa: E402

RATE = re.compile(r"([\d.]+) steps/s = ([\d.]+) M tok/s on (\d+) GPU\(s\); schedule (\d+) steps = (\d+)M tokens = ([\d.]+) epochs")
STEP = re.compile(r"^step (\d+) epoch ([\d.]+) train ([\d.]+) val ([\d.]+) \((\d+)s\)$")
EVAL = re.compile(r"^(\w+): ppl ([\d.]+)\s+bits/byte ([\d.]+)\s+\((\d+) tokens\)$")


def parse_log(text: str) -> dict:
    """Throughput, the eval curve, the final evaluation and the samples of a train_lm_v2 log."""
    out: dict = {"curve": [], "eval": {}, "samples": []}
    for line in text.splitlines():
        line = line.strip()
        if m := RATE.search(line):
            out["steps_per_s"], out["mtok_per_s"], out["world_size"] = float(m[1]), float(m[2]), int(m[3])
            out["schedule_steps"], out["schedule_mtokens"], out["schedule_epochs"] = int(m[4]), int(m[5]), float(m[6])
        elif m := STEP.match(line):
            out["curve"].append({"step": int(m[1]), "epoch": float(m[2]), "train": float(m[3]),
                                 "val": float(m[4]), "seconds": int(m[5])})
        elif m := EVAL.match(line):
            out["eval"][m[1]] = {"ppl": float(m[2]), "bits_per_byte": float(m[3]), "tokens": int(m[4])}
        elif line.startswith('{"prompt"'):
            out["samples"].append(json.loads(line))
    if "steps_per_s" not in out or not out["curve"] or not out["eval"]:
        raise ValueError("log: no throughput line, eval curve or final evaluation found (is it a train_lm_v2 log?)")
    return out


def count_params(layers: int, hidden: int, ffn: int, vocab: int = 16384) -> int:
    """Parameters of train_lm_v2's Llama at these sizes (built on the meta device, tied embeddings)."""
    import torch
    from train_lm_v2 import model_config
    from transformers import LlamaForCausalLM

    cfg = model_config(vocab, False, 1, 0, 2, layers, hidden, ffn)
    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--device-from", type=Path, required=True, help="a record of a run on the same machine")
    ap.add_argument("--gpu-count", type=int, required=True)
    ap.add_argument("--config", default="", help="k=v,... of the run's command line")
    ap.add_argument("--date", required=True, help="ISO date of the run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reflm")
    args = ap.parse_args(argv)
    metrics = parse_log(args.log.read_text(encoding="utf-8"))
    if metrics["world_size"] != args.gpu_count:
        raise ValueError(f"--gpu-count {args.gpu_count}: the log says {metrics['world_size']} GPU(s)")
    config = dict(kv.split("=", 1) for kv in args.config.split(",") if kv)
    if {"layers", "hidden", "ffn"} <= config.keys():
        metrics["params"] = count_params(int(config["layers"]), int(config["hidden"]), int(config["ffn"]))
    ref = read_json(args.device_from)
    record = results_record(args.name, {**config, "log": str(args.log.resolve().relative_to(ROOT))},
                            {**metrics, "from_log": True,
                             "note": "weights and train_record.json did not come back (over one call's return "
                                     "limit); numbers parsed from the log's tail"})
    # the run's machine and commit, not this one's
    record.update(device={**ref["device"], "gpu_count": args.gpu_count, "date": args.date}, torch=ref["torch"],
                  transformers=ref["transformers"], commit=ref["commit"], date=args.date)
    path = atomic_write_json(args.out / f"{args.name}.json", record)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
