"""The selective scan as an opaque ``torch.library`` custom op, so ``torch.compile`` can see around it.

Mamba's ``selective_scan`` (Gu & Dao 2023, Alg. 2; ``scan.selective_scan_ref``'s contract) as two
ops, ``anybudget::ssm_scan_fwd`` and ``anybudget::ssm_scan_bwd``, joined by ``register_autograd``
and given shape-only fakes. ``torch.compile(fullgraph=True)`` then traces a whole Mamba loss
(embedding, projections, conv, gating, norm, loss) without a graph break: the compiler fuses the
elementwise work and layout changes around the scan and calls the scan's kernels as they are.

Two implementations behind one schema (``impl``):

* ``"triton"``: ``scan_triton.triton_forward`` / ``triton_backward`` (the Triton kernels; the
  forward also returns its tile-start states, which the backward reads instead of recomputing);
  under ``TRITON_INTERPRET=1`` it runs on CPU tensors too (tests).
* ``"torch"``: the chunked PyTorch scan (``scan.selective_scan_chunked``), its backward by
  ``torch.func.vjp`` of the same function (recomputation); the states output is empty. This is the
  CPU path (tests of the compiled step without a GPU).

Layout: the kernels read ``(batch, channel, time)`` rows, so :func:`selective_scan_op` makes its
inputs contiguous *before* the op: inside a compiled graph that layout change becomes part of the
kernel that produces the tensor (no separate copy), and the incoming gradient is made contiguous
the same way in the registered backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anybudget.ssm.scan import _chunked_unchecked, check_scan_inputs

__all__ = ["SCAN_OP_IMPLS", "selective_scan_op"]

SCAN_OP_IMPLS = ("auto", "triton", "torch")


def _check_impl(impl: str) -> None:
    if impl not in ("triton", "torch"):
        raise ValueError(f"impl={impl!r}; allowed: 'triton', 'torch'")


@torch.library.custom_op("anybudget::ssm_scan_fwd", mutates_args=())
def _scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
              delta_bias: Tensor | None, delta_softplus: bool, impl: str,
              tile: int, n_ones: int, n_zeros: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out like u, tile-start states (b, ceil(seq/tile), d, n) f32 [torch: (b, 0, d, n)], last state f32, the
    one-polarized channel's tile-start states (b, ceil(seq/tile), d) f32 when folded in [else (b, 0, d)], y before
    the gate like u when folded in with z [else (0,)]).

    ``n_ones, n_zeros`` > 0 (Triton only): the polarized channels folded into the kernels
    (``scan_triton.triton_forward_fold``); the states then hold the learned columns only."""
    _check_impl(impl)
    none1 = u.new_empty((u.shape[0], 0, u.shape[1]), dtype=torch.float32)
    if impl == "triton":
        from anybudget.ssm.scan_triton import triton_forward, triton_forward_fold

        if n_ones or n_zeros:
            return triton_forward_fold(u, delta, A, B, C, D, z, delta_bias, delta_softplus, (n_ones, n_zeros),
                                       block_t=tile)
        return (*triton_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_t=tile), none1,
                u.new_empty((0,)))
    if n_ones or n_zeros:
        raise ValueError(f"n_ones={n_ones}, n_zeros={n_zeros}: folding the polarized channels needs impl='triton'")
    # selective_scan_op checked the inputs: no second check (a device sync on A's values) on every forward
    out, last = _chunked_unchecked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)
    states = u.new_empty((u.shape[0], 0, u.shape[1], A.shape[1]), dtype=torch.float32)
    return out.contiguous(), states, last.float().contiguous(), none1, u.new_empty((0,))


@_scan_fwd.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, impl, tile, n_ones, n_zeros):
    bsz, d, seq = u.shape
    n = A.shape[1]
    tiles = (seq + tile - 1) // tile if impl == "triton" else 0
    folded = impl == "triton" and (n_ones or n_zeros)
    return (torch.empty_like(u, memory_format=torch.contiguous_format),
            u.new_empty((bsz, tiles, d, n - n_ones - n_zeros), dtype=torch.float32),
            u.new_empty((bsz, d, n), dtype=torch.float32),
            u.new_empty((bsz, tiles if n_ones else 0, d), dtype=torch.float32),
            torch.empty_like(u, memory_format=torch.contiguous_format) if folded and z is not None
            else u.new_empty((0,)))


def _absent(u: Tensor) -> Tensor:
    return u.new_empty((0,))


@torch.library.custom_op("anybudget::ssm_scan_bwd", mutates_args=())
def _scan_bwd(dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
              z: Tensor | None, delta_bias: Tensor | None, states: Tensor, states1: Tensor, ypre: Tensor,
              delta_softplus: bool, impl: str, tile: int, n_ones: int,
              n_zeros: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(du, ddelta, dA, dB, dC, dD, dz, dbias) in the inputs' dtypes; an absent input's gradient is empty (0,)."""
    _check_impl(impl)
    ins = (u, delta, A, B, C, D, z, delta_bias)
    if impl == "triton":
        from anybudget.ssm.scan_triton import triton_backward, triton_backward_fold

        # The kernels index contiguous rows; a compiler may hand over other strides (a no-op copy otherwise).
        u, delta, B, C, dout = (t.contiguous() for t in (u, delta, B, C, dout))
        z = z.contiguous() if z is not None else None
        A32 = A.contiguous().float()
        saved = (u, delta, A32, B, C, D, z, delta_bias)
        if n_ones or n_zeros:
            grads = triton_backward_fold(saved, states.contiguous(), states1.contiguous(), tile, dout, delta_softplus,
                                         (n_ones, n_zeros), ypre.contiguous())
        else:
            grads = triton_backward(saved, states.contiguous(), tile, dout, delta_softplus)
        grads = [g.to(t.dtype) if g is not None else None for g, t in zip(grads, ins)]
    else:
        idx = [i for i, t in enumerate(ins) if t is not None]

        def fn(*present):
            full = list(ins)
            for i, t in zip(idx, present):
                full[i] = t
            return _chunked_unchecked(*full, delta_softplus, False)  # checked in the forward

        _, vjp = torch.func.vjp(fn, *[ins[i] for i in idx])
        grads = [None] * 8
        for i, g in zip(idx, vjp(dout)):
            grads[i] = g.clone(memory_format=torch.contiguous_format)  # never an input or a view of one
    return tuple(_absent(u) if g is None else g.contiguous() for g in grads)


@_scan_bwd.register_fake
def _scan_bwd_fake(dout, u, delta, A, B, C, D, z, delta_bias, states, states1, ypre, delta_softplus, impl, tile,
                   n_ones, n_zeros):
    return tuple(_absent(u) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (u, delta, A, B, C, D, z, delta_bias))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, impl, tile, n_ones, n_zeros = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[1], output[3], output[4])
    # the states and y before the gate are for the backward / decoding only
    ctx.mark_non_differentiable(output[1], output[2], output[3], output[4])
    ctx.flags = (delta_softplus, impl, tile, n_ones, n_zeros)
    ctx.present = tuple(t is not None for t in (D, z, delta_bias))


def _backward(ctx, dout, _dstates, _dlast, _dstates1, _dypre):
    u, delta, A, B, C, D, z, delta_bias, states, states1, ypre = ctx.saved_tensors
    grads = torch.ops.anybudget.ssm_scan_bwd(dout.contiguous(), u, delta, A, B, C, D, z, delta_bias, states, states1,
                                             ypre, *ctx.flags)
    du, ddelta, dA, dB, dC, dD, dz, dbias = grads
    has_d, has_z, has_bias = ctx.present
    return (du, ddelta, dA, dB, dC, dD if has_d else None, dz if has_z else None, dbias if has_bias else None,
            None, None, None, None, None)


_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                      z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                      return_last_state: bool = False, impl: str = "auto",
                      fixed_channels: tuple[int, int] | None = None):
    """The selective scan through the custom op: contract of ``scan.selective_scan_ref``.

    ``impl``: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"triton"`` or ``"torch"``. The last
    state has no gradient (it is for decoding), as with ``selective_scan_triton``. ``fixed_channels =
    (n_ones, n_zeros)`` (Triton): the polarized columns of A (exactly 0 first, -inf last: the caller's promise)
    folded into the kernels, as ``selective_scan_triton`` takes them; the torch scan runs every column as it is.
    """
    if impl not in SCAN_OP_IMPLS:
        raise ValueError(f"impl={impl!r}; allowed: {', '.join(SCAN_OP_IMPLS)}")
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if impl == "auto":
        impl = "triton" if u.is_cuda else "torch"
    tile, fixed = 1, (0, 0)
    if impl == "triton":
        from anybudget.ssm.scan_triton import ScanBlocks, _check_fold

        tile = ScanBlocks.fwd[1]
        if fixed_channels and any(fixed_channels):
            fixed = tuple(int(x) for x in fixed_channels)
            _check_fold(A.shape[1], fixed)
    u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
    z = z.contiguous() if z is not None else None
    out, _, last, _, _ = torch.ops.anybudget.ssm_scan_fwd(u, delta, A.contiguous(), B, C, D, z, delta_bias,
                                                          bool(delta_softplus), impl, tile, *fixed)
    return (out, last) if return_last_state else out
