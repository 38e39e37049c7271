"""The NAS-Bench-201 macro network, with a per-edge op mask so one class is both an
architecture and a (pruned) super-network.

Macro skeleton (Dong & Yang 2020, Fig. 1): stem conv3x3+BN, ``N`` cells at ``C`` channels, a
ResNet basic block (stride 2) to ``2C``, ``N`` cells, a block to ``4C``, ``N`` cells, BN+ReLU,
global average pool, linear classifier. CIFAR default ``C=16, N=5``.

Each edge holds the ops its mask keeps, and outputs their mean: the reference super-network
weights ops by ``softmax(alpha)`` with pruned ops at ``alpha=-1000`` and the rest at 0, which is
exactly ``1/k`` over the ``k`` kept ops. With one op per edge this is the benchmark's network.
"""

from __future__ import annotations

import torch
from torch import nn

from anybudget.nas.space import EDGES, NUM_EDGES, OPS, parse_arch, validate_ops

__all__ = ["NB201Network", "ResNetBasicBlock", "arch_mask", "make_op", "mask_to_arch"]


def arch_mask(arch) -> torch.Tensor:
    """Arch (string or op tuple) -> bool mask (6 edges, 5 ops) with one True per edge."""
    ops = parse_arch(arch) if isinstance(arch, str) else validate_ops(arch)
    mask = torch.zeros(NUM_EDGES, len(OPS), dtype=torch.bool)
    for e, op in enumerate(ops):
        mask[e, OPS.index(op)] = True
    return mask


def mask_to_arch(mask: torch.Tensor) -> tuple[str, ...]:
    """Single-path mask (6, 5) -> op tuple. Raises ValueError if an edge keeps != 1 op."""
    mask = _check_mask(mask)
    counts = mask.sum(1).tolist()
    if any(c != 1 for c in counts):
        raise ValueError(f"mask is not a single path: ops kept per edge = {counts}; each edge must keep exactly 1")
    return tuple(OPS[int(i)] for i in mask.float().argmax(1).tolist())


def _check_mask(mask) -> torch.Tensor:
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.shape != (NUM_EDGES, len(OPS)):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected ({NUM_EDGES}, {len(OPS)}) = (edges, ops {OPS})")
    if not bool(mask.any(1).all()):
        empty = [f"{EDGES[e][0]}<-{EDGES[e][1]}" for e in range(NUM_EDGES) if not bool(mask[e].any())]
        raise ValueError(f"mask keeps no op on edge(s) {empty}; every edge needs at least one op (use 'none')")
    return mask


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool, track: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=track),
        )


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, c: int, affine: bool = True, track: bool = True) -> nn.Module:
    """One NB201 cell op on ``c`` channels, stride 1 (cells never change shape)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1, affine, track)
    if name == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1, affine, track)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown op {name!r}; allowed ops: {', '.join(OPS)}")


class ResNetBasicBlock(nn.Module):
    """Reduction block between stages: two ReLU-conv3x3-BN (first stride 2) + avgpool/1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True, track: bool = True):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, affine, track)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, affine, track)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class Cell(nn.Module):
    def __init__(self, c: int, mask: torch.Tensor, affine: bool, track: bool):
        super().__init__()
        self.edges = nn.ModuleDict()
        for e, (i, j) in enumerate(EDGES):
            self.edges[f"{i}<-{j}"] = nn.ModuleDict(
                {op: make_op(op, c, affine, track) for k, op in enumerate(OPS) if bool(mask[e, k])}
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, 4):
            total = None
            for j in range(i):
                ops = self.edges[f"{i}<-{j}"]
                out = sum(op(nodes[j]) for op in ops.values()) / len(ops)
                total = out if total is None else total + out
            nodes.append(total)
        return nodes[-1]


class NB201Network(nn.Module):
    """NAS-Bench-201 network for an arch, or a super-network for a mask.

    ``arch``: arch string, op tuple, or bool mask ``(6, 5)`` (edges x OPS). ``depth`` keeps only
    the first ``depth`` layers (cells and reduction blocks), ``use_stem=False`` feeds the input to
    the first cell directly (then the input needs ``C`` channels): the reference's "thin" network
    for linear regions is ``C=1, N=1, depth=1, use_stem=False``.

    Input ``(batch, in_channels, H, W)`` -> logits ``(batch, num_classes)``.
    """

    def __init__(
        self,
        arch,
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        *,
        depth: int = -1,
        use_stem: bool = True,
        in_channels: int = 3,
        affine: bool = True,
        track_running_stats: bool = True,
    ):
        super().__init__()
        for name, v, low in (("C", C, 1), ("N", N, 1), ("num_classes", num_classes, 1), ("in_channels", in_channels, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}={v!r} must be an integer >= {low}")
        if isinstance(arch, torch.Tensor):
            mask = _check_mask(arch)
        else:
            mask = arch_mask(arch)
        self.register_buffer("mask", mask.clone(), persistent=False)
        self.C, self.N, self.use_stem = C, N, use_stem
        self.stem = (
            nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
            if use_stem
            else None
        )
        channels = [C] * N + [2 * C] + [2 * C] * N + [4 * C] + [4 * C] * N
        reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        self.cells = nn.ModuleList()
        c_prev = C
        for index, (c, red) in enumerate(zip(channels, reductions)):
            if depth > 0 and index >= depth:
                break
            self.cells.append(ResNetBasicBlock(c_prev, c, affine, track_running_stats) if red else Cell(c, mask, affine, track_running_stats))
            c_prev = c
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    @property
    def is_single_path(self) -> bool:
        return bool((self.mask.sum(1) == 1).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.stem(x) if self.stem is not None else x
        for cell in self.cells:
            feature = cell(feature)
        out = self.global_pooling(self.lastact(feature)).flatten(1)
        return self.classifier(out)
