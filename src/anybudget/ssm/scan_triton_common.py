"""Triton helpers shared by the selective-scan kernels (``scan_triton``, ``scan_triton_tm``, ``scan_triton_bwd``).

Each helper is ``@triton.jit`` and inlined by the compiler: the kernels' arithmetic is unchanged,
only written once. Index arguments broadcast, so one helper serves every tile layout.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["channel_tile", "combine", "discretize", "in_range", "load_a_matrix", "load_dt", "load_vec", "silu_and_grad",
           "softplus", "softplus_grad"]


@triton.jit
def combine(a1, b1, a2, b2):
    """Composition of h -> a1 h + b1 then h -> a2 h + b2 (the linear recurrence's scan operator)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def softplus(x):
    # torch's threshold: identity above 20, where log1p(exp(x)) == x in float32.
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def softplus_grad(x):
    """d softplus / dx at the pre-activation x (1 above torch's threshold 20)."""
    return tl.where(x > 20.0, 1.0, tl.sigmoid(x))


@triton.jit
def silu_and_grad(z):
    """(silu(z), silu'(z)) = (z s, s (1 + z (1 - s))) with s = sigmoid(z)."""
    s = tl.sigmoid(z)
    return z * s, s * (1.0 + z * (1.0 - s))


@triton.jit
def load_a_matrix(A_ptr, idx_n, idx_d, mask, n_state):
    """A[d, n] (row-major (d_inner, d_state)) at broadcast indices as float32 -> (A_safe, a_zero).

    ``a_zero`` marks ``A = -inf`` (A-bar = 0 exactly); ``A_safe`` holds 0 there so ``dt * A`` stays
    finite. Masked entries read 0 (A-bar = 1: a padded state that never changes).
    """
    A = tl.load(A_ptr + idx_d * n_state + idx_n, mask=mask, other=0.0).to(tl.float32)
    a_zero = A == float("-inf")
    return tl.where(a_zero, 0.0, A), a_zero


@triton.jit
def load_vec(ptr, offs, mask, ENABLED: tl.constexpr):
    """A per-channel vector (D, delta_bias) as float32, or zeros when the argument is absent."""
    if ENABLED:
        v = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros_like(offs).to(tl.float32)
    return v


@triton.jit
def load_dt(ptrs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(dt, pre-activation): delta (+ bias), through softplus when ``SOFTPLUS``; masked entries read 0 (+ bias)."""
    dtr = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dtr = dtr + bias
    dt = dtr
    if SOFTPLUS:
        dt = softplus(dtr)
    return dt, dtr


@triton.jit
def channel_tile(pid_d, n_inner, n_state, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Offsets and masks of program ``pid_d``'s channel block and of the (padded) state axis."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    return offs_d, offs_n, offs_d < n_inner, offs_n < n_state


@triton.jit
def discretize(dtA, a_zero):
    """A-bar = exp(dt A) from the broadcast product ``dt * A_safe``; exactly 0 where ``a_zero`` (A = -inf)."""
    return tl.where(a_zero, 0.0, tl.exp(dtA))


@triton.jit
def in_range(offs, bound, EVEN: tl.constexpr):
    """``offs < bound``, or a constant all-true mask when ``EVEN`` (the caller knows every index is in range): the
    compiler then drops the masks of the loads and stores built from it (fewer instructions)."""
    if EVEN:
        m = tl.full(offs.shape, 1, tl.int1)
    else:
        m = offs < bound
    return m
