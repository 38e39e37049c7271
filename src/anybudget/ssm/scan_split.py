"""Selective scan with the polarized channels in closed form (Wang et al. 2025, Sec. 5).

A one-polarized channel (A = 0, A-bar = 1) never forgets: its state is a running sum,
h_t = sum_{s<=t} dt_s u_s B_s, i.e. a ``cumsum`` over time. A zero-polarized channel (A = -inf,
A-bar = 0) keeps only the current token: h_t = dt_t u_t B_t. Neither needs a scan. So with
``n_ones`` leading columns of A equal to 0 and ``n_zeros`` trailing columns equal to -inf, the
recurrence over the remaining (learned) columns goes to a scan kernel and the fixed channels are
added in PyTorch (autograd gives their gradients):

    y_t = <C_t, h_t>_learned + sum_ones C_t cumsum(dt u B)_t + dt_t u_t sum_zeros B_t C_t

For the Triton scan this matters because its tiles pad the state axis to a power of two: 16
learned + 2 fixed states = 18 pads to 32, 16 stays 16, so the scan does about half the work.
``ScanBlocks.fold_fixed`` computes this same closed form inside the Triton kernels instead of the
PyTorch ops here (``scan_triton.triton_forward_fold``; this function stays its reference and the
path wherever the kernels cannot fold, ``scan_triton.fold_problem``).
Same contract and results as ``scan.selective_scan_ref`` (tested); the caller guarantees the
columns (``Mamba`` knows its layout ``[ones | learned | zeros]``), which cannot be checked
without reading A back from the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan_split"]


def selective_scan_split(scan_fn, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D=None, z=None,
                         delta_bias=None, delta_softplus: bool = False, return_last_state: bool = False,
                         n_ones: int = 0, n_zeros: int = 0):
    """``scan_fn`` (a scan with the reference contract) over A's learned columns, fixed ones in closed form.

    u, delta, z: (batch, d_inner, seq); A: (d_inner, n); B, C: (batch, n) x seq; the first
    ``n_ones`` columns of A must be exactly 0 and the last ``n_zeros`` exactly -inf.
    """
    from anybudget.ssm.scan import check_scan_inputs

    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    n = A.shape[1]
    lo, hi = n_ones, n - n_zeros
    if n_ones < 0 or n_zeros < 0 or hi <= lo:
        raise ValueError(f"n_ones={n_ones}, n_zeros={n_zeros} must be >= 0 and leave a learned column of d_state={n}")
    res = scan_fn(u, delta, A[:, lo:hi], B[:, lo:hi], C[:, lo:hi], None, None, delta_bias, delta_softplus,
                  return_last_state)
    y, last = res if return_last_state else (res, None)
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    y = y.to(ct)
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    dtu = dt * u.to(ct)  # (b, d, l)
    # A cast (bf16 inputs) is made contiguous: B, C are strided views of x_proj's output, and a
    # cast copy's "preserve" layout came out different in the compiled forward than in its traced
    # graph, which the compiled backward asserts on (compile+cudagraph+bf16 on the GPU: stride 9216 vs 18432).
    Bf, Cf = (t if t.dtype == ct else t.to(ct, memory_format=torch.contiguous_format) for t in (B, C))
    firsts, lasts = [], []
    # addcmul: one pass over (b, d, l) per term instead of a multiply and an add.
    for k in range(n_ones):
        h = torch.cumsum(dtu * Bf[:, k, None, :], dim=-1)  # the never-forgetting state, all steps
        y = torch.addcmul(y, h, Cf[:, k, None, :])
        firsts.append(h[..., -1])
    if n_zeros:
        y = torch.addcmul(y, dtu, (Bf[:, hi:] * Cf[:, hi:]).sum(1)[:, None, :])
        lasts = [dtu[..., -1] * Bf[:, k, None, -1] for k in range(hi, n)]
    if D is not None:
        y = torch.addcmul(y, u.to(ct), D.to(ct)[None, :, None])
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(u.dtype)
    if not return_last_state:
        return y
    parts = [torch.stack(firsts, -1).to(last.dtype)] if firsts else []
    parts.append(last)
    if lasts:
        parts.append(torch.stack(lasts, -1).to(last.dtype))
    return y, torch.cat(parts, dim=-1)
