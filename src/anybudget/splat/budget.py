"""From a size budget (``Budget("size=40MB")``) to LightGaussian's ratios.

The compact file's size before deflate is known in closed form (see :func:`estimated_size`), so a
budget is met by tightening the paper's settings in this order until the estimate fits:
1. prune more (from ``min_prune``, the paper's 0.66, up to ``max_prune`` 0.9), VQ ratio 0.6;
2. vector-quantise more colours (VQ ratio 0.95), pruning again from ``min_prune``;
3. 16-bit positions. Deflate only shrinks the file further (by a few percent on real scenes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from anybudget.budget import Budget, BudgetError

__all__ = ["SizePlan", "estimated_size", "plan_for_size"]

HEADER_BYTES = 1024  # JSON header + zlib framing, generously


@dataclass(frozen=True)
class SizePlan:
    prune_ratio: float
    vq_ratio: float
    position_bits: int
    estimated_bytes: int
    target_bytes: int


def estimated_size(n: int, sh_degree: int, prune_ratio: float, vq_ratio: float, codebook_size: int = 8192,
                   position_bits: int = 0) -> int:
    """Bytes of the ``.lgz`` sections for ``n`` Gaussians before deflate (an upper bound)."""
    kept = n - round(prune_ratio * n)
    m = round(vq_ratio * kept)
    d = 3 * (sh_degree + 1) ** 2
    k = min(codebook_size, m)
    bits = max(1, math.ceil(math.log2(max(k, 2))))
    pos = kept * 6 + 24 if position_bits == 16 else kept * 12
    per = kept * (2 + 6 + 8) + math.ceil(kept / 8) + math.ceil(m * bits / 8)
    return HEADER_BYTES + pos + per + k * d * 2 + (kept - m) * d * 2


def plan_for_size(budget, n: int, sh_degree: int, codebook_size: int = 8192, min_prune: float = 0.66,
                  max_prune: float = 0.9, vq_ratio: float = 0.6, max_vq_ratio: float = 0.95) -> SizePlan:
    """The least aggressive settings (in the order above) whose file fits ``budget``'s ``size``."""
    target = int(Budget(budget).require("size").value)

    def fits(p, v, b):
        return estimated_size(n, sh_degree, p, v, codebook_size, b) <= target

    for v, b in ((vq_ratio, 0), (max_vq_ratio, 0), (max_vq_ratio, 16)):
        if fits(min_prune, v, b):
            p = min_prune
        elif fits(max_prune, v, b):
            lo, hi = min_prune, max_prune  # estimated size decreases with the prune ratio
            for _ in range(50):
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if fits(mid, v, b) else (mid, hi)
            p = hi
        else:
            continue
        return SizePlan(p, v, b, estimated_size(n, sh_degree, p, v, codebook_size, b), target)
    smallest = estimated_size(n, sh_degree, max_prune, max_vq_ratio, codebook_size, 16)
    raise BudgetError(f"size={Budget(budget)['size']} is out of reach for {n} Gaussians; the smallest file "
                      f"this plan makes (prune {max_prune}, VQ {max_vq_ratio}, 16-bit positions) is "
                      f"~{smallest} bytes")
