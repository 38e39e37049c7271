"""Tokenizer-independent language-model evaluation: bits per byte over fixed windows.

bits per byte = (sum over predicted tokens of -log2 p(token)) / (UTF-8 bytes those tokens spell).
Windows are non-overlapping runs of ``seq`` predicted tokens (each window holds seq + 1 tokens and
predicts the last seq), as the v1 reference LM's recorded perplexity was measured, so a model's
perplexity and its bits per byte come from the same sums. Special tokens spell no bytes; their
loss still counts (every model pays for its own document boundaries).

Usage (CPU or GPU):
  python benchmarks/zoo/lm_eval.py --model DIR --data FILE.u16.xz [--data ...] [--max-windows N]
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import sys
from pathlib import Path

import numpy as np
import torch


def read_ids(path) -> np.ndarray:
    return np.frombuffer(lzma.decompress(Path(path).read_bytes()), dtype=np.uint16).astype(np.int64)


def token_byte_lengths(tok) -> np.ndarray:
    """UTF-8 bytes spelled by each token id of a byte-level BPE tokenizer (0 for special tokens)."""
    vocab = tok.get_vocab()
    lens = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    special = set(tok.all_special_tokens) | {t for t in vocab if t.startswith("<|") and t.endswith("|>")}
    for t, i in vocab.items():
        # byte-level BPE: every character of a token's string stands for exactly one byte
        lens[i] = 0 if t in special else len(t)
    return lens


@torch.no_grad()
def window_losses(model, ids: np.ndarray, seq: int, batch: int, device, max_windows: int | None = None,
                  autocast: bool = True, tail: bool = False) -> tuple[float, np.ndarray]:
    """(sum of token NLL in nats, target ids) over non-overlapping windows of ``seq`` predictions.

    ``tail``: also score the last, shorter window, so every token after the first is predicted once
    (the whole text counts; without it up to ``seq`` - 1 final tokens are left out)."""
    was_training = model.training
    model.eval()
    n = (len(ids) - 1) // seq
    if max_windows:
        n = min(n, max_windows)
    total, targets = 0.0, []
    dev = torch.device(device)
    starts = [list(range(s, min(n, s + batch))) for s in range(0, n, batch)]
    if tail and not max_windows and n * seq < len(ids) - 1:
        starts.append([n])
    for idx in starts:
        x = torch.stack([torch.from_numpy(ids[i * seq: i * seq + seq + 1]) for i in idx]).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast and dev.type == "cuda"):
            logits = model(input_ids=x[:, :-1]).logits
        total += torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum").item()
        targets.append(x[:, 1:].reshape(-1).cpu().numpy())
    model.train(was_training)
    return total, np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)


def evaluate(model, tok, ids: np.ndarray, seq: int = 1024, batch: int = 16, device="cpu",
             max_windows: int | None = None) -> dict:
    nll, targets = window_losses(model, ids, seq, batch, device, max_windows)
    nbytes = int(token_byte_lengths(tok)[targets].sum())
    return {"tokens": int(targets.size), "bytes": nbytes, "nll_per_token": nll / targets.size,
            "ppl": math.exp(nll / targets.size), "bits_per_byte": nll / math.log(2) / nbytes,
            "bytes_per_token": nbytes / targets.size, "seq": seq}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--max-windows", type=int, default=None)
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    tok = AutoTokenizer.from_pretrained(args.model)
    for d in args.data:
        r = evaluate(model, tok, read_ids(d), args.seq, device=device, max_windows=args.max_windows)
        print(json.dumps({"data": d, **r}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
