"""Triton building blocks shared by the prefill (``kernels_triton.py``) and decode
(``decode_triton.py``) kernels: scores, one online-softmax step, one masked key block, and the
key-mask launch arguments. Requires ``triton`` (``pip install 'anybudget[gpu]'``).
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - exercised where triton is absent
    raise ImportError("anybudget.kv needs triton for its GPU kernels: pip install 'anybudget[gpu]'") from e

import torch

__all__ = ["_key_block", "_key_mask_args", "_scores", "_softmax_step", "tl", "triton"]


@triton.jit
def _scores(q, k, scale, DOT_F32: tl.constexpr):
    """``q @ k^T * scale`` in float32 (IEEE float32 dots for float32 inputs). The cast keeps the
    online softmax's loop-carried state float32 where inductor passes ``scale`` as a float64 scalar
    (the ``triton_op`` path on an H100: "m_i ... re-assigned to fp64 in loop"); there the product
    is rounded from float64, so its last bit may differ from the eager Triton path's."""
    if DOT_F32:
        return (tl.dot(q, tl.trans(k), input_precision="ieee") * scale).to(tl.float32)
    return (tl.dot(q, tl.trans(k)) * scale).to(tl.float32)


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc, DOT_F32: tl.constexpr):
    """One online-softmax step over a key block (masked scores are -inf); rows that have seen no
    visible key keep m = -inf, l = 0, acc = 0. Returns the new (m, l, acc)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if DOT_F32:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _key_block(
    q, K, V, KM, b, hk, offs_n, n_ok, row_ok, qpos, scale,
    skb, skh, skn, skd, svb, svh, svn, svd, skmb, skmh,
    CAUSAL: tl.constexpr, HAS_KM: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
):
    """Scores of the query rows against keys ``offs_n`` of KV head ``hk``, -inf where a row may not
    see a key (outside the rows or keys, causal, key mask), and the matching value block."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    s = _scores(q, k, scale, DOT_F32)
    vis = row_ok[:, None] & n_ok[None, :]
    if CAUSAL:
        vis = vis & (offs_n[None, :] <= qpos[:, None])
    if HAS_KM:
        km = tl.load(KM + b * skmb + hk * skmh + offs_n, mask=n_ok, other=0)
        vis = vis & (km[None, :] != 0)
    s = tl.where(vis, s, float("-inf"))
    v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    return s, v


def _key_mask_args(key_mask, dummy, traced: bool = False):
    """(pointer, batch stride, head stride, present) of a (B, Lk) or (B, Hkv, Lk) key mask; with no
    mask, ``dummy`` stands in as a pointer that is never read. ``traced`` (launches recorded by
    ``wrap_triton`` into a compiled graph): an int8 copy (a small kernel in the graph) instead of
    a dtype view, since inductor has handed user kernels the base tensor of a dtype view
    (pytorch#163286, #136159) and a bool base is typed ``*i1``, which compiled kernels do not read
    byte by byte (pytorch#176353, AOTInductor)."""
    if key_mask is None:
        return dummy, 0, 0, False
    if traced:
        km = key_mask.to(torch.int8, copy=True)
    else:  # a bool mask is read in place as int8 (same bytes): no converted copy per call
        km = key_mask.view(torch.int8) if key_mask.dtype == torch.bool else key_mask.to(torch.int8)
    return km, km.stride(0), (0 if km.dim() == 2 else km.stride(1)), True
