"""Selective scan (Mamba-1's S6 recurrence): a sequential reference and a chunked parallel scan.

Recurrence (Gu & Dao 2023, Alg. 2; Wang et al. 2025 Eq. 1), per batch b, channel d, state n:

    dt_t  = softplus(delta_t + delta_bias)            (if delta_softplus)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t   = <C_t, h_t> + D * u_t,      out_t = y_t * silu(z_t)

Shapes follow ``mamba_ssm.selective_scan_ref``: ``u, delta, z: (batch, d_inner, seq)``,
``A: (d_inner, d_state)``, ``B, C: (batch, d_state, seq)``, ``D, delta_bias: (d_inner,)``.

Polarization needs one extension of the reference semantics: an entry ``A = -inf`` means the
discretized transition is exactly 0 (``A-bar = 0``, the state keeps only the current token), for
every ``dt`` including ``dt = 0`` where ``exp(0 * -inf)`` would be NaN. ``A = 0`` already gives
``A-bar = exp(0) = 1`` exactly in floating point. All scans here agree on that rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SCAN_BACKENDS",
    "check_scan_inputs",
    "discretize",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]


SCAN_BACKENDS = ("auto", "triton", "chunked", "ref", "op")


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """Raise ValueError naming the argument whose shape does not fit ``u: (batch, d_inner, seq)``."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, d_inner, seq), got shape {tuple(u.shape)}")
    bsz, d_inner, seq = u.shape
    if seq < 1:
        raise ValueError(f"u has seq={seq}; the sequence must hold at least one token")
    if delta.shape != u.shape:
        raise ValueError(f"delta shape {tuple(delta.shape)} must equal u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must be (d_inner={d_inner}, d_state), got shape {tuple(A.shape)}")
    d_state = A.shape[1]
    if d_state < 1:
        raise ValueError(f"d_state={d_state} must be >= 1")
    # Value check only on CPU and eagerly: on CUDA it would force a device sync on every layer
    # call, and under torch.compile a data-dependent branch is a graph break.
    if not A.is_cuda and not torch.compiler.is_compiling() and (torch.isnan(A).any() or (A > 0).any()):
        raise ValueError("A must be <= 0 (a stable, decaying state; -inf means A-bar = 0); got NaN or positive entries")
    for name, t in (("B", B), ("C", C)):
        if t.shape != (bsz, d_state, seq):
            raise ValueError(
                f"{name} shape {tuple(t.shape)} must be (batch={bsz}, d_state={d_state}, seq={seq})"
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d_inner,):
            raise ValueError(f"{name} shape {tuple(t.shape)} must be (d_inner={d_inner},)")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z shape {tuple(z.shape)} must equal u shape {tuple(u.shape)}")


def discretize(delta: Tensor, A: Tensor) -> Tensor:
    """A-bar = exp(delta * A) (zero-order hold, Mamba Eq. 4); ``A = -inf`` gives exactly 0.

    delta: (batch, d_inner, seq) float32, A: (d_inner, d_state) -> (batch, d_inner, seq, d_state).
    """
    zero = torch.isneginf(A)
    # 0 * -inf is NaN (forward at dt = 0, and backward through any masked product), so the
    # zero-polarized entries are computed with A = 0 and then replaced by an exact 0.
    A_safe = torch.where(zero, torch.zeros((), dtype=A.dtype, device=A.device), A)
    a = torch.exp(delta.unsqueeze(-1) * A_safe[:, None, :])
    return torch.where(zero[:, None, :], torch.zeros((), dtype=a.dtype, device=a.device), a)


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    dtype_in = u.dtype
    # float32 accumulation for half inputs; float64 stays float64 (gradient checks).
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return dtype_in, u, delta, A, B, C


def _finish(y, u, D, z, dtype_in):
    if D is not None:
        y = y + u * D.to(y.dtype)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype_in)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Sequential reference scan, one time step at a time (``mamba_ssm.selective_scan_ref``).

    Returns ``out: (batch, d_inner, seq)`` in u's dtype, and with ``return_last_state`` also
    ``h_L: (batch, d_inner, d_state)`` float32 (float64 for float64 inputs). Accumulates in float32.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in, u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    a = discretize(delta, A)  # (b, d, l, n)
    bu = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = a[:, :, t] * h + bu[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out


def _shift_right(x: Tensor, k: int, fill: float) -> Tensor:
    """x[..., t, :] -> x[..., t-k, :] along dim -2, padding the first k positions with ``fill``."""
    pad = x.new_full(x.shape[:-2] + (k, x.shape[-1]), fill)
    return torch.cat([pad, x[..., :-k, :]], dim=-2)


def _linear_scan(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Hillis-Steele inclusive scan of h_t = a_t h_{t-1} + b_t along dim -2, h_{-1} = 0.

    a, b: (..., T, N). Returns (prod_{k<=t} a_k, h_t), both (..., T, N). log2(T) out-of-place
    steps, so autograd differentiates it; products only (no division), so A-bar = 0 is exact.
    """
    k = 1
    T = a.shape[-2]
    while k < T:
        b = b + a * _shift_right(b, k, 0.0)
        a = a * _shift_right(a, k, 1.0)
        k *= 2
    return a, b


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int = 64,
):
    """Chunked parallel scan in PyTorch: same contract as :func:`selective_scan_ref`.

    Each chunk of ``chunk_size`` steps is scanned in parallel (Hillis-Steele, log2 steps) from a
    zero state; the chunk-end states are then carried across chunks sequentially (seq/chunk steps)
    and added back as ``prod(a) * carry``. Differentiable by autograd (CPU training path).
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be an integer >= 1")
    return _chunked_unchecked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size)


def _chunked_unchecked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size=64):
    """:func:`selective_scan_chunked` without the input checks (for callers that made them: ``scan_op``)."""
    dtype_in, u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    bsz, d_inner, seq = u.shape
    d_state = A.shape[1]
    T = min(chunk_size, seq)
    n_chunks = math.ceil(seq / T)
    pad = n_chunks * T - seq
    a = discretize(delta, A)  # (b, d, l, n)
    bu = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    if pad:
        # Padding with a = 1, b = 0 leaves the carried state unchanged past the end.
        a = torch.cat([a, a.new_ones(bsz, d_inner, pad, d_state)], dim=2)
        bu = torch.cat([bu, bu.new_zeros(bsz, d_inner, pad, d_state)], dim=2)
    a = a.view(bsz, d_inner, n_chunks, T, d_state)
    bu = bu.view(bsz, d_inner, n_chunks, T, d_state)
    prod_a, h_local = _linear_scan(a, bu)
    carry = u.new_zeros(bsz, d_inner, d_state)
    carries = []
    for c in range(n_chunks):
        carries.append(carry)
        carry = prod_a[:, :, c, -1] * carry + h_local[:, :, c, -1]
    h = h_local + prod_a * torch.stack(carries, dim=2).unsqueeze(3)
    h = h.reshape(bsz, d_inner, n_chunks * T, d_state)[:, :, :seq]
    y = torch.einsum("bdln,bnl->bdl", h, C)
    out = _finish(y, u, D, z, dtype_in)
    return (out, carry) if return_last_state else out


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
    fixed_channels: tuple[int, int] | None = None,
):
    """Selective scan with the fastest available backend (same contract as the reference).

    ``backend``: ``"auto"`` (Triton on CUDA when triton imports, else chunked; while
    ``torch.compile`` traces: ``"op"``), ``"triton"``, ``"chunked"``, ``"ref"`` or ``"op"``
    (``scan_op``: the custom op the compiler treats as one opaque call; Triton on CUDA, chunked on CPU). ``fixed_channels = (n_ones, n_zeros)``: the caller's promise that
    A's first n_ones columns are exactly 0 and its last n_zeros exactly -inf (polarization); the
    Triton backend then scans only the other columns and adds those in closed form
    (``scan_split``; ``ScanBlocks.split_fixed = False`` turns that off; ``ScanBlocks.fold_fixed = True`` computes
    the closed form inside the kernels instead of PyTorch ops around them, where ``scan_triton.fold_problem``
    allows: elsewhere the split path runs).
    """
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"backend={backend!r}; allowed: {', '.join(map(repr, SCAN_BACKENDS))}")
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "auto":
        backend = "triton" if u.is_cuda and _triton_available() else "chunked"
        if torch.compiler.is_compiling():
            # One opaque call in the graph: the Triton autograd.Function's Python-side state would
            # break the graph, and the chunked scan's own ops make long, shape-fragile traces.
            backend = "op"
    if backend in ("op", "triton"):
        triton = backend == "triton" or (u.is_cuda and _triton_available())
        if backend == "op":
            from functools import partial

            from anybudget.ssm.scan_op import selective_scan_op

            fn = partial(selective_scan_op, impl="triton" if triton else "torch")
        else:
            from anybudget.ssm.scan_triton import selective_scan_triton as fn
        # the op's PyTorch scan always splits the fixed channels off; Triton as ScanBlocks.split_fixed says, in the
        # kernels with ScanBlocks.fold_fixed
        if fixed_channels and any(fixed_channels) and (not triton or _split_fixed()):
            if triton and _fold_fixed(A.shape[1], fixed_channels):
                return fn(*args, fixed_channels=tuple(fixed_channels))
            from anybudget.ssm.scan_split import selective_scan_split

            return selective_scan_split(fn, *args, n_ones=fixed_channels[0], n_zeros=fixed_channels[1])
        return fn(*args)
    if backend == "ref":
        return selective_scan_ref(*args)
    return selective_scan_chunked(*args)


def _split_fixed() -> bool:
    from anybudget.ssm.scan_triton import ScanBlocks

    return ScanBlocks.split_fixed


def _fold_fixed(n_state: int, fixed_channels) -> bool:
    """``ScanBlocks.fold_fixed`` and the kernels can fold these channels as ``ScanBlocks`` is set (else the split
    path runs: same results; ``scan_triton.fold_problem`` says why)."""
    from anybudget.ssm.scan_triton import ScanBlocks, fold_problem

    return ScanBlocks.fold_fixed and fold_problem(n_state, *fixed_channels) is None


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
