"""Downstream tasks with real labels that can be obtained offline, in a compact tokenized form.

Sources (fetched by ``benchmarks/prune/prepare.py``, never committed):
- the ``vaderSentiment`` 3.3.2 source distribution's ``hutto_ICWSM_2014`` ground truth: sentences
  with the mean of ~20 human ratings in [-4, 4]. Rotten Tomatoes (SST's source sentences) gives
  ``rt`` (binary, |rating| >= 1, SST-2-like) and ``rt_reg`` (regression on the rating, STS-B-like);
  tweets / product reviews / NYT editorials give ``tweets``, ``amazon``, ``nyt`` (binary).
- the project's Debian documentation corpus gives ``consecutive``: are sentence B and sentence A
  consecutive in one document (1) or is B drawn from another document (0)? (BERT's NSP form.)
Splits are fixed by a hash of the text (``split_of``); the pair task keeps the corpus's own
document-level splits so no document feeds two splits.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anybudget.io import atomic_path

__all__ = [
    "TASKS",
    "TaskData",
    "TaskSpec",
    "binary_rows",
    "consecutive_pairs",
    "encode",
    "load_task",
    "metric",
    "parse_vader",
    "save_task",
    "sentences",
    "split_of",
]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "binary" or "regression"
    source: str
    metric: str  # the metric IMP's criterion uses: "accuracy" or "pearson"


TASKS = {
    "rt": TaskSpec("rt", "binary", "movieReviewSnippets_GroundTruth.txt", "accuracy"),
    "rt_reg": TaskSpec("rt_reg", "regression", "movieReviewSnippets_GroundTruth.txt", "pearson"),
    "tweets": TaskSpec("tweets", "binary", "tweets_GroundTruth.txt", "accuracy"),
    "amazon": TaskSpec("amazon", "binary", "amazonReviewSnippets_GroundTruth.txt", "accuracy"),
    "nyt": TaskSpec("nyt", "binary", "nytEditorialSnippets_GroundTruth.txt", "accuracy"),
    "consecutive": TaskSpec("consecutive", "binary", "corpus", "accuracy"),
}
SPLITS = ("train", "dev", "test")


def split_of(text: str) -> str:
    """Fixed split by text: sha1(text) % 10 == 0 -> test, == 1 -> dev, else train (80/10/10)."""
    h = int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if h == 0 else "dev" if h == 1 else "train"


def parse_vader(path: str | os.PathLike) -> list[tuple[str, float, str]]:
    """``[(id, mean rating, sentence)]`` from a ``*_GroundTruth.txt`` file (tab separated)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.strip().split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            rows.append((parts[0], float(parts[1]), parts[2].strip().replace("''", '"')))
    if not rows:
        raise ValueError(f"path={os.fspath(path)!r} holds no 'id<TAB>rating<TAB>text' lines")
    return rows


def binary_rows(rows, threshold: float = 1.0) -> list[tuple[str, int]]:
    """SST-2-like: keep |rating| >= threshold, label 1 if positive."""
    return [(t, int(r > 0)) for _, r, t in rows if abs(r) >= threshold]


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def sentences(document: str, min_words: int = 5, max_words: int = 40) -> list[str]:
    """Sentences of a document in order (a plain punctuation rule), dropping very short/long ones
    (a dropped sentence breaks adjacency: the neighbours are not paired across it)."""
    out: list[str | None] = []
    for para in document.split("\n"):
        for s in _SENT.split(para.strip()):
            n = len(s.split())
            out.append(s if min_words <= n <= max_words else None)
        out.append(None)
    return out


def consecutive_pairs(documents: list[str], seed: int, max_pairs: int | None = None):
    """``[(a, b, label)]``: label 1 if b follows a in its document, 0 if b comes from another
    document (50/50, drawn with ``seed``)."""
    rng = random.Random(seed)
    per_doc = [sentences(d) for d in documents]
    pool = [(i, s) for i, ss in enumerate(per_doc) for s in ss if s]
    pairs = []
    for i, ss in enumerate(per_doc):
        for a, b in itertools.pairwise(ss):
            if a and b:
                if rng.random() < 0.5:
                    pairs.append((a, b, 1))
                else:
                    j, other = rng.choice(pool)
                    while j == i and len(per_doc) > 1:
                        j, other = rng.choice(pool)
                    pairs.append((a, other, 0))
    rng.shuffle(pairs)
    return pairs[:max_pairs] if max_pairs else pairs


@dataclass
class TaskData:
    """Tokenized examples of one split: ragged ids (with [CLS]/[SEP]), segment-B starts, labels."""

    ids: np.ndarray  # (total,) uint16
    offsets: np.ndarray  # (n + 1,) int64
    seg: np.ndarray  # (n,) int32: index where segment B starts (= length if single sentence)
    labels: np.ndarray  # (n,) float32 (class index or rating)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index, pad_id: int = 0, device=None) -> dict[str, torch.Tensor]:
        """Padded model inputs for examples ``index``: input_ids, token_type_ids, attention_mask."""
        index = np.asarray(index)
        lens = self.offsets[index + 1] - self.offsets[index]
        L = int(lens.max())
        ids = np.full((len(index), L), pad_id, dtype=np.int64)
        tt = np.zeros((len(index), L), dtype=np.int64)
        for r, (i, n) in enumerate(zip(index, lens)):
            ids[r, :n] = self.ids[self.offsets[i]:self.offsets[i] + n]
            tt[r, self.seg[i]:n] = 1
        am = (np.arange(L)[None, :] < lens[:, None]).astype(np.int64)
        out = {"input_ids": torch.from_numpy(ids), "token_type_ids": torch.from_numpy(tt),
               "attention_mask": torch.from_numpy(am), "labels": torch.from_numpy(self.labels[index])}
        return {k: v.to(device) for k, v in out.items()} if device is not None else out


def save_task(path, spec: TaskSpec, splits: dict[str, TaskData], info: dict) -> Path:
    """One safetensors file per task (``<split>.ids`` etc., the spec and split info as JSON
    metadata); a path ending in ``.xz`` is written lzma-compressed (what travels to the GPU)."""
    import lzma

    from safetensors.numpy import save

    tensors = {}
    for s, d in splits.items():
        tensors.update({f"{s}.ids": d.ids.astype(np.uint16), f"{s}.offsets": d.offsets.astype(np.int64),
                        f"{s}.seg": d.seg.astype(np.int32), f"{s}.labels": d.labels.astype(np.float32)})
    meta = {"spec": json.dumps(spec.__dict__), "info": json.dumps(info, sort_keys=True)}
    blob = save(tensors, metadata=meta)
    if str(path).endswith(".xz"):
        blob = lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(blob)
    return Path(path)


def load_task(path) -> tuple[TaskSpec, dict[str, TaskData], dict]:
    """``(spec, {split: TaskData}, info)`` from a file written by ``save_task``."""
    import lzma
    import struct

    from safetensors.numpy import load

    blob = Path(path).read_bytes()
    if str(path).endswith(".xz"):
        blob = lzma.decompress(blob)
    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8:8 + n]).get("__metadata__", {})
    t = load(blob)
    splits = {s: TaskData(t[f"{s}.ids"], t[f"{s}.offsets"], t[f"{s}.seg"], t[f"{s}.labels"])
              for s in SPLITS if f"{s}.ids" in t}
    return TaskSpec(**json.loads(meta["spec"])), splits, json.loads(meta["info"])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # ties get their average rank
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inv, ranks)
    return (sums / counts)[inv]


def metric(kind: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """binary: {"accuracy"}; regression: {"pearson", "spearman"} (higher is better for all)."""
    preds, labels = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if kind == "binary":
        return {"accuracy": float((preds == labels).mean())}
    if kind == "regression":
        def corr(a, b):
            a, b = a - a.mean(), b - b.mean()
            d = np.sqrt((a * a).sum() * (b * b).sum())
            return float((a * b).sum() / d) if d > 0 else 0.0
        return {"pearson": corr(preds, labels), "spearman": corr(_ranks(preds), _ranks(labels))}
    raise ValueError(f"kind={kind!r} is unknown; allowed: 'binary', 'regression'")


def encode(tokenizer, examples, max_len: int = 64) -> TaskData:
    """Tokenize ``[(text, label)]`` or ``[(text_a, text_b, label)]`` with a ``tokenizers``
    WordPiece tokenizer whose post-processor adds [CLS]/[SEP] (``BertWordPieceTokenizer``)."""
    tokenizer.enable_truncation(max_length=max_len)
    inputs = [e[0] if len(e) == 2 else (e[0], e[1]) for e in examples]
    encs = tokenizer.encode_batch(inputs)
    ids, offsets, seg = [], [0], []
    for enc in encs:
        ids.extend(enc.ids)
        offsets.append(len(ids))
        tt = enc.type_ids
        seg.append(tt.index(1) if 1 in tt else len(tt))
    if max(ids, default=0) >= 2**16:
        raise ValueError("vocabulary larger than 65536 ids does not fit the uint16 storage")
    return TaskData(np.asarray(ids, np.uint16), np.asarray(offsets, np.int64),
                    np.asarray(seg, np.int32), np.asarray([e[-1] for e in examples], np.float32))
