"""Tokens of corpus v4's additions with the shipped tokenizer (v2's byte-level BPE, kept as in tokenize_v3).

Each document of ``<v4-build>/{train,validation,test}_new4.txt`` is encoded as
``<|bos|> text <|endoftext|>`` in file order (the trainer shuffles when it mixes v2, v3 and v4), written
as xz'd uint16 to ``<carry>/{split}_new4.u16.xz``; the manifest records per split the documents, text
bytes, tokens, bytes per token, sha256 of the file, and the train tokens of every package.

Usage:  python benchmarks/zoo/tokenize_v4.py --v4-build benchmarks/zoo/build_v4 --carry .carry/zoo4
Writes  <carry>/{train,validation,test}_new4.u16.xz (git-ignored) and benchmarks/zoo/data_v4/manifest.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import DOC_SEP
from tokenize_v3 import encode_docs, write_part

from anybudget.io import atomic_write_json, read_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v4-build", default="benchmarks/zoo/build_v4")
    ap.add_argument("--tokenizer", default=str(ROOT / "src/anybudget/assets/reflm"))
    ap.add_argument("--carry", default=str(ROOT / ".carry/zoo4"))
    ap.add_argument("--manifest", default=str(ROOT / "benchmarks/zoo/data_v4/manifest.json"))
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    if tok.bos_token_id is None or len(tok) > 2**16:
        raise SystemExit(f"--tokenizer {args.tokenizer}: needs a BOS token and <= 65536 ids (has {len(tok)})")
    build, carry = Path(args.v4_build), Path(args.carry).resolve()
    root = ROOT if carry.is_relative_to(ROOT) else carry.parent
    record = {"tokenizer": "v2 byte-level BPE (src/anybudget/assets/reflm), as in tokenize_v3.py",
              "vocab_size": len(tok), "format": "<|bos|> document <|endoftext|>, uint16, xz (preset 9), file order",
              "corpus": read_json(build / "corpus.json"), "splits": {}}
    for split in ("train", "validation", "test"):
        docs = [d for d in (build / f"{split}_new4.txt").read_text(encoding="utf-8").split(DOC_SEP) if d]
        owners = (build / f"{split}_new4.packages").read_text().split()
        if len(owners) != len(docs):
            raise SystemExit(f"{build}/{split}_new4.packages: {len(owners)} lines for {len(docs)} documents")
        enc = encode_docs(tok, docs)
        entry = write_part(carry / f"{split}_new4.u16.xz", np.concatenate(enc) if enc else np.zeros(0, np.uint16),
                           root=root)
        nbytes = sum(len(d.encode()) for d in docs)
        entry.update(documents=len(docs), text_bytes=nbytes, bytes_per_token=nbytes / max(1, entry["tokens"]))
        if split == "train":
            for pkg, ids in zip(owners, enc):
                pk = record["corpus"]["packages"][pkg]
                pk["train_tokens"] = pk.get("train_tokens", 0) + int(ids.size)
        record["splits"][f"{split}_new4"] = entry
        print(split, entry, f"{time.time() - t0:.0f}s", flush=True)
    record["train_tokens"] = record["splits"]["train_new4"]["tokens"]
    atomic_write_json(Path(args.manifest), record)
    print(f"{record['train_tokens']} new train tokens, {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
