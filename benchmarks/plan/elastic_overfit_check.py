"""Does an elastic build overfit its training tokens? Perplexity of the full network on windows of
the build's training tokens and of held-out test tokens, against the base model it was built from.

Issue 19's 3000-step build (``fit_grid.py --train-steps 3000``) distilled 49M tokens from the 4M of
``elastic_train4m`` (12 passes); its full network's test perplexity rose from 15.55 (400 steps) to
19.40. This check tells overfitting (training windows better, test windows worse than the base)
from damage by the elastic training itself (both worse). CPU, float32, ~1 minute:

    python benchmarks/plan/elastic_overfit_check.py --elastic DIR [--base src/anybudget/assets/reflm]

``--elastic``: the build's model folder (a fit_grid state's ``elastic/model`` with its
``model.safetensors`` unpacked from ``elastic/model.safetensors.xz``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def windows(ids: np.ndarray, n: int, length: int, seed: int) -> torch.Tensor:
    """``n`` random windows of ``length + 1`` tokens (inputs and their next tokens)."""
    if len(ids) <= length + 1:
        raise SystemExit(f"error: {len(ids)} tokens: need more than --length + 1 = {length + 1}")
    start = np.random.default_rng(seed).integers(0, len(ids) - length - 1, n)
    return torch.tensor(np.stack([ids[i:i + length + 1] for i in start]).astype(np.int64))


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM

    from anybudget.elastic.data import read_tokens
    from anybudget.elastic.evaluate import perplexity
    from anybudget.io import write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elastic", required=True, help="the elastic build's model folder (safetensors unpacked)")
    ap.add_argument("--base", default=str(ROOT / "src/anybudget/assets/reflm"))
    ap.add_argument("--train", default=str(ROOT / ".carry/zoo2/elastic_train4m.u16.xz"), help="the build's training tokens")
    ap.add_argument("--test", default=str(ROOT / "benchmarks/zoo/data_v2/test.u16.xz"))
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--label", default="elastic build")
    ap.add_argument("--notes", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    for flag, p in (("--elastic", a.elastic), ("--base", a.base), ("--train", a.train), ("--test", a.test)):
        if not Path(p).exists():
            raise SystemExit(f"error: {flag} {p}: not found")
    if a.windows < 1 or a.length < 2:
        raise SystemExit(f"error: --windows {a.windows} (>= 1) / --length {a.length} (>= 2)")
    sets = {"train": windows(read_tokens(a.train), a.windows, a.length, 0),
            "test": windows(read_tokens(a.test), a.windows, a.length, 1)}
    rows = []
    for name, path in (("base", a.base), (a.label, a.elastic)):
        t0 = time.time()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        row = {"model": name, "path": str(path), **{f"{k}_ppl": perplexity(model, list(w.split(8))) for k, w in sets.items()},
               "seconds": time.time() - t0}
        rows.append(row)
        print(f"{name}: train windows {row['train_ppl']:.2f}, test windows {row['test_ppl']:.2f} ({row['seconds']:.0f} s)",
              flush=True)
    base, built = rows
    verdict = ("overfit" if built["train_ppl"] < base["train_ppl"] and built["test_ppl"] > base["test_ppl"] else
               "worse on both" if built["train_ppl"] >= base["train_ppl"] and built["test_ppl"] > base["test_ppl"] else
               "no loss on test")
    config = {"windows": a.windows, "length": a.length, "train": str(a.train), "test": str(a.test), "dtype": "float32",
              "notes": a.notes}
    metrics = {"rows": rows, "verdict": verdict,
               "train_ppl_ratio": built["train_ppl"] / base["train_ppl"], "test_ppl_ratio": built["test_ppl"] / base["test_ppl"]}
    path = write_results("plan_elastic_overfit", config, metrics, baseline={"model": "base"}, out_dir=a.out)
    print(f"verdict: {verdict}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
