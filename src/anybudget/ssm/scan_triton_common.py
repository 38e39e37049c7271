"""Triton helpers shared by the selective-scan kernels (``scan_triton``, ``scan_triton_tm``)."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["combine", "softplus"]


@triton.jit
def combine(a1, b1, a2, b2):
    """Composition of h -> a1 h + b1 then h -> a2 h + b2 (the linear recurrence's scan operator)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def softplus(x):
    # torch's threshold: identity above 20, where log1p(exp(x)) == x in float32.
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))
