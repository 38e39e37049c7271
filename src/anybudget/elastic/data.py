"""Token batches from one flat token array, reproducible by step (so a resumed run sees the same data)."""

from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import torch

__all__ = ["TokenBatches", "eval_windows", "read_tokens"]


def read_tokens(path: str | Path) -> np.ndarray:
    """A ``.u16.xz`` file (xz-compressed little-endian uint16 token ids) or a raw ``.u16`` / ``.npy`` file."""
    path = Path(path)
    if path.name.endswith(".xz"):
        return np.frombuffer(lzma.decompress(path.read_bytes()), dtype=np.uint16)
    if path.suffix == ".npy":
        return np.load(path)
    return np.fromfile(path, dtype=np.uint16)


class TokenBatches:
    """``batches(step, rank=0)`` -> ``(batch, seq + 1)`` int64 windows drawn at random, seeded by (seed, step, rank)."""

    def __init__(self, tokens, batch: int, seq: int, seed: int = 0):
        self.tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        if self.tokens.numel() < seq + 2:
            raise ValueError(f"tokens has {self.tokens.numel()} ids; need more than seq + 1 = {seq + 1}")
        if batch < 1 or seq < 1:
            raise ValueError(f"batch={batch} and seq={seq} must be >= 1")
        self.batch, self.seq, self.seed = batch, seq, seed

    def __call__(self, step: int, rank: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 65_537 + rank)
        starts = torch.randint(0, self.tokens.numel() - self.seq - 1, (self.batch,), generator=g)
        return torch.stack([self.tokens[s:s + self.seq + 1] for s in starts.tolist()])

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq


def eval_windows(tokens, seq: int, batch: int, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Non-overlapping ``(batch, seq + 1)`` windows over ``tokens`` (the last partial batch kept)."""
    t = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if max_tokens is not None:
        t = t[:max_tokens + 1]
    n = (t.numel() - 1) // seq
    if n < 1:
        raise ValueError(f"tokens has {t.numel()} ids; need at least seq + 1 = {seq + 1}")
    rows = [t[i * seq:i * seq + seq + 1] for i in range(n)]
    return [torch.stack(rows[i:i + batch]) for i in range(0, n, batch)]
