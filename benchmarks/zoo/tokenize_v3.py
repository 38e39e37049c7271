"""Token parts of the v3 corpus, with v2's tokenizer, staged for the GPU machine in <= 55 MiB parts.

Tokenizer: v2's byte-level BPE (16,384 tokens, ``<|bos|>`` at every document start), i.e. the one
shipped in src/anybudget/assets/reflm, is kept rather than retrained. Reasons: (1) v2's evaluation
files (benchmarks/zoo/data_v2/*.u16.xz) and v3's are then the same token ids, so v2 and v3 compare
on identical inputs, token perplexity included, not only bits per byte; (2) everything downstream
of the shipped model (kv, elastic, tests/core/test_reflm.py, the demo) keeps its tokenizer; (3) a
BPE retrained on v3 would spend merges on LaTeX/C-comment idioms of the new sources, and its gain in
bytes per token on English prose is small at 16k (v2 already averages 3.9 bytes per token). The
cost, a slightly worse compression of the new sources, is measured here (``bytes_per_token`` per
split in the manifest).

Train text = v2's train split + v3's new train split, shuffled by document (fixed seed), each
document encoded as ``<|bos|> text <|endoftext|>``, cut at document boundaries into parts of at most
``--part-tokens`` tokens, each written as xz'd uint16 (``.carry/reflm3/partN/train.u16.xz``). Part 1
also carries the new domains' validation and test sets (``validation_new``, ``test_new``). The
manifest (committed, read by train_lm_v3.py on the GPU machine to verify what was staged) records
sha256, bytes and tokens of every file.

Usage:  python benchmarks/zoo/tokenize_v3.py --v2-build benchmarks/zoo/build_v2 --v3-build benchmarks/zoo/build_v3
Writes  .carry/reflm3/part{1..N}/ (git-ignored) and benchmarks/zoo/data_v3/manifest.json (committed)
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(Path(__file__).resolve().parent) not in sys.path:  # corpus: the document separator
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import DOC_SEP  # noqa: E402

from anybudget.io import atomic_write_bytes, atomic_write_json, read_json  # noqa: E402

MAX_PART_BYTES = 55 * 2**20
MANIFEST = ROOT / "benchmarks/zoo/data_v3/manifest.json"
CARRY = ROOT / ".carry/reflm3"


def encode_docs(tok, docs: list[str], batch: int = 1000) -> list[np.ndarray]:
    bos, eos = tok.bos_token_id, tok.eos_token_id
    out = []
    for i in range(0, len(docs), batch):
        for d in tok(docs[i: i + batch], add_special_tokens=False)["input_ids"]:
            out.append(np.asarray([bos, *d, eos], dtype=np.uint16))
    return out


def write_part(path: Path, arr: np.ndarray, preset: int = 9, root: Path = ROOT) -> dict:
    data = lzma.compress(np.ascontiguousarray(arr, dtype=np.uint16).tobytes(), preset=preset)
    atomic_write_bytes(path, data)
    return {"path": str(path.relative_to(root)), "tokens": int(arr.size), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def split_parts(lengths: list[int], part_tokens: int) -> list[tuple[int, int]]:
    """Document index ranges [a, b) whose token total stays <= part_tokens (a longer document alone)."""
    ranges, a, total = [], 0, 0
    for i, n in enumerate(lengths):
        if total and total + n > part_tokens:
            ranges.append((a, i))
            a, total = i, 0
        total += n
    if a < len(lengths):
        ranges.append((a, len(lengths)))
    return ranges


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v2-build", default="benchmarks/zoo/build_v2")
    ap.add_argument("--v3-build", default="benchmarks/zoo/build_v3")
    ap.add_argument("--tokenizer", default=str(ROOT / "src/anybudget/assets/reflm"))
    ap.add_argument("--part-tokens", type=int, default=60_000_000,
                    help="tokens per part (v2's stream compresses to ~0.76 bytes a token: 60M -> ~46 MiB)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--carry", default=str(CARRY))
    ap.add_argument("--manifest", default=str(MANIFEST))
    ap.add_argument("--limit-docs", type=int, default=0, help="use only the first N documents of each file (tests)")
    ap.add_argument("--count-only", action="store_true",
                    help="only add per-package train token counts to an existing manifest (parts untouched)")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    if tok.bos_token_id is None or len(tok) > 2**16:
        raise SystemExit(f"--tokenizer {args.tokenizer}: needs a BOS token and <= 65536 ids (has {len(tok)})")
    v2b, v3b, carry = Path(args.v2_build), Path(args.v3_build), Path(args.carry)

    def read_docs(path: Path) -> list[str]:
        docs = [d for d in path.read_text(encoding="utf-8").split(DOC_SEP) if d]
        return docs[: args.limit_docs] if args.limit_docs else docs

    if args.count_only:
        record = read_json(Path(args.manifest))
        docs = read_docs(v3b / "train_new.txt")
        owners = (v3b / "train_new.packages").read_text().split()
        if len(owners) != len(docs):
            raise SystemExit(f"{v3b}/train_new.packages: {len(owners)} lines for {len(docs)} documents")
        counts: dict[str, int] = {}
        for pkg, ids in zip(owners, encode_docs(tok, docs)):
            counts[pkg] = counts.get(pkg, 0) + int(ids.size)
        if sum(counts.values()) != record["sources"]["v3_new_train"]["tokens"]:
            raise SystemExit("per-package counts do not add up to the manifest's v3_new_train tokens")
        for pkg, n in counts.items():
            record["corpus"]["packages"][pkg]["train_tokens"] = n
        atomic_write_json(Path(args.manifest), record)
        print(f"train tokens of {len(counts)} packages added to {args.manifest}")
        return 0
    sources = {"v2_train": read_docs(v2b / "train.txt"), "v3_new_train": read_docs(v3b / "train_new.txt")}
    record = {"tokenizer": "v2 byte-level BPE (src/anybudget/assets/reflm), kept: see tokenize_v3.py",
              "vocab_size": len(tok), "format": "<|bos|> document <|endoftext|>, uint16, xz (preset 9)",
              "corpus": read_json(v3b / "corpus.json"), "sources": {}, "parts": [], "eval": {}}
    docs, origin = [], []
    for name, ds in sources.items():
        enc = encode_docs(tok, ds)
        nbytes = sum(len(d.encode()) for d in ds)
        ntok = int(sum(a.size for a in enc))
        record["sources"][name] = {"documents": len(ds), "text_bytes": nbytes, "tokens": ntok,
                                   "bytes_per_token": nbytes / max(1, ntok)}
        print(name, record["sources"][name], f"{time.time() - t0:.0f}s", flush=True)
        docs += enc
        origin += [name] * len(enc)
    order = np.random.default_rng(args.seed).permutation(len(docs))
    docs = [docs[i] for i in order]
    for k, (a, b) in enumerate(split_parts([d.size for d in docs], args.part_tokens), start=1):
        entry = write_part(carry / f"part{k}" / "train.u16.xz", np.concatenate(docs[a:b]))
        if entry["bytes"] > MAX_PART_BYTES:
            raise SystemExit(f"part{k}: {entry['bytes']} bytes > {MAX_PART_BYTES}; lower --part-tokens")
        entry.update(part=f"part{k}", documents=b - a)
        record["parts"].append(entry)
        print(entry, f"{time.time() - t0:.0f}s", flush=True)
    for split in ("validation_new", "test_new"):
        ds = read_docs(v3b / f"{split}.txt")
        arr = np.concatenate(encode_docs(tok, ds))
        entry = write_part(carry / "part1" / f"{split}.u16.xz", arr)
        entry.update(part="part1", documents=len(ds), text_bytes=sum(len(d.encode()) for d in ds))
        record["eval"][split] = entry
    record["train_tokens"] = int(sum(p["tokens"] for p in record["parts"]))
    atomic_write_json(Path(args.manifest), record)
    print(f"{record['train_tokens']} train tokens in {len(record['parts'])} parts, {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
