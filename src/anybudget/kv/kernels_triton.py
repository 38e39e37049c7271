"""Triton kernels: attention output and per-key attention column sums without the n x n matrix.

Two passes (see the research notes, "Attention scores without the n x n matrix"):

1. ``_attn_fwd``: FlashAttention-2-style forward (online softmax over key blocks) that also
   writes each query row's log-sum-exp ``lse_i``. Grid: (query blocks, batch * query heads).
2. ``_colsum``: for a block of keys of one (batch, KV head), recompute
   ``p_ij = exp(q_i . k_j * scale - lse_i)`` over every query block and every query head of the GQA
   group, and sum over i in float32. Each program owns its keys, so no atomics; extra memory O(n).

For decoding (few queries against a long cache) the kernels of ``decode_triton.py`` replace both
passes (split-K and fused); ``attention.triton_attention_with_colsum`` chooses. The jit helpers
shared with them are in ``triton_blocks.py``.

Same contract as :func:`anybudget.kv.attention.attention_with_colsum_reference` (causal: query i
sits at key position ``Lk - Lq + i``; ``key_mask`` False keys are never attended and get 0; rows
with no visible key output zeros). Requires ``triton`` (``pip install 'anybudget[gpu]'``); on a
CPU it runs under Triton's interpreter (``TRITON_INTERPRET=1``) for tests.
"""

from __future__ import annotations

import torch

from anybudget.kv.contract import check_colsum_out
from anybudget.kv.triton_blocks import (
    _key_block,
    _key_mask_args,
    _scores,
    _softmax_step,
    tl,
    triton,
)

__all__ = ["attention_with_colsum_triton"]


@triton.jit
def _attn_fwd(
    Q, K, V, Out, Lse, KM,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, som, sod,
    skmb, skmh,
    Hq, G, Lq, Lk, scale,
    CAUSAL: tl.constexpr, HAS_KM: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Lq
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qpos = offs_m + (Lk - Lq)
    if CAUSAL:
        hi = tl.minimum(Lk, pid_m * BLOCK_M + BLOCK_M + (Lk - Lq))
    else:
        hi = Lk
    for start in range(0, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        s, v = _key_block(q, K, V, KM, b, hk, offs_n, offs_n < Lk, m_ok, qpos, scale,
                          skb, skh, skn, skd, svb, svh, svn, svd, skmb, skmh,
                          CAUSAL, HAS_KM, DOT_F32, BLOCK_D, D)
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, DOT_F32)
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    # lse = +inf for rows that see nothing: then exp(s - lse) = 0 in the column-sum pass.
    lse = tl.where(empty, float("inf"), tl.where(empty, 0.0, m_i) + tl.log(tl.where(empty, 1.0, l_i)))
    tl.store(Out + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
             out.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(Lse + bh * Lq + offs_m, lse, mask=m_ok)


@triton.jit
def _colsum(
    Q, K, Lse, KM, Col,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    skmb, skmh,
    Hq, Hkv, G, Lq, Lk, scale,
    CAUSAL: tl.constexpr, HAS_KM: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hkv
    hk = bh % Hkv
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < Lk
    d_ok = offs_d < D
    k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    keep = n_ok
    if HAS_KM:
        km = tl.load(KM + b * skmb + hk * skmh + offs_n, mask=n_ok, other=0)
        keep = keep & (km != 0)
    col = tl.zeros([BLOCK_N], dtype=tl.float32)
    # The first query that can see this key block: q_pos = i + Lk - Lq >= first key.
    if CAUSAL:
        lo = tl.maximum(0, pid_n * BLOCK_N - (Lk - Lq))
        lo = (lo // BLOCK_M) * BLOCK_M
    else:
        lo = 0
    for g in range(G):
        h = hk * G + g
        for start in range(lo, Lq, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            m_ok = offs_m < Lq
            q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                        mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            lse = tl.load(Lse + (b * Hq + h) * Lq + offs_m, mask=m_ok, other=float("inf"))
            s = _scores(q, k, scale, DOT_F32)
            vis = m_ok[:, None] & keep[None, :]
            if CAUSAL:
                vis = vis & (offs_n[None, :] <= (offs_m + (Lk - Lq))[:, None])
            p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
            col += tl.sum(p, 0)
    tl.store(Col + bh * Lk + offs_n, col, mask=n_ok)


def attention_with_colsum_triton(q, k, v, *, scale=None, causal=True, key_mask=None, block_m=None, block_n=None,
                                 decode_kernel=None, colsum_out=None):
    """The two-pass Triton kernels (same contract as ``attention_with_colsum``). Returns (out, colsum).

    Any number of queries. For a decoding step :func:`anybudget.kv.attention.triton_attention_with_colsum`
    picks the decode kernels instead; ``decode_kernel`` is accepted as False/None for callers of
    earlier releases. ``colsum_out`` (float32, (B, Hkv, Lk)): add the column sums into it and
    return it as the colsum.
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    if decode_kernel:
        raise ValueError("decode_kernel=True: the decode kernels are "
                         "anybudget.kv.decode_triton.decode_attention_with_colsum_triton "
                         "(anybudget.kv.attention.triton_attention_with_colsum picks one for you)")
    if colsum_out is not None:
        check_colsum_out(colsum_out, B, Hkv, Lk, q.device)
    scale = float(D**-0.5 if scale is None else scale)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BM = block_m or (16 if Lq <= 16 else 64)
    BN = block_n or 64
    out = torch.empty(B, Hq, Lq, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, Lq, dtype=torch.float32, device=q.device)
    col = torch.empty(B, Hkv, Lk, dtype=torch.float32, device=q.device)
    km, skmb, skmh, has_km = _key_mask_args(key_mask, lse)
    dot_f32 = q.dtype == torch.float32
    common = dict(CAUSAL=bool(causal), HAS_KM=has_km, DOT_F32=dot_f32, BLOCK_D=BLOCK_D, D=D)
    _attn_fwd[(triton.cdiv(Lq, BM), B * Hq)](
        q, k, v, out, lse, km,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        skmb, skmh, Hq, G, Lq, Lk, scale,
        BLOCK_M=BM, BLOCK_N=BN, **common,
    )
    _colsum[(triton.cdiv(Lk, BN), B * Hkv)](
        q, k, lse, km, col,
        *q.stride(), *k.stride(),
        skmb, skmh, Hq, Hkv, G, Lq, Lk, scale,
        BLOCK_M=BM, BLOCK_N=BN, **common,
    )
    if colsum_out is not None:
        colsum_out += col
        return out, colsum_out
    return out, col
