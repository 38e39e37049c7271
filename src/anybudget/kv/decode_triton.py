"""Triton kernels for a decoding step: attention output and per-key column sums for few queries.

Flash-decoding style. Split-K (``_decode_split`` + ``_decode_combine``): the keys are cut into
splits so that the GPU is full even at batch 1; each program takes every query of one (batch, KV
head), i.e. the G query heads of the group times Lq rows, against one split, keeps a partial
softmax state and writes the raw scores (only ``B * Hq * Lq * Lk`` floats: small when Lq is). The
combine program merges the partial states into the output and the log-sum-exp, then turns the
stored scores into column sums, so K is read once instead of twice. Fused (``_decode_fused``): one
program per (batch, KV head) over all keys, one launch, for batches that fill the GPU on their own.

Same contract as :func:`anybudget.kv.attention.attention_with_colsum_reference`; the shared jit
helpers and the prefill kernels are in ``kernels_triton.py``.
"""

from __future__ import annotations

import functools

import torch

from anybudget.kv.contract import check_colsum_out as _check_colsum_out
from anybudget.kv.triton_blocks import _key_block, _key_mask_args, _softmax_step, tl, triton

__all__ = ["decode_attention_with_colsum_triton"]


@triton.jit
def _decode_rows(bk, Hkv, G, Lq, BLOCK_M: tl.constexpr):
    """The query rows of one (batch, KV head) program: the G heads of the group x Lq queries.
    Returns (b, hk, row mask, query head, query index, global row index)."""
    b = bk // Hkv
    hk = bk % Hkv
    R = G * Lq
    offs_r = tl.arange(0, BLOCK_M)
    r_ok = offs_r < R
    g = offs_r // Lq
    i = offs_r % Lq
    return b, hk, r_ok, hk * G + g, i, (bk * R + offs_r).to(tl.int64)


@triton.jit
def _decode_keys(
    Q, K, V, KM, S, b, hk, r_ok, h, i, row, lo, hi,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, skmb, skmh,
    Lq, Lk, scale,
    CAUSAL: tl.constexpr, HAS_KM: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
):
    """Online softmax of the program's rows over keys [lo, hi), storing the masked scores in S.
    Returns the partial state (m, l, acc)."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + h[:, None] * sqh + i[:, None] * sqm + offs_d[None, :] * sqd,
                mask=r_ok[:, None] & d_ok[None, :], other=0.0)
    qpos = i + (Lk - Lq)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        s, v = _key_block(q, K, V, KM, b, hk, offs_n, n_ok, r_ok, qpos, scale,
                          skb, skh, skn, skd, svb, svh, svn, svd, skmb, skmh,
                          CAUSAL, HAS_KM, DOT_F32, BLOCK_D, D)
        tl.store(S + row[:, None] * Lk + offs_n[None, :], s, mask=r_ok[:, None] & n_ok[None, :])
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, DOT_F32)
    return m_i, l_i, acc


@triton.jit
def _decode_colsum(S, Col, b, hk, r_ok, row, lse, start, scb, sch, Lk, ACCUM: tl.constexpr, BLOCK_C: tl.constexpr):
    """Column sums of keys [start, start + BLOCK_C) from the stored scores and the rows'
    log-sum-exp, written (or, with ACCUM, added) to Col[b, hk, :]."""
    offs_n = start + tl.arange(0, BLOCK_C)
    n_ok = offs_n < Lk
    sc = tl.load(S + row[:, None] * Lk + offs_n[None, :], mask=r_ok[:, None] & n_ok[None, :], other=float("-inf"))
    c = tl.sum(tl.exp(sc - lse[:, None]), 0)
    cp = Col + b * scb + hk * sch + offs_n
    if ACCUM:
        c += tl.load(cp, mask=n_ok, other=0.0)
    tl.store(cp, c, mask=n_ok)


@triton.jit
def _decode_split(
    Q, K, V, KM, S, Mp, Lp, Ap,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    skmb, skmh,
    Hkv, G, Lq, Lk, split_len, NS, scale,
    CAUSAL: tl.constexpr, HAS_KM: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
):
    sp = tl.program_id(0)
    b, hk, r_ok, h, i, row = _decode_rows(tl.program_id(1), Hkv, G, Lq, BLOCK_M)
    lo = sp * split_len
    m_i, l_i, acc = _decode_keys(
        Q, K, V, KM, S, b, hk, r_ok, h, i, row, lo, tl.minimum(Lk, lo + split_len),
        sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, skmb, skmh, Lq, Lk, scale,
        CAUSAL, HAS_KM, DOT_F32, BLOCK_M, BLOCK_N, BLOCK_D, D,
    )
    offs_d = tl.arange(0, BLOCK_D)
    tl.store(Mp + row * NS + sp, m_i, mask=r_ok)
    tl.store(Lp + row * NS + sp, l_i, mask=r_ok)
    tl.store(Ap + (row[:, None] * NS + sp) * BLOCK_D + offs_d[None, :], acc, mask=r_ok[:, None])


@triton.jit
def _decode_combine(
    S, Mp, Lp, Ap, Out, Col,
    sob, soh, som, sod,
    scb, sch,
    Hkv, G, Lq, Lk, NS,
    ACCUM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
):
    # Grid (key blocks of BLOCK_C, B * Hkv): every program merges the partial softmax states of its
    # rows (R x NS floats, cheap) into the log-sum-exp and turns its block of stored scores into
    # column sums; the programs of the first key block also write the output.
    pc = tl.program_id(0)
    b, hk, r_ok, h, i, row = _decode_rows(tl.program_id(1), Hkv, G, Lq, BLOCK_M)
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < NS
    ms = tl.load(Mp + row[:, None] * NS + offs_s[None, :], mask=r_ok[:, None] & s_ok[None, :], other=float("-inf"))
    m = tl.max(ms, 1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(ms - m_safe[:, None])
    l = tl.sum(w * tl.load(Lp + row[:, None] * NS + offs_s[None, :], mask=r_ok[:, None] & s_ok[None, :], other=0.0), 1)
    empty = l == 0.0
    if pc == 0:
        offs_d = tl.arange(0, BLOCK_D)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for sp in range(0, NS):
            wi = tl.exp(tl.load(Mp + row * NS + sp, mask=r_ok, other=float("-inf")) - m_safe)
            a = tl.load(Ap + (row[:, None] * NS + sp) * BLOCK_D + offs_d[None, :], mask=r_ok[:, None], other=0.0)
            acc += wi[:, None] * a
        out = acc / tl.where(empty, 1.0, l)[:, None]
        tl.store(Out + b * sob + h[:, None] * soh + i[:, None] * som + offs_d[None, :] * sod,
                 out.to(Out.dtype.element_ty), mask=r_ok[:, None] & (offs_d[None, :] < D))
    lse = tl.where(empty, float("inf"), m_safe + tl.log(tl.where(empty, 1.0, l)))
    _decode_colsum(S, Col, b, hk, r_ok, row, lse, pc * BLOCK_C, scb, sch, Lk, ACCUM, BLOCK_C)


@triton.jit
def _decode_fused(
    Q, K, V, KM, S, Out, Col,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    skmb, skmh,
    sob, soh, som, sod,
    scb, sch,
    Hkv, G, Lq, Lk, scale,
    CAUSAL: tl.constexpr, HAS_KM: tl.constexpr, DOT_F32: tl.constexpr, ACCUM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
):
    # One program per (batch, KV head) takes all keys: online softmax over the key blocks (scores
    # kept in S), then the output, then the column sums from S and the row log-sum-exp. One launch
    # instead of two: for batches that fill the GPU on their own, where a decoding step is bound
    # by the host's launches rather than by the GPU.
    b, hk, r_ok, h, i, row = _decode_rows(tl.program_id(0), Hkv, G, Lq, BLOCK_M)
    m_i, l_i, acc = _decode_keys(
        Q, K, V, KM, S, b, hk, r_ok, h, i, row, 0, Lk,
        sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, skmb, skmh, Lq, Lk, scale,
        CAUSAL, HAS_KM, DOT_F32, BLOCK_M, BLOCK_N, BLOCK_D, D,
    )
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(Out + b * sob + h[:, None] * soh + i[:, None] * som + offs_d[None, :] * sod,
             out.to(Out.dtype.element_ty), mask=r_ok[:, None] & d_ok[None, :])
    lse = tl.where(empty, float("inf"), tl.where(empty, 0.0, m_i) + tl.log(tl.where(empty, 1.0, l_i)))
    tl.debug_barrier()  # this program's stores to S are read back below by other threads of it
    for start in range(0, Lk, BLOCK_N):
        _decode_colsum(S, Col, b, hk, r_ok, row, lse, start, scb, sch, Lk, ACCUM, BLOCK_N)


@functools.lru_cache(maxsize=16)
def _num_sms_index(kind: str, index: int | None) -> int:
    if kind == "cuda":
        return torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device()).multi_processor_count
    return 8


def _num_sms(device) -> int:
    return _num_sms_index(device.type, device.index)


@functools.lru_cache(maxsize=256)
def _decode_plan(B, Hkv, G, Lq, Lk, D, block_n, num_splits, split_waves, sms):
    """(BLOCK_D, BLOCK_M, split_len, num_splits) of a decode launch; cached, as a decoding step
    repeats the same shapes in every layer (host time matters there: the step is launch-bound)."""
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_M = max(16, triton.next_power_of_2(G * Lq))
    nblocks = triton.cdiv(max(Lk, 1), block_n)
    if num_splits is None:
        waves = split_waves if split_waves is not None else (4 if G == 1 else 2)
        num_splits = triton.cdiv(int(waves * sms), B * Hkv)
    ns = max(1, min(int(num_splits), nblocks))
    split_len = triton.cdiv(nblocks, ns) * block_n
    ns = triton.cdiv(max(Lk, 1), split_len)
    return BLOCK_D, BLOCK_M, split_len, ns


def _colsum_target(colsum_out, B, Hkv, Lk, dev):
    """(tensor, batch stride, head stride, accumulate) where the column sums go."""
    if colsum_out is None:
        return None, 0, 0, False
    _check_colsum_out(colsum_out, B, Hkv, Lk, dev)
    return colsum_out, colsum_out.stride(0), colsum_out.stride(1), True


def decode_attention_with_colsum_triton(q, k, v, *, scale=None, causal=True, key_mask=None, block_n=64, num_splits=None,
                                        split_waves=None, num_warps=4, num_stages=3, fused=None, colsum_out=None,
                                        wrap=None):
    """Kernels for few queries (``G * Lq <= 128``): a decoding step. Same contract as
    :func:`attention_with_colsum_triton`.

    Two variants: split-K (``_decode_split`` + ``_decode_combine``: the keys cut into
    ``num_splits`` ranges, default enough programs for ``split_waves`` waves on the GPU's SMs) and
    fused (``_decode_fused``: one program per (batch, KV head) over all keys, one launch).
    ``fused=None`` takes the fused one when the batch alone gives at least half as many programs as
    the GPU has SMs, where a step is bound by host-side launches; split-K otherwise (batch 1 with a
    long cache needs the split to use the GPU). Results do not depend on the choice beyond float
    rounding. ``colsum_out``: a float32 (B, Hkv, Lk) tensor (unit last stride, e.g. a slice of a
    cache's score buffer) that the column sums are *added* to; it is returned as the colsum.
    Split-K defaults (block_n 64, 3 stages, 4 waves for MHA and 2 for GQA) are within 10% of the
    best of the 12-point sweep of ``benchmarks/kv/decode_kernel.py`` at every measured shape
    (``kv_decode_kernel.json``, H200).

    ``wrap``: ``torch.library.wrap_triton`` when called from a ``triton_op`` body
    (``slot_decode_op.py``), so that tracing records the launches as kernel nodes; then the shapes
    are made concrete ints (a traced body guards on them: the plan and the grids are host-side
    Python on shapes) and the workspace is one fresh buffer per part (no views of a shared buffer
    for functionalization to replay).
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if wrap is not None:
        B, Hq, Lq, D, Hkv, Lk = (int(x) for x in (B, Hq, Lq, D, Hkv, Lk))
    launch = wrap if wrap is not None else (lambda kernel: kernel)
    G = Hq // Hkv
    R = G * Lq
    if R > 128:
        raise ValueError(f"decode path needs (Hq / Hkv) * Lq <= 128, got {G} * {Lq} = {R}")
    scale = float(D**-0.5 if scale is None else scale)
    dev = q.device
    sms = _num_sms(dev)
    if fused is None:
        fused = 2 * B * Hkv >= sms
    BLOCK_D, BLOCK_M, split_len, ns = _decode_plan(B, Hkv, G, Lq, Lk, D, block_n, 1 if fused else num_splits,
                                                   split_waves, sms)
    BN = block_n
    out = torch.empty(B, Hq, Lq, v.shape[-1], dtype=q.dtype, device=dev)
    col, scb, sch, accum = _colsum_target(colsum_out, B, Hkv, Lk, dev)
    # One float32 workspace (one allocation instead of five): column sums, raw scores, partial
    # max / sum / accumulator per split; each part starts on a 128-byte boundary.
    rows, Lk1 = B * Hkv * R, max(Lk, 1)
    sizes = (0 if accum else B * Hkv * Lk, rows * Lk1) + ((0, 0, 0) if fused else (rows * ns, rows * ns, rows * ns * BLOCK_D))
    starts, n = [], 0
    for size in sizes:
        starts.append(n)
        n += -(-size // 32) * 32
    if wrap is None:
        ws = torch.empty(max(n, 1), dtype=torch.float32, device=dev)
        parts = [ws[a:a + size] for a, size in zip(starts, sizes)]
    else:
        parts = [torch.empty(size, dtype=torch.float32, device=dev) for size in sizes]
    if not accum:
        col = parts[0].view(B, Hkv, Lk)
        scb, sch = Hkv * Lk, Lk
    S = parts[1].view(rows, Lk1)
    km, skmb, skmh, has_km = _key_mask_args(key_mask, S, traced=wrap is not None)
    flags = {"CAUSAL": bool(causal), "HAS_KM": has_km, "DOT_F32": q.dtype == torch.float32}
    if fused:
        launch(_decode_fused)[(B * Hkv,)](
            q, k, v, km, S, out, col,
            *q.stride(), *k.stride(), *v.stride(), skmb, skmh, *out.stride(), scb, sch,
            Hkv, G, Lq, Lk, scale, ACCUM=accum, **flags,
            BLOCK_M=BLOCK_M, BLOCK_N=BN, BLOCK_D=BLOCK_D, D=D, num_warps=num_warps, num_stages=num_stages,
        )
        return out, col
    Mp, Lp, Ap = parts[2].view(rows, ns), parts[3].view(rows, ns), parts[4].view(rows, ns, BLOCK_D)
    launch(_decode_split)[(ns, B * Hkv)](
        q, k, v, km, S, Mp, Lp, Ap,
        *q.stride(), *k.stride(), *v.stride(),
        skmb, skmh, Hkv, G, Lq, Lk, split_len, ns, scale, **flags,
        BLOCK_M=BLOCK_M, BLOCK_N=BN, BLOCK_D=BLOCK_D, D=D, num_warps=num_warps, num_stages=num_stages,
    )
    BLOCK_C = 256
    launch(_decode_combine)[(triton.cdiv(max(Lk, 1), BLOCK_C), B * Hkv)](
        S, Mp, Lp, Ap, out, col,
        *out.stride(), scb, sch, Hkv, G, Lq, Lk, ns, ACCUM=accum,
        BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, BLOCK_S=max(2, triton.next_power_of_2(ns)), BLOCK_D=BLOCK_D, D=D,
    )
    return out, col
