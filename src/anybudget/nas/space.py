"""The NAS-Bench-201 cell space: op names, edges, arch strings and the benchmark's index order.

A cell has 4 nodes; node ``i`` sums one op applied to every earlier node ``j``, giving 6 edges in
the order ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2`` (the order of the arch string and of the
reference supernet's ``edge2index``). An architecture is the tuple of its 6 op names.

Index order (Dong & Yang, ICLR 2020, NAS-Bench-201 ``generate_meta_info``): all 5**6 cells in the
product order of ``OPS`` (edge ``1<-0`` outermost), then ``random.seed(88); random.shuffle``.
That is reproduced here exactly (tests check all 15,625 rows of the benchmark's table), so the
library needs no benchmark file to map indices and strings.
"""

from __future__ import annotations

import itertools
import random
from functools import lru_cache

__all__ = [
    "EDGES",
    "NUM_ARCHS",
    "NUM_EDGES",
    "OPS",
    "all_archs",
    "arch_from_index",
    "arch_index",
    "format_arch",
    "parse_arch",
    "validate_ops",
]

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from)
NUM_EDGES = len(EDGES)
NUM_ARCHS = len(OPS) ** NUM_EDGES  # 15,625

Arch = tuple  # tuple[str, ...] of length 6, one op name per edge in EDGES order


def validate_ops(ops, name: str = "arch") -> tuple[str, ...]:
    """Check a sequence of 6 op names; return it as a tuple. Raises ValueError naming the problem."""
    ops = tuple(ops)
    if len(ops) != NUM_EDGES:
        raise ValueError(f"{name} has {len(ops)} ops; a NAS-Bench-201 cell has {NUM_EDGES} edges")
    for op in ops:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r} in {name}; allowed ops: {', '.join(OPS)}")
    return ops


def parse_arch(text: str) -> tuple[str, ...]:
    """``'|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...~0|...~1|...~2|'`` -> tuple of 6 op names.

    Strict: every node lists each earlier node exactly once, in order, as ``op~input``.
    """
    if not isinstance(text, str):
        raise TypeError(f"arch string must be a str, not {type(text).__name__}")
    form = "'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'"
    nodes = text.strip().split("+")
    if len(nodes) != 3:
        raise ValueError(f"malformed arch string {text!r}: {len(nodes)} nodes, expected 3 as in {form}")
    ops: list[str] = []
    for i, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
            raise ValueError(f"malformed arch string {text!r}: node {i} {node!r} must be wrapped in '|'; form {form}")
        parts = node[1:-1].split("|")
        if len(parts) != i:
            raise ValueError(
                f"malformed arch string {text!r}: node {i} has {len(parts)} inputs, expected {i}; form {form}"
            )
        for j, part in enumerate(parts):
            op, sep, src = part.partition("~")
            if not sep or src != str(j):
                raise ValueError(
                    f"malformed arch string {text!r}: {part!r} in node {i} should be 'op~{j}'; form {form}"
                )
            if op not in OPS:
                raise ValueError(f"unknown op {op!r} in arch string {text!r}; allowed ops: {', '.join(OPS)}")
            ops.append(op)
    return tuple(ops)


def format_arch(ops) -> str:
    """Tuple of 6 op names -> the benchmark's arch string (inverse of :func:`parse_arch`)."""
    ops = validate_ops(ops)
    nodes, k = [], 0
    for i in range(1, 4):
        nodes.append("|" + "|".join(f"{ops[k + j]}~{j}" for j in range(i)) + "|")
        k += i
    return "+".join(nodes)


@lru_cache(maxsize=1)
def _order() -> tuple[tuple[tuple[str, ...], ...], dict[tuple[str, ...], int]]:
    archs = list(itertools.product(OPS, repeat=NUM_EDGES))
    # The benchmark was built with Python's Mersenne Twister shuffle; its algorithm has been
    # stable since Python 3.2, and the tests pin it against the published table.
    rng = random.Random(88)
    rng.shuffle(archs)
    archs_t = tuple(archs)
    return archs_t, {a: i for i, a in enumerate(archs_t)}


def all_archs() -> tuple[tuple[str, ...], ...]:
    """All 15,625 architectures in benchmark index order."""
    return _order()[0]


def arch_index(arch) -> int:
    """Benchmark index of an arch (string or tuple of op names)."""
    ops = parse_arch(arch) if isinstance(arch, str) else validate_ops(arch)
    return _order()[1][ops]


def arch_from_index(index: int) -> tuple[str, ...]:
    """The arch (tuple of op names) at a benchmark index in [0, 15625)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NUM_ARCHS:
        raise ValueError(f"index={index!r} is out of range; NAS-Bench-201 indices are integers in [0, {NUM_ARCHS})")
    return _order()[0][index]
