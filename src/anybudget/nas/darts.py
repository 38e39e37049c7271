"""The DARTS cell space (Liu et al., ICLR 2019) as a second search space for TE-NAS.

A cell has two inputs (the two previous cells' outputs) and 4 intermediate nodes; node ``i``
sums one op on each of its ``2 + i`` predecessors, giving 14 edges (ordered node by node, as the
reference's sorted ``'{i}<-{j}'`` keys). Normal and reduction cells are searched separately;
the output is the concatenation of the 4 intermediate nodes. TE-NAS prunes to one op per edge
(``prune_number=3`` per round on CIFAR-10), then keeps 2 input edges per node by the same rank
sum (``prune_func_rank_group``) and returns a DARTS genotype. Evaluating a genotype by training is
out of scope here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from anybudget.measure import default_device
from anybudget.nas.network import ReLUConvBN, Zero
from anybudget.nas.search import SearchResult, TENASConfig, _round_to, rank_ops, score_candidates

__all__ = [
    "DARTS_EDGES",
    "DARTS_OPS",
    "EDGE_GROUPS",
    "DartsCell",
    "DartsGenotype",
    "DartsSearchConfig",
    "DartsSuperNet",
    "darts_tenas_search",
    "make_darts_op",
]

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
DARTS_EDGES = tuple((i, j) for i in range(4) for j in range(2 + i))  # (node, input); inputs 0,1 = cell inputs
EDGE_GROUPS = ((0, 2), (2, 5), (5, 9), (9, 14))  # edges of node 0..3


class SepConv(nn.Sequential):
    def __init__(self, c_in, c_out, k, stride, pad, dil, affine=True, track=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, k, stride=stride, padding=pad, dilation=dil, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=track),
        )


class FactorizedReduce(nn.Module):
    def __init__(self, c_in, c_out, affine=True, track=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.convs = nn.ModuleList([nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False),
                                    nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)])
        self.bn = nn.BatchNorm2d(c_out, affine=affine, track_running_stats=track)

    def forward(self, x):
        x = self.relu(x)
        y = nn.functional.pad(x, (0, 1, 0, 1))
        return self.bn(torch.cat([self.convs[0](x), self.convs[1](y[:, :, 1:, 1:])], dim=1))


class _StridedZero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def make_darts_op(name: str, c: int, stride: int, affine: bool = True, track: bool = True) -> nn.Module:
    if name == "none":
        return Zero() if stride == 1 else _StridedZero(stride)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine, track)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        k = int(name[-1])
        return nn.Sequential(SepConv(c, c, k, stride, k // 2, 1, affine, track), SepConv(c, c, k, 1, k // 2, 1, affine, track))
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        k = int(name[-1])
        return SepConv(c, c, k, stride, k - 1, 2, affine, track)
    raise ValueError(f"unknown DARTS op {name!r}; allowed ops: {', '.join(DARTS_OPS)}")


class DartsCell(nn.Module):
    """``mask``: bool ``(14, 8)``; an edge with no op contributes nothing (a pruned input)."""

    def __init__(self, c_pp, c_p, c, reduction, reduction_prev, mask, affine=True, track=True):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c, affine, track) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, affine, track)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, affine, track)
        self.edges = nn.ModuleDict()
        for e, (i, j) in enumerate(DARTS_EDGES):
            stride = 2 if reduction and j < 2 else 1
            self.edges[f"{i}<-{j}"] = nn.ModuleDict(
                {op: make_darts_op(op, c, stride, affine, track) for k, op in enumerate(DARTS_OPS) if bool(mask[e, k])}
            )

    def forward(self, s0, s1):
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(4):
            total = 0
            for j in range(2 + i):
                ops = self.edges[f"{i}<-{j}"]
                if len(ops):
                    total = total + sum(op(states[j]) for op in ops.values()) / len(ops)
            states.append(total)
        return torch.cat(states[-4:], dim=1)


class DartsSuperNet(nn.Module):
    """NASNet-style super-network of the DARTS space (the reference's ``NASNetworkDARTS``).

    ``masks``: bool ``(2, 14, 8)`` (normal, reduce). Layers: N normal cells, reduce, N-1 normal,
    reduce, N-1 normal, cut at ``depth``. Input ``(b, 3 or C*stem_multiplier, H, W)`` -> logits.
    """

    def __init__(self, masks, C=1, N=1, num_classes=10, *, depth=2, use_stem=True, stem_multiplier=1, steps=4):
        super().__init__()
        masks = torch.as_tensor(masks, dtype=torch.bool)
        if masks.shape != (2, len(DARTS_EDGES), len(DARTS_OPS)):
            raise ValueError(f"masks has shape {tuple(masks.shape)}; expected (2, 14, 8) = (normal/reduce, edges, ops)")
        self.register_buffer("mask", masks.clone(), persistent=False)
        c_stem = C * stem_multiplier
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)) if use_stem else None
        channels = [C] * N + [2 * C] + [2 * C] * (N - 1) + [4 * C] + [4 * C] * (N - 1)
        reductions = [False] * N + [True] + [False] * (N - 1) + [True] + [False] * (N - 1)
        self.cells = nn.ModuleList()
        c_pp, c_p, red_prev = c_stem, c_stem, False
        for index, (c, red) in enumerate(zip(channels, reductions)):
            if depth > 0 and index >= depth:
                break
            self.cells.append(DartsCell(c_pp, c_p, c, red, red_prev, masks[1 if red else 0]))
            c_pp, c_p, red_prev = c_p, 4 * c, red
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_p), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x):
        s0 = s1 = self.stem(x) if self.stem is not None else x
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(self.lastact(s1)).flatten(1))


@dataclass(frozen=True)
class DartsGenotype:
    """``normal`` / ``reduce``: 8 ``(op, input)`` pairs, two per node; concat nodes 2..5."""

    normal: tuple
    reduce: tuple

    def __str__(self) -> str:
        fmt = lambda g: "[" + ", ".join(f"('{o}', {j})" for o, j in g) + "]"
        return (f"Genotype(normal={fmt(self.normal)}, normal_concat=[2, 3, 4, 5], "
                f"reduce={fmt(self.reduce)}, reduce_concat=[2, 3, 4, 5])")

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> DartsGenotype:
        genes = []
        for ct in range(2):
            g = []
            for e, (i, j) in enumerate(DARTS_EDGES):
                kept = [DARTS_OPS[k] for k in range(len(DARTS_OPS)) if bool(masks[ct, e, k])]
                if len(kept) > 1:
                    raise ValueError(f"edge {i}<-{j} keeps {len(kept)} ops; a genotype needs at most one")
                if kept:
                    g.append((kept[0], j))
            genes.append(tuple(g))
        return cls(genes[0], genes[1])


@dataclass(frozen=True)
class DartsSearchConfig(TENASConfig):
    """TE-NAS on DARTS/CIFAR-10 (``prune_launch.py``): batch 14, 3 ops pruned per edge per round,
    super-network ``C=1, N=1, depth=2`` with stem; thin network the same without stem."""

    batch_size: int = 14
    prune_number: int = 3
    C: int = 1
    N: int = 1
    thin_C: int = 1
    thin_depth: int = 2
    depth: int = 2
    inputs_per_node: int = 2
    ops: tuple = DARTS_OPS  # candidate ops (a subset gives a smaller toy space)

    def __post_init__(self):
        super().__post_init__()
        bad = [o for o in self.ops if o not in DARTS_OPS]
        if bad or len(set(self.ops) - {"none"}) < 1:
            raise ValueError(f"ops={self.ops!r}: each must be one of {', '.join(DARTS_OPS)} (and one besides 'none')")


def darts_tenas_search(config: DartsSearchConfig = DartsSearchConfig(), *, seed: int = 0, device=None,
                       quiet: bool = False, images: torch.Tensor | None = None) -> tuple[DartsGenotype, SearchResult]:
    """TE-NAS on the DARTS space: prune ops to one per edge, then edges to 2 per node."""
    from anybudget.nas.data import photo_batch

    dev = default_device(device)
    t0 = time.perf_counter()
    mask = torch.ones(2, len(DARTS_EDGES), len(DARTS_OPS), dtype=torch.bool)
    for k, op in enumerate(DARTS_OPS):
        if op == "none" or op not in config.ops:
            mask[..., k] = False
    if images is None:
        images, _ = photo_batch(config.image_pool, seed=seed)
    images = images.to(dev)
    ntk = lambda m: DartsSuperNet(m, config.C, config.N, config.num_classes, depth=config.depth).to(dev)
    thin = lambda m: DartsSuperNet(m, config.thin_C, 1, config.num_classes, depth=config.thin_depth, use_stem=False).to(dev)
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"TE-NAS DARTS seed {seed}", unit="op")
    rounds: list[dict] = []
    while bool((mask.sum(-1) > 1).any()):
        rng = np.random.default_rng([seed, len(rounds)])
        torch.manual_seed(int(rng.integers(2**31)))
        prune_number = max(1, min(config.prune_number, int(mask[0, 0].sum()) - 1))
        cands = [tuple(ix) for ix in torch.nonzero(mask & (mask.sum(-1, keepdim=True) > 1)).tolist()]
        if bar is not None:
            bar.reset(total=len(cands))
        dk, dr = score_candidates(mask, cands, ntk, thin, images, config, rng, dev, bar)
        choice, _ = rank_ops(dk, dr, prune_number, config.precision)
        for edge in sorted(choice):
            for key in choice[edge]:
                if int(mask[key[:-1]].sum()) > 1:
                    mask[key] = False
        rounds.append({"round": len(rounds), "phase": "ops", "mask": mask.int().tolist()})
    # Edge phase: per cell type and node, drop all but `inputs_per_node` incoming edges.
    for ct in range(2):
        for lo, hi in EDGE_GROUPS:
            if hi - lo <= config.inputs_per_node:
                continue
            rng = np.random.default_rng([seed, len(rounds)])
            torch.manual_seed(int(rng.integers(2**31)))
            cands = [tuple(ix) for ix in torch.nonzero(mask).tolist() if ix[0] == ct and lo <= ix[1] < hi]
            if bar is not None:
                bar.reset(total=len(cands))
            dk, dr = score_candidates(mask, cands, ntk, thin, images, config, rng, dev, bar)
            order = _group_order(dk, dr, config.precision)
            for key in order[: len(order) - config.inputs_per_node]:
                mask[key] = False
            rounds.append({"round": len(rounds), "phase": f"edges cell {ct} node {EDGE_GROUPS.index((lo, hi))}", "mask": mask.int().tolist()})
    if bar is not None:
        bar.close()
    geno = DartsGenotype.from_masks(mask)
    return geno, SearchResult(("darts",), str(geno), -1, time.perf_counter() - t0, rounds)


def _group_order(dk: dict, dr: dict, precision: int) -> list:
    """Candidates in ascending rank-sum order (reference ``prune_func_rank_group``): all but the
    last ``inputs_per_node`` are pruned."""
    _, ranks = rank_ops(dk, dr, 1, precision)
    # the NTK ordering (stable, by rounded value) breaks rank-sum ties, as in rank_ops
    keys = sorted(sorted(dk), key=lambda k: _round_to(dk[k], precision), reverse=True)
    return sorted(keys, key=lambda k: sum(ranks[k]))
