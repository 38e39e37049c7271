"""Tiny stand-ins for .carry/prune/imp (a 2-layer BERT, two token tasks, an MLM stream) so that
``run_imp.py --smoke`` runs the real code path on the CPU in seconds."""

from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import torch

from anybudget.prune.tasks import TASKS, TaskData, save_task

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]


def _task(n: int, seed: int, regression: bool) -> TaskData:
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for _ in range(n):
        body = rng.integers(5, 64, size=int(rng.integers(4, 10)))
        y = float((body == 7).sum() + (body < 20).mean()) if regression else float(rng.random() < 0.5)
        if not regression and y:
            body[0] = 7
        seqs.append(np.concatenate([[2], body, [3]]))
        labels.append(y)
    off = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    return TaskData(np.concatenate(seqs).astype(np.uint16), off.astype(np.int64),
                    np.array([len(s) for s in seqs], np.int32), np.array(labels, np.float32))


def build(root: Path) -> tuple[Path, Path]:
    from transformers import BertConfig, BertForMaskedLM

    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    for name in ("rt", "rt_reg"):
        reg = TASKS[name].kind == "regression"
        splits = {s: _task(n, i + (10 if reg else 0), reg) for i, (s, n) in enumerate((("train", 64), ("dev", 32), ("test", 32)))}
        save_task(root / "tasks" / f"{name}.safetensors.xz", TASKS[name], splits, {"smoke": True})
    toks = (5 + np.arange(4000) * 7 % 59).astype(np.uint16)
    for n in ("mlm_train", "mlm_val"):
        (root / f"{n}.u16.xz").write_bytes(lzma.compress(toks.tobytes()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    model = root / "model"
    BertForMaskedLM(cfg).save_pretrained(model)
    (model / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return root, model
