"""Bits per byte of several reference LMs over exactly the same bytes of one evaluation text.

The recorded evaluations (``lm_eval.evaluate``) score whole 1024-token windows, so each model
leaves out the tail its own tokenizer puts past the last full window: v1's test documents are
1,181,168 bytes for v1 and 1,178,000 for v4, and "v4 lower than v1 by" compares two slightly
different texts. Here every model reads every document of the split, encoded as it was trained
(v1: ``<|endoftext|>`` before each document; v2 onwards: ``<|bos|> document <|endoftext|>``, chosen
by whether the tokenizer has ``<|bos|>``), and every token after the first is predicted once
(1024-token windows, then the shorter last one). The same pass gives the recorded protocol's number
(full windows only, ``windowed``) in float32, as v1's was measured. The bytes counted are
then the UTF-8 bytes of the documents for every model (checked), and bits per byte is the
tokenizer-independent total cross-entropy over the same text. float32 on the CPU.

v1 lives in git history (see compare_v1.py):
    git archive 042f756 src/anybudget/assets/reflm | tar x -C /tmp/v1 --strip-components 3
    python benchmarks/zoo/same_text.py --model v1=/tmp/v1/reflm --model v4=src/anybudget/assets/reflm \\
        --split v1_test --split heldout
Writes benchmarks/results/reflm/reflm_same_text.json: per split and model, bits per byte, bytes,
tokens, and each model's bits per byte lower than the first model's by.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import DOC_SEP
from lm_eval import token_byte_lengths, window_losses

from anybudget.io import results_dir, write_results


def encode_documents(tok, docs: list[str]) -> np.ndarray:
    """The documents as the model was trained on them: v2+ ``<|bos|> d <|endoftext|>``, v1 ``<|endoftext|> d``."""
    vocab = tok.get_vocab()
    eos = vocab["<|endoftext|>"]
    ids: list[int] = []
    bos = vocab.get("<|bos|>")
    for d in tok(docs, add_special_tokens=False)["input_ids"]:
        ids += [bos, *d, eos] if bos is not None else [eos, *d]
    return np.asarray(ids, dtype=np.int64)


def score(model, tok, ids: np.ndarray, seq: int) -> dict:
    """Bits per byte over every token after the first, and (``windowed``) over the full windows only, as
    ``lm_eval.evaluate`` scores (the recorded protocol): one pass, the tail window's sums added last."""
    lens = token_byte_lengths(tok)
    nll_w, t_w = window_losses(model, ids, seq, 8, "cpu")
    nll_tail, t_tail = window_losses(model, ids[len(t_w):], seq, 1, "cpu", tail=True)  # nothing when no tail is left
    out = {}
    for key, nll, t in (("windowed", nll_w, t_w), ("all", nll_w + nll_tail, np.concatenate([t_w, t_tail]))):
        nbytes = int(lens[t].sum())
        out[key] = {"tokens": int(t.size), "bytes": nbytes, "nll_per_token": nll / t.size,
                    "bits_per_byte": nll / math.log(2) / nbytes}
    return {**out.pop("all"), "windowed": out["windowed"]}


def _rel(p) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def parse_models(specs: list[str]) -> list[tuple[str, Path]]:
    out = []
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model: expected NAME=DIR (e.g. v1=/tmp/v1/reflm), got {s!r}")
        if not (Path(path) / "config.json").exists():
            raise SystemExit(f"--model {name}: {path} has no config.json (a model folder saved by save_pretrained)")
        out.append((name, Path(path)))
    if len({n for n, _ in out}) != len(out):
        raise SystemExit("--model: each NAME once")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR; the first is the baseline")
    ap.add_argument("--split", action="append", required=True, help="a split of --build (e.g. v1_test)")
    ap.add_argument("--build", default=str(ROOT / "benchmarks/zoo/build_v2"))
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--max-docs", type=int, default=None, help="first N documents only (tests)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    models = parse_models(args.model)
    if args.seq < 2:
        raise SystemExit(f"--seq: at least 2, got {args.seq}")
    texts = {}
    for split in args.split:
        f = Path(args.build) / f"{split}.txt"
        if not f.exists():
            raise SystemExit(f"--split {split}: {f} not found (build it with corpus_v2.py)")
        texts[split] = f.read_text(encoding="utf-8").split(DOC_SEP)[: args.max_docs]
    out = Path(args.out) if args.out else results_dir("reflm_same_text", ROOT / "benchmarks/results")
    try:  # before minutes of scoring: the record must have somewhere to go
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"--out {out}: cannot create it ({e.strerror})") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anybudget.io import model_identity

    rows: dict = {s: {} for s in texts}
    ident = {}
    for name, path in models:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path)
        ident[name] = {**model_identity(path), "params": sum(p.numel() for p in model.parameters()), "path": _rel(path)}
        for split, docs in texts.items():
            t0 = time.time()
            r = score(model, tok, encode_documents(tok, docs), args.seq)
            want = sum(len(d.encode("utf-8")) for d in docs)
            if r["bytes"] != want:
                raise SystemExit(f"{name} on {split}: counted {r['bytes']} bytes, the documents have {want}")
            rows[split][name] = {**r, "seconds": round(time.time() - t0, 1)}
            print(f"{split} {name}: {r['bits_per_byte']:.5f} bits/byte over {r['bytes']} bytes ({r['tokens']} tokens); "
                  f"full windows only {r['windowed']['bits_per_byte']:.5f} over {r['windowed']['bytes']}", flush=True)
    base = models[0][0]
    for split, per in rows.items():
        for name, r in per.items():
            r["lower_than_" + base + "_by"] = 1 - r["bits_per_byte"] / per[base]["bits_per_byte"]
            r["windowed"]["lower_than_" + base + "_by"] = (1 - r["windowed"]["bits_per_byte"]
                                                           / per[base]["windowed"]["bits_per_byte"])
    write_results("reflm_same_text", {"models": ident, "baseline": base, "splits": list(texts), "seq": args.seq,
                                      "windows": "non-overlapping, last one shorter (every token after the first once)",
                                      "dtype": "float32 CPU", "build": _rel(args.build), "max_docs": args.max_docs},
                  {"splits": rows}, out_dir=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
