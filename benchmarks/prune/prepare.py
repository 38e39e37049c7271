"""Prepare, on this machine, everything the two GPU calls read, as compact files in .carry/prune/.

  python benchmarks/prune/prepare.py                      # data for both calls
  python benchmarks/prune/prepare.py --model DIR          # after call 1: add the pre-trained BERT

Inputs (fetched at run time, never committed; both land in benchmarks/prune/build/):
  vaderSentiment 3.3.2 sdist: pip download --no-deps --no-binary :all: vaderSentiment==3.3.2
  the reference corpus:       python benchmarks/zoo/corpus.py --out benchmarks/zoo/build
Writes
  .carry/prune/pretrain/  vocab.txt (WordPiece, uncased), mlm_train.u16.xz, mlm_val.u16.xz  (call 1)
  .carry/prune/imp/       vocab.txt, tasks/<task>.safetensors.xz, mlm_train.u16.xz (a slice),
                          mlm_val.u16.xz, model/ (with --model)                            (call 2)
  .carry/prune/prepare.json  sources, split rule, per-split counts and text fingerprints, sizes
The tokenizer's vocabulary is trained on the corpus's train split plus the tasks' train texts
(text only, no labels), so movie-review words are not all split into pieces.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
from anybudget.io import atomic_write_bytes, atomic_write_json
from anybudget.prune.tasks import (
    TASKS,
    binary_rows,
    consecutive_pairs,
    encode,
    parse_vader,
    save_task,
    split_of,
)

DOC_SEP = "\n\n\f\n\n"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vader_dir(src: Path | None, build: Path) -> Path:
    """The folder holding ``*_GroundTruth.txt``: given, or unpacked from the sdist (downloaded)."""
    if src is not None and src.is_dir() and list(src.glob("*_GroundTruth.txt")):
        return src
    if src is None:
        src = build / "vaderSentiment-3.3.2.tar.gz"
        if not src.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                            ":all:", "vaderSentiment==3.3.2", "-d", str(build)], check=True)
    out = build / "vader"
    if not list(out.glob("*/*_GroundTruth.txt")):
        with tarfile.open(src) as t:
            inner = next(m for m in t.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
            with tarfile.open(fileobj=t.extractfile(inner)) as t2:
                t2.extractall(out, filter="data")
    return next(out.glob("*/movieReviewSnippets_GroundTruth.txt")).parent


def task_examples(name: str, vdir: Path, corpus: Path, max_pairs: int) -> dict[str, list]:
    """{split: [(text[, text_b], label)]} for one task."""
    spec = TASKS[name]
    if name == "consecutive":
        out = {}
        for split, fname, cap in (("train", "train.txt", max_pairs), ("dev", "validation.txt", max_pairs // 6),
                                  ("test", "test.txt", max_pairs // 6)):
            docs = (corpus / fname).read_text(encoding="utf-8").split(DOC_SEP)
            out[split] = consecutive_pairs(docs, seed=0, max_pairs=cap)
        return out
    rows = parse_vader(vdir / spec.source)
    ex = binary_rows(rows) if spec.kind == "binary" else [(t, r) for _, r, t in rows]
    out = {"train": [], "dev": [], "test": []}
    for e in ex:
        out[split_of(e[0])].append(e)
    return out


def fingerprint(examples) -> str:
    return hashlib.sha1("\n".join(sorted("\t".join(map(str, e)) for e in examples)).encode()).hexdigest()[:16]


def train_tokenizer(texts_file: Path, vocab: int):
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train([str(texts_file)], vocab_size=vocab, min_frequency=2, special_tokens=SPECIALS,
              show_progress=False)
    return with_bert_processing(tok)


def with_bert_processing(tok):
    """[CLS] a [SEP] (b [SEP]): a tokenizer trained from scratch has no post-processor yet."""
    from tokenizers.processors import BertProcessing

    tok.post_processor = BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    return tok


def write_stream(tok, text: str, path: Path, max_tokens: int) -> int:
    ids: list[int] = []
    for para in text.split("\n"):
        if para.strip():
            ids.extend(tok.encode(para, add_special_tokens=False).ids)
            ids.append(SPECIALS.index("[SEP]"))
            if len(ids) >= max_tokens:
                break
    arr = np.asarray(ids[:max_tokens], dtype=np.uint16)
    atomic_write_bytes(path, lzma.compress(arr.tobytes(), preset=9))
    return len(arr)


def add_model(model_dir: Path, dest: Path) -> None:
    """Copy a saved BERT (config + safetensors) into ``dest`` in fp16."""
    import torch
    from transformers import AutoModelForMaskedLM

    m = AutoModelForMaskedLM.from_pretrained(model_dir, dtype=torch.float16)
    m.save_pretrained(dest)
    for f in ("vocab.txt", "pretrain.json"):
        if (model_dir / f).exists():
            shutil.copy(model_dir / f, dest / f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vader", type=Path, default=None, help="sdist .tar.gz or folder with *_GroundTruth.txt")
    ap.add_argument("--corpus", type=Path, default=ROOT / "benchmarks/zoo/build", help="corpus.py's output")
    ap.add_argument("--out", type=Path, default=ROOT / ".carry/prune")
    ap.add_argument("--build", type=Path, default=ROOT / "benchmarks/prune/build")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--vocab-file", type=Path, default=None,
                    help="use this WordPiece vocab.txt (e.g. MiniLM's) instead of training one")
    ap.add_argument("--max-len", type=int, default=64, help="task sequence length (default 64)")
    ap.add_argument("--max-pairs", type=int, default=8000, help="train pairs of the pair task")
    ap.add_argument("--pretrain-tokens", type=int, default=9_000_000, help="MLM tokens for call 1")
    ap.add_argument("--imp-tokens", type=int, default=1_200_000, help="MLM tokens for call 2")
    ap.add_argument("--model", type=Path, default=None, help="only add this pre-trained model to imp/model")
    args = ap.parse_args(argv)
    if args.model is not None:
        add_model(args.model, args.out / "imp" / "model")
        print(f"model -> {args.out / 'imp' / 'model'}")
        return 0
    if not (args.corpus / "train.txt").exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks/zoo/corpus.py"), "--out", str(args.corpus)], check=True)
    vdir = vader_dir(args.vader, args.build)
    examples = {n: task_examples(n, vdir, args.corpus, args.max_pairs) for n in TASKS}
    corpus_train = (args.corpus / "train.txt").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "texts.txt"
        extra = "\n".join(" ".join(map(str, e[:-1])) for n in TASKS for e in examples[n]["train"])
        texts.write_text(corpus_train + "\n" + extra, encoding="utf-8")
        if args.vocab_file is not None:
            from tokenizers import BertWordPieceTokenizer

            tok = with_bert_processing(BertWordPieceTokenizer(str(args.vocab_file), lowercase=True))
        else:
            tok = train_tokenizer(texts, args.vocab)
    record = {"vader": str(vdir), "corpus": str(args.corpus), "vocab": args.vocab, "max_len": args.max_len,
              "split_rule": "vader tasks: sha1(text) % 10: 0 test, 1 dev, else train; consecutive: "
                            "the corpus's document splits (train / validation / test)",
              "tasks": {}, "files": {}}
    for sub in ("pretrain", "imp"):
        d = args.out / sub
        d.mkdir(parents=True, exist_ok=True)
        tok.save_model(str(d))
    for name, ex in examples.items():
        info = {s: {"n": len(v), "fingerprint": fingerprint(v)} for s, v in ex.items()}
        if TASKS[name].kind == "binary":
            for s, v in ex.items():
                info[s]["positive"] = sum(e[-1] for e in v)
        splits = {s: encode(tok, v, args.max_len) for s, v in ex.items()}
        save_task(args.out / "imp" / "tasks" / f"{name}.safetensors.xz", TASKS[name], splits, info)
        record["tasks"][name] = info
    val = (args.corpus / "validation.txt").read_text(encoding="utf-8")
    record["mlm_tokens"] = {
        "pretrain/mlm_train": write_stream(tok, corpus_train, args.out / "pretrain/mlm_train.u16.xz", args.pretrain_tokens),
        "pretrain/mlm_val": write_stream(tok, val, args.out / "pretrain/mlm_val.u16.xz", 200_000),
        "imp/mlm_train": write_stream(tok, corpus_train[len(corpus_train) // 2:], args.out / "imp/mlm_train.u16.xz", args.imp_tokens),
        "imp/mlm_val": write_stream(tok, val, args.out / "imp/mlm_val.u16.xz", 100_000),
    }
    for sub in ("pretrain", "imp"):
        record["files"][sub] = sum(f.stat().st_size for f in (args.out / sub).rglob("*") if f.is_file())
    atomic_write_json(args.out / "prepare.json", record)
    print({k: f"{v / 2**20:.2f} MiB" for k, v in record["files"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
