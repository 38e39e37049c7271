"""Put a trained reference LM into the package (src/anybudget/assets/reflm) with its check values.

Usage:  python benchmarks/zoo/package_reflm.py --parts DIR [--record-only]
        (DIR holds pack.tar.part-* from train_lm_v2.py or train_lm_v3.py; --record-only keeps the shipped model)

Unpacks the model, keeps the held-out sample passage, writes ``reflm.json`` (what the model is,
how it was trained, its recorded evaluation, and a one-batch check value computed here on the CPU
in float32 that tests/core/test_reflm.py compares against) and copies the training record to
benchmarks/results/reflm/<record name>.json (+ its loss plot), e.g. reflm_v3_train.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_eval import read_ids, window_losses

from anybudget.io import atomic_write_json, read_json

ASSETS = ROOT / "src/anybudget/assets/reflm"
CHECK = {"data": "benchmarks/zoo/data_v2/v1_test.u16.xz", "seq": 256, "windows": 2}


def check_nll(model_dir: Path) -> float:
    """Mean token NLL (nats) of the first CHECK['windows'] windows of CHECK['seq'] tokens, fp32, CPU."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = read_ids(ROOT / CHECK["data"])
    total, targets = window_losses(model, ids, CHECK["seq"], CHECK["windows"], "cpu", CHECK["windows"])
    return total / targets.size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", required=True)
    ap.add_argument("--record-only", action="store_true",
                    help="only copy the training record and loss plot to benchmarks/results/reflm (shipped model kept)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp())
    subprocess.run(f"cat {Path(args.parts)}/pack.tar.part-* | xz -dcf | tar xf - -C {work}", shell=True, check=True)
    rec = read_json(work / "train_record.json")
    name = rec.get("name", "reflm_v2_train")  # reflm_v2_train, reflm_v3_train, reflm_v4_train (v3 corpus, 43.9M)
    version = name.split("_")[1]
    results = ROOT / "benchmarks/results/reflm"
    atomic_write_json(results / f"{name}.json", rec)
    shutil.copyfile(work / "loss.png", results / f"{name}_loss.png")
    if args.record_only:
        print("recorded", results / f"{name}.json")
        return 0
    sample = (ASSETS / "sample.txt").read_text(encoding="utf-8")
    staged = Path(tempfile.mkdtemp()) / "reflm"
    shutil.copytree(work / "model", staged)
    (staged / "sample.txt").write_text(sample, encoding="utf-8")
    m = rec["metrics"]
    meta = {
        "name": f"anybudget reference LM {version}",
        "architecture": "LlamaForCausalLM",
        "params": m["params"],
        "tokens_seen": m["tokens_seen"],
        "epochs": m["epochs"],
        "train_tokens": m["train_tokens"],
        "train_time_s": m["train_time_s"],
        "world_size": rec["config"]["world_size"],
        "eval": m["eval"],
        "samples": m["samples"],
        "corpus": rec.get("corpus") or rec["config"].get("corpus") or {"v2": "benchmarks/zoo/data_v2/tokens.json"}.get(version, f"benchmarks/zoo/data_{version}/manifest.json"),
        "training_record": f"benchmarks/results/reflm/{name}.json",
        "check": {**CHECK, "nll": check_nll(staged), "how": "lm_eval.window_losses, float32, CPU"},
        "device": rec["device"]["gpu"],
        "commit": rec["commit"],
        "date": rec["date"],
    }
    atomic_write_json(staged / "reflm.json", meta)
    shutil.rmtree(ASSETS)
    shutil.copytree(staged, ASSETS)
    print("packaged", ASSETS, "check nll", meta["check"]["nll"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
