"""Data for annealing the reference LM: the no-leak check, document tokenization, the general slice, the mixture.

v1's six documentation packages (benchmarks/zoo/build/train.txt) are the in-domain text; v1's test
documents (build_v2/v1_test.txt = build/test.txt) must not be in it. ``leak_check`` compares whole
documents (exact, after stripping) and paragraphs (blank-line separated, whitespace-normalised, at
least ``min_chars`` long, so shared boilerplate lines such as "See also" do not count).

``Mixture`` draws training windows of ``seq + 1`` tokens: each row comes from one source array
(in-domain or general) and lies inside it, so a window never crosses the end of a file; the number
of in-domain rows per step is stratified (the running count tracks ``frac * rows`` within one row).
"""

from __future__ import annotations

import lzma
import re
import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # the zoo's corpus and tokenizer modules
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import DOC_SEP  # noqa: E402,F401 - the corpus split files' document separator
from tokenize_corpus import write_xz  # noqa: E402
from tokenize_v2 import BOS, EOS  # noqa: E402,F401 - the reference LM's document tokens
from tokenize_v3 import encode_docs  # noqa: E402


def split_documents(text: str) -> list[str]:
    """The documents of a corpus split file (``DOC_SEP``-joined); empty documents dropped."""
    return [d for d in text.split(DOC_SEP) if d.strip()]


def _paragraphs(doc: str, min_chars: int) -> list[str]:
    paras = (" ".join(p.split()) for p in re.split(r"\n\s*\n", doc))
    return [p for p in paras if len(p) >= min_chars]


def leak_check(train_docs: list[str], test_docs: list[str], min_chars: int = 200,
               max_paragraph_frac: float = 0.05) -> dict:
    """How much of ``test_docs`` appears in ``train_docs``: whole documents and long paragraphs.

    ``ok`` is True when no test document appears whole and at most ``max_paragraph_frac`` of the
    test's long paragraphs (>= ``min_chars`` characters after whitespace normalisation) occur verbatim
    in the train text. (v1's document-level split itself shares 3.0% of them: licence headers and
    option text repeated across a package's documents; v1's train documents are all in v2's train.)
    """
    if min_chars < 1:
        raise ValueError(f"min_chars={min_chars}: must be >= 1")
    if not 0.0 <= max_paragraph_frac <= 1.0:
        raise ValueError(f"max_paragraph_frac={max_paragraph_frac}: must be in [0, 1]")
    train_set = {d.strip() for d in train_docs}
    doc_hits = sum(d.strip() in train_set for d in test_docs)
    train_paras = {p for d in train_docs for p in _paragraphs(d, min_chars)}
    test_paras = [p for d in test_docs for p in _paragraphs(d, min_chars)]
    para_hits = [p for p in test_paras if p in train_paras]
    frac = len(para_hits) / max(1, len(test_paras))
    return {"train_documents": len(train_docs), "test_documents": len(test_docs),
            "test_documents_in_train": doc_hits, "min_paragraph_chars": min_chars,
            "test_paragraphs": len(test_paras), "test_paragraphs_in_train": len(para_hits),
            "paragraph_fraction": frac, "examples": [p[:120] for p in para_hits[:5]],
            "max_paragraph_frac": max_paragraph_frac, "ok": doc_hits == 0 and frac <= max_paragraph_frac}


def encode_documents(tok, docs: list[str], chunk: int = 2000) -> np.ndarray:
    """``<|bos|> document <|endoftext|>`` for every document, as one uint16 array (tokenize_v3's encoding)."""
    return np.concatenate([np.zeros(0, dtype=np.uint16), *encode_docs(tok, docs, batch=chunk)])


def document_slice(ids: np.ndarray, bos: int, n_tokens: int) -> np.ndarray:
    """About ``n_tokens`` of whole documents taken evenly through ``ids`` (every k-th document), in order."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens={n_tokens}: must be >= 1")
    starts = np.flatnonzero(ids == bos)
    if starts.size == 0:
        raise ValueError(f"no document start (bos id {bos}) in the token array")
    ends = np.append(starts[1:], ids.size)
    k = max(1, int(ids.size // n_tokens))
    pieces, total = [], 0
    for off in range(k):  # every k-th document; further offsets only if still short
        for s, e in zip(starts[off::k], ends[off::k]):
            if total >= n_tokens:
                break
            pieces.append((s, e))
            total += e - s
        if total >= n_tokens:
            break
    pieces.sort()
    return np.concatenate([ids[s:e] for s, e in pieces])


class Mixture:
    """Training windows from an in-domain and a general token array, ``frac`` of the rows in-domain."""

    def __init__(self, indomain: np.ndarray, general: np.ndarray, frac: float, seq: int, seed: int = 0):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"frac={frac}: must be in [0, 1]")
        for name, arr in (("indomain", indomain), ("general", general)):
            if len(arr) < seq + 2:
                raise ValueError(f"{name}: {len(arr)} tokens, need at least seq + 2 = {seq + 2}")
        self.sources = (np.asarray(indomain), np.asarray(general))
        self.frac, self.seq = frac, seq
        self.rng = np.random.default_rng(seed)
        self.rows = self.in_rows = 0

    def batch(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(``rows`` x ``seq + 1`` int64 windows, bool array: row is in-domain); rows shuffled."""
        n_in = int(np.floor((self.rows + rows) * self.frac + 1e-9)) - self.in_rows
        self.rows += rows
        self.in_rows += n_in
        is_in = np.zeros(rows, dtype=bool)
        is_in[:n_in] = True
        self.rng.shuffle(is_in)
        out = np.empty((rows, self.seq + 1), dtype=np.int64)
        for r, flag in enumerate(is_in):
            src = self.sources[0 if flag else 1]
            s = int(self.rng.integers(0, len(src) - self.seq))  # s + seq + 1 <= len(src)
            out[r] = src[s: s + self.seq + 1]
        return out, is_in


def write_u16_xz(path: Path, ids: np.ndarray) -> int:
    """Write uint16 ids xz-compressed (atomically, tokenize_corpus.write_xz at xz's extreme preset); return the size."""
    return write_xz(path, np.ascontiguousarray(ids, dtype=np.uint16), preset=9 | lzma.PRESET_EXTREME)
