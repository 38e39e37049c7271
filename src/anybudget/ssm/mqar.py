"""Multi-query associative recall (MQAR), Zoology's generator (Arora et al. 2023), in torch.

One example: ``num_kv_pairs`` key-value pairs first (keys from [1, V/2), values from [V/2, V),
keys distinct, values distinct), then each key asked once at position ``2 kv + 2 gap`` where the
gaps are drawn without replacement with p(gap = i-1) ~ power_a * i^(power_a - 1), i = 1..space.
The label at a query position is its value; every other label is -100 (ignored). Filler tokens
are 0 (the SSM-Bottleneck script's default, ``RAND_PLACEHOLDER=0``) or random.

Generated on the device given, from a ``torch.Generator`` seeded per call, so the same
(seed, device) always gives the same tensors and training batches need no data files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "TEST_SETS",
    "TRAIN_MIXTURE",
    "MQARSegment",
    "MQARStream",
    "check_mqar_args",
    "mqar_queries",
    "multiquery_ar",
]


@dataclass(frozen=True)
class MQARSegment:
    """One slice of data: ``num_examples`` sequences of ``seq_len`` tokens with ``num_kv_pairs``."""

    seq_len: int
    num_examples: int
    num_kv_pairs: int


# The reference code's train mixture (associative_recall/multi_depth_mqra.py): 300k examples.
TRAIN_MIXTURE = (
    MQARSegment(64, 100_000, 4),
    MQARSegment(128, 20_000, 8),
    MQARSegment(256, 20_000, 16),
    MQARSegment(256, 20_000, 32),
    MQARSegment(256, 20_000, 64),
    MQARSegment(512, 20_000, 32),
    MQARSegment(512, 20_000, 64),
    MQARSegment(512, 20_000, 128),
    MQARSegment(1024, 20_000, 64),
    MQARSegment(1024, 20_000, 128),
    MQARSegment(1024, 20_000, 256),
)
# Its test sets: seq 1024 with 64 / 128 / 256 pairs (SEQ_LEN // 16, // 8, // 4), 1000 each.
TEST_SETS = (
    MQARSegment(1024, 1_000, 64),
    MQARSegment(1024, 1_000, 128),
    MQARSegment(1024, 1_000, 256),
)


def check_mqar_args(vocab_size: int, seq_len: int, num_kv_pairs: int, power_a: float = 0.01) -> None:
    """Raise ValueError for settings the generator cannot honour (Zoology's asserts, with reasons)."""
    for name, v, low in (("vocab_size", vocab_size, 4), ("seq_len", seq_len, 4), ("num_kv_pairs", num_kv_pairs, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name}={v!r} must be an integer >= {low}")
    if seq_len % 2:
        raise ValueError(f"seq_len={seq_len} must be even (queries sit on even offsets)")
    if vocab_size <= seq_len:
        raise ValueError(f"vocab_size={vocab_size} must be > seq_len={seq_len}")
    if num_kv_pairs * 4 > seq_len:
        raise ValueError(
            f"num_kv_pairs={num_kv_pairs} needs seq_len >= 4 * num_kv_pairs = {4 * num_kv_pairs}, got {seq_len}"
        )
    if num_kv_pairs > vocab_size // 2 - 1:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} exceeds the {vocab_size // 2 - 1} distinct keys of vocab_size={vocab_size}")
    if not power_a > 0:
        raise ValueError(f"power_a={power_a} must be > 0 (gap law p(i) ~ i^(power_a - 1))")


def _distinct(n: int, k: int, low: int, high: int, gen: torch.Generator, device) -> Tensor:
    """(n, k) distinct integers from [low, high) per row, uniformly (top-k of uniform noise)."""
    noise = torch.rand(n, high - low, generator=gen, device=device)
    return noise.topk(k, dim=1).indices + low


def _sample_without_replacement(p: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """(n, k) indices drawn without replacement with probability ~ p (n, m), no host sync.

    The exponential-race form (top-k of p / Exp(1)) that ``torch.multinomial`` uses for
    ``replacement=False``, so the draws are identical to it for the same generator; torch's own
    version first checks p on the host (``.item()``), a device sync on CUDA every batch.
    """
    q = torch.empty_like(p).exponential_(1, generator=gen)
    return (p / q).topk(k, dim=1).indices


def mqar_queries(
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    num_examples: int,
    seed: int = 0,
    power_a: float = 0.01,
    random_non_queries: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor, Tensor]:
    """MQAR examples with static-shape answers: ``inputs (n, seq_len)``, ``positions (n, k)``,
    ``values (n, k)`` int64, where ``inputs[i, positions[i, j]]`` is a queried key whose answer is
    ``values[i, j]`` (k = num_kv_pairs, every key is queried exactly once). No host sync, so a
    training loop can draw batches on the device ahead of the GPU."""
    check_mqar_args(vocab_size, seq_len, num_kv_pairs, power_a)
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples={num_examples!r} must be an integer >= 1")
    gen = torch.Generator(device=device).manual_seed(int(seed))
    n, k = num_examples, num_kv_pairs
    half = vocab_size // 2
    keys = _distinct(n, k, 1, half, gen, device)
    values = _distinct(n, k, half, vocab_size, gen, device)
    context = 2 * k
    space = (seq_len - context) // 2
    i = torch.arange(1, space + 1, device=device, dtype=torch.float64)
    p = (power_a * i ** (power_a - 1)).float()
    gaps = _sample_without_replacement(p.expand(n, space), k, gen)
    inputs = torch.zeros(n, seq_len, dtype=torch.int64, device=device)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    q = context + 2 * gaps
    inputs.scatter_(1, q, keys)
    if random_non_queries:
        filler = torch.randint(vocab_size, (n, seq_len), generator=gen, device=device)
        inputs = torch.where(inputs == 0, filler, inputs)
    return inputs, q, values


def multiquery_ar(
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    num_examples: int,
    seed: int = 0,
    power_a: float = 0.01,
    random_non_queries: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """MQAR examples: ``inputs, labels``, both ``(num_examples, seq_len)`` int64 on ``device``.

    ``labels[i, q] = value`` where ``inputs[i, q]`` is a queried key, -100 elsewhere (the label is
    aligned with the input position whose next token is the answer, as in Zoology). Same draws as
    :func:`mqar_queries` for the same arguments.
    """
    inputs, q, values = mqar_queries(vocab_size, seq_len, num_kv_pairs, num_examples, seed, power_a,
                                     random_non_queries, device)
    labels = torch.full(inputs.shape, -100, dtype=torch.int64, device=inputs.device)
    labels.scatter_(1, q, values)
    return inputs, labels


class MQARStream:
    """Training batches drawn on the fly from a mixture of segments.

    Each batch comes from one segment (one sequence length), chosen with probability proportional
    to its ``num_examples``; batch ``step`` is a pure function of (seed, step), so a resumed run
    sees the batches it would have seen. ``examples_per_epoch`` = sum of ``num_examples``.
    Fresh examples are drawn every step (the reference trains 64 epochs over a fixed set).
    """

    def __init__(self, segments=TRAIN_MIXTURE, batch_size: int = 128, vocab_size: int = 8192,
                 seed: int = 123, power_a: float = 0.01, random_non_queries: bool = False,
                 device: str | torch.device = "cpu"):
        if not segments:
            raise ValueError("segments must hold at least one MQARSegment")
        for s in segments:
            check_mqar_args(vocab_size, s.seq_len, s.num_kv_pairs, power_a)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
        self.segments = tuple(segments)
        self.batch_size = batch_size
        self.vocab_size = vocab_size
        self.seed = seed
        self.power_a = power_a
        self.random_non_queries = random_non_queries
        self.device = device
        self.weights = torch.tensor([float(s.num_examples) for s in self.segments], dtype=torch.float64)

    @property
    def examples_per_epoch(self) -> int:
        return sum(s.num_examples for s in self.segments)

    def segment(self, step: int) -> MQARSegment:
        """The segment batch ``step`` comes from (drawn on the host: no device work)."""
        pick = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return self.segments[int(torch.multinomial(self.weights, 1, generator=pick))]

    def _args(self, step: int, seg: MQARSegment):
        return (self.vocab_size, seg.seq_len, seg.num_kv_pairs, self.batch_size,
                self.seed * 7_919 + 1_000_003 * step + 17, self.power_a, self.random_non_queries, self.device)

    def batch(self, step: int) -> tuple[Tensor, Tensor, MQARSegment]:
        seg = self.segment(step)
        inputs, labels = multiquery_ar(*self._args(step, seg))
        return inputs, labels, seg

    def batch_queries(self, step: int) -> tuple[Tensor, Tensor, Tensor, MQARSegment]:
        """Batch ``step`` as ``inputs, positions, values, segment`` (:func:`mqar_queries`): the same
        examples as :meth:`batch`, with answers in static (batch, num_kv_pairs) shapes."""
        seg = self.segment(step)
        return (*mqar_queries(*self._args(step, seg)), seg)
