"""FLOPs, parameters and measured latency of NAS-Bench-201 architectures.

Conventions follow the benchmark's own counter (NAS-Bench-201 / TE-NAS ``get_model_infos``):
FLOPs are multiply-accumulates of ``Conv2d`` and ``Linear`` layers (plus one add per output for a
bias); pooling, BN, ReLU and additions are not counted. Params count every parameter, BN affine
included. ``arch_cost`` computes both in closed form (fast enough for all 15,625 archs);
``count_flops`` is the hook-based counter for any module, and the tests check they agree.

Costs are additive over edges: every cell edge maps ``c`` channels to ``c`` at the same
resolution, so an arch costs ``base + sum over edges of op_cost(op)``; :func:`edge_costs` gives
these terms, which the budgeted search uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from anybudget.measure import default_device
from anybudget.nas.space import OPS, parse_arch, validate_ops

__all__ = ["Cost", "arch_cost", "count_flops", "count_params", "edge_costs", "measure_latency"]


@dataclass(frozen=True)
class Cost:
    """FLOPs (multiply-accumulates, NB201 convention) and parameter count of one network."""

    flops: int
    params: int


def _op_cost(op: str, c: int, hw: int) -> Cost:
    if op == "nor_conv_1x1":
        return Cost(c * c * hw, c * c + 2 * c)
    if op == "nor_conv_3x3":
        return Cost(9 * c * c * hw, 9 * c * c + 2 * c)
    return Cost(0, 0)  # none, skip_connect, avg_pool_3x3 (pooling is not counted)


def edge_costs(
    C: int = 16, N: int = 5, num_classes: int = 10, resolution: int = 32
) -> tuple[Cost, dict[str, Cost]]:
    """``(base, per_op)``: cost of the skeleton, and what one edge adds for each op.

    ``arch_cost(arch) == base + sum(per_op[op] for op in arch)`` (FLOPs and params separately).
    """
    _check_geometry(C, N, num_classes, resolution)
    flops = params = 0
    # stem: conv3x3 3->C + BN
    flops += 9 * 3 * C * resolution**2
    params += 27 * C + 2 * C
    hw_sizes = (resolution**2, (resolution // 2) ** 2, (resolution // 4) ** 2)
    chans = (C, 2 * C, 4 * C)
    for s in (1, 2):  # reduction blocks into stage s
        c_in, c_out, hw = chans[s - 1], chans[s], hw_sizes[s]
        flops += 9 * c_in * c_out * hw + 9 * c_out * c_out * hw + c_in * c_out * hw
        params += 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out + c_in * c_out
    params += 2 * 4 * C  # lastact BN
    flops += 4 * C * num_classes + num_classes
    params += 4 * C * num_classes + num_classes
    per_op = {}
    for op in OPS:
        f = p = 0
        for c, hw in zip(chans, hw_sizes):
            oc = _op_cost(op, c, hw)
            f += N * oc.flops
            p += N * oc.params
        per_op[op] = Cost(f, p)
    return Cost(flops, params), per_op


def arch_cost(arch, C: int = 16, N: int = 5, num_classes: int = 10, resolution: int = 32) -> Cost:
    """Closed-form FLOPs and params of the NB201 network of ``arch`` (string or op tuple).

    Defaults are CIFAR-10 (``C=16, N=5``, 32x32, 10 classes); ImageNet16-120 is
    ``resolution=16, num_classes=120``.
    """
    ops = parse_arch(arch) if isinstance(arch, str) else validate_ops(arch)
    base, per_op = edge_costs(C, N, num_classes, resolution)
    return Cost(
        base.flops + sum(per_op[o].flops for o in ops),
        base.params + sum(per_op[o].params for o in ops),
    )


def _check_geometry(C, N, num_classes, resolution) -> None:
    for name, v in (("C", C), ("N", N), ("num_classes", num_classes), ("resolution", resolution)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be an integer >= 1")
    if resolution % 4:
        raise ValueError(f"resolution={resolution} must be a multiple of 4 (two stride-2 reductions)")


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them, BN affine included)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """FLOPs (MACs) per sample of ``Conv2d`` + ``Linear`` layers, measured with forward hooks."""
    total = [0]

    def conv_hook(m: nn.Conv2d, inp, out):
        per_pos = m.kernel_size[0] * m.kernel_size[1] * m.in_channels * m.out_channels // m.groups
        n = out.shape[0] * out.shape[2] * out.shape[3]
        total[0] += per_pos * n + (m.out_channels * n if m.bias is not None else 0)

    def linear_hook(m: nn.Linear, inp, out):
        n = out.numel() // m.out_features
        total[0] += n * m.in_features * m.out_features + (n * m.out_features if m.bias is not None else 0)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(input_shape, device=p.device if p is not None else "cpu")
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total[0] // input_shape[0]


def measure_latency(
    arch,
    *,
    batch_size: int = 1,
    C: int = 16,
    N: int = 5,
    num_classes: int = 10,
    resolution: int = 32,
    device: str | None = None,
    warmup: int = 5,
    repeat: int = 30,
) -> float:
    """Median seconds of one eval-mode forward of the arch's network (``anybudget.measure.latency``)."""
    from anybudget.measure import latency
    from anybudget.nas.network import NB201Network

    dev = default_device(device)
    model = NB201Network(arch, C=C, N=N, num_classes=num_classes).to(dev).eval()
    x = torch.randn(batch_size, 3, resolution, resolution, device=dev)

    def fwd():
        with torch.no_grad():
            return model(x)

    return latency(fwd, warmup=warmup, repeat=repeat, device=dev).median_s

