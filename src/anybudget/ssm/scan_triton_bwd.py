"""Chunk-parallel Triton backward of the selective scan (``ScanBlocks.bwd_impl = "chunked"``).

Why the sequential backward (``scan_triton._bwd_kernel``) is slow: one program per (batch row,
``BLOCK_D`` channels) walks all ``seq / BLOCK_T`` tiles in reverse, so each program is a long
chain of dependent tiles; every tile adds its (d_state, BLOCK_T) share of dB and dC into global
memory atomically (``d_inner / BLOCK_D`` programs add into the same addresses: 64-way contention
at d_inner 256, ~134 M atomics at batch 16, seq 4096); B and C are re-read by every channel block;
and the carried adjoint and state are pulled out of the time axis with a cross-lane reduction per tile.

Here the adjoint carry across chunks is computed first, so every chunk is independent:

1. ``_chunk_adjoint_kernel``, one program per (batch, chunk, channel block): the adjoint a chunk
   hands to the one before it, from a zero adjoint at its end, in closed form
   ``X_c = sum_t exp(A * cumsum(dt)_t) C_t dy_t`` (products of ``a`` are ``exp(A * sum dt)``: no
   scan), and the chunk's total ``S_c = sum_t dt_t``.
2. ``_chunk_carry_kernel``, one program per (batch, block of (channel, state) pairs): the reverse
   recurrence over chunks ``E_{c-1} = X_c + exp(A S_c) E_c``, ``E_last = 0``, as a reverse scan over
   blocks of chunks (sequential in registers) with one carry between blocks. ``E_c = a_{t1+1}
   g_{t1+1}`` is the adjoint entering chunk c's last step t1 from the step after it.
   Chunks that do not line up with the forward's tiles get their chunk-start states the same way:
   step 1 also writes each chunk's end state from a zero start (``sum_t exp(A (S_c - cumsum(dt)_t))
   dt_t u_t B_t``) and step 2 carries them forward, ``H_{c+1} = Y_c + exp(A S_c) H_c``.
3. ``_chunk_grads_kernel``, one program per (batch, chunk[, channel split]), looping over channel
   blocks: recompute h from the chunk-start state (the forward's or step 2's), the reverse adjoint scan
   from ``E_c``, all gradients. dB and dC are summed over channels in registers ((state, block,
   time) accumulators, reduced once at the end) and stored once: no atomics. dA, dD and d(bias)
   are per-(batch, chunk) partials summed by one ``torch.sum``.

Tiles are (state, channel, time): states sit in each thread's registers, so every sum over states
(y, dL/d(dt), dL/du) is a register sum; warps split channels, lanes split time (whatever
``ScanBlocks.variant`` the forward uses: these kernels have one layout). Same contract and
rules as the sequential kernel (``A = -inf`` gives A-bar = 0 exactly, no division by a_t).

Bounds at the MQAR training step (``benchmarks/ssm/train_speed.py``: batch 128, d_inner 256, 16 learned
states, fp32, chunk 16 = forward tile; the mixture's mean seq is 388, so ~49.7k tokens and 204 M
(token, channel, state) elements per layer and step; H100 3.35 TB/s, ~67 TFLOP/s fp32, ~3.7 T exp/s):

============  =====================================================  ==========  ===============  =========
kernel        bytes per token (each tensor once)                      MB / layer  exps, FLOP / el  bound/layer
============  =====================================================  ==========  ===============  =========
forward (tm)  u, delta, z, out 4x1024 + B, C 128 + states 1024         261         1, ~4            0.078 ms
adjoint       delta, z, dout 3072 + C 64 + X 1024 + S 64                210         1, ~4            0.063 ms
carry         X 1024 + S 64 + E 1024                                    105         -, 2             0.031 ms
grads         u, delta, z, dout 4096 + B, C 128 + states, E 2048        522         2, ~25           0.156 ms
              + du, ddelta, dz 3072 + dB, dC 128 + dA partial 1024
============  =====================================================  ==========  ===============  =========

Every kernel is memory-bound on paper (exps: 0.055 ms per exp per element and layer, FLOPs < 0.08 ms),
~0.33 ms per layer in all, while the profiled depth-2 step (H100, tf16 tiles) spends 4.11 ms in grads
(2.05 ms per layer, 13x its bound), 1.30 ms in adjoint (10x), 0.57 ms in carry and 0.79 ms in the
forward (5x). The kernels are latency-bound, not traffic-bound: grads runs 128 x 24.3 chunks x 32
channel blocks ~ 100k block steps per layer on ~400 resident programs (registers: (16, 8, 16) tiles),
~250 dependent rounds of global reads, two cross-lane scans and stores, ~8 us each = 2 ms. Hence the
knobs: the adjoint's own channel block (``ScanBlocks.bwd_adjoint``), tiles and warps per shape
(``ScanBlocks.bwd_autotune``: :data:`GRADS_CONFIGS`, :data:`ADJOINT_CONFIGS`, chosen on the GPU by
``triton.autotune`` during the step's warm-up, never inside a CUDA-graph capture) and the reads of the
next channel block issued before this block's arithmetic (``ScanBlocks.bwd_prefetch``; the forward's
``fwd_prefetch`` does the same for the next tile).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from anybudget.ssm.scan_triton_common import (
    combine,
    discretize,
    load_a_matrix,
    load_dt,
    load_vec,
    silu_and_grad,
    softplus,
    softplus_grad,
)

__all__ = ["ADJOINT_CONFIGS", "GRADS_CONFIGS", "chunked_backward"]


@triton.jit
def _chunk_adjoint_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, X_ptr, S_ptr, Y_ptr,
    n_inner, n_state, seq, n_chunks,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STATES: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_b, pid_c, pid_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = pid_c * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d, mask_n, mask_t = offs_d < n_inner, offs_n < n_state, offs_t < seq
    A_safe, a_zero = load_a_matrix(A_ptr, offs_n[:, None], offs_d[None, :], mask_n[:, None] & mask_d[None, :], n_state)
    bias = load_vec(bias_ptr, offs_d, mask_d, HAS_BIAS)
    row = pid_b * n_inner * seq + offs_d[:, None] * seq + offs_t[None, :]
    m_dt = mask_d[:, None] & mask_t[None, :]
    dt, _ = load_dt(delta_ptr + row, m_dt, bias[:, None], HAS_BIAS, SOFTPLUS)
    dt = tl.where(m_dt, dt, 0.0)
    dy = tl.load(dout_ptr + row, mask=m_dt, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row, mask=m_dt, other=0.0).to(tl.float32)
        s, _ = silu_and_grad(z)
        dy = dy * s
    Ct = tl.load(C_ptr + pid_b * n_state * seq + offs_n[:, None] * seq + offs_t[None, :],
                 mask=mask_n[:, None] & mask_t[None, :], other=0.0).to(tl.float32)
    cs = tl.cumsum(dt, axis=1)  # (D, T): sum of dt from the chunk's first step to t
    w = discretize(A_safe[:, :, None] * cs[None, :, :], a_zero[:, :, None])  # prod_{k <= t} a_k, (N, D, T)
    X = tl.sum(w * Ct[:, None, :] * dy[None, :, :], axis=2)  # (N, D)
    base = (pid_b * n_chunks + pid_c) * n_inner
    dn = (base + offs_d[None, :]) * n_state + offs_n[:, None]
    m_nd = mask_n[:, None] & mask_d[None, :]
    tl.store(X_ptr + dn, X, mask=m_nd)
    S = tl.sum(dt, axis=1)
    tl.store(S_ptr + base + offs_d, S, mask=mask_d)
    if STATES:  # the chunk's end state from a zero start: sum_t prod_{t < k <= end} a_k dt_t u_t B_t
        u = tl.load(u_ptr + row, mask=m_dt, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + pid_b * n_state * seq + offs_n[:, None] * seq + offs_t[None, :],
                     mask=mask_n[:, None] & mask_t[None, :], other=0.0).to(tl.float32)
        last = offs_t == tl.minimum(pid_c * BLOCK_T + BLOCK_T, seq) - 1  # empty product: 1, also for A = -inf
        v = discretize(A_safe[:, :, None] * (S[:, None] - cs)[None, :, :], a_zero[:, :, None] & ~last[None, None, :])
        tl.store(Y_ptr + dn, tl.sum(v * Bt[:, None, :] * (dt * u)[None, :, :], axis=2), mask=m_nd)


@triton.jit
def _chunk_carry_kernel(
    A_ptr, X_ptr, S_ptr, E_ptr, n_inner, n_state, n_chunks,
    REVERSE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, N_BLOCKS: tl.constexpr,
    X1_ptr=None, E1_ptr=None, ONE: tl.constexpr = False, JC: tl.constexpr = False,
):
    """REVERSE: E_{c-1} = X_c + P_c E_c from E_last = 0 (the adjoint); else H_{c+1} = X_c + P_c H_c from
    H_0 = 0 (chunk-start states), with P_c = exp(A S_c). ``N_BLOCKS = cdiv(n_chunks, BLOCK_C)``.
    ``ONE`` (the polarized channels folded in): the programs past the (channel, state) blocks carry the
    one-polarized channel's ``X1 -> E1`` ((batch, chunks, d_inner), A = 0: P = 1) in the same launch, side by
    side with the others instead of one more chain of dependent chunk blocks after them.

    Loop trip counts are constexprs, never run-time tensors: Triton 3.6's interpreter turns a
    tensor bound into an int with ``int(array of shape (1,))``, a TypeError under NumPy >= 2.4."""
    pid_b, pid_j = tl.program_id(0), tl.program_id(1)
    if ONE:
        n_jb = tl.cdiv(n_inner * n_state, BLOCK_J)
        if pid_j >= n_jb:
            _carry_any(A_ptr, X1_ptr, S_ptr, E1_ptr, pid_b, pid_j - n_jb, n_inner, 1, n_chunks, REVERSE, BLOCK_C,
                       BLOCK_J, N_BLOCKS, True, JC)
        else:
            _carry_any(A_ptr, X_ptr, S_ptr, E_ptr, pid_b, pid_j, n_inner, n_state, n_chunks, REVERSE, BLOCK_C,
                       BLOCK_J, N_BLOCKS, False, JC)
    else:
        _carry_any(A_ptr, X_ptr, S_ptr, E_ptr, pid_b, pid_j, n_inner, n_state, n_chunks, REVERSE, BLOCK_C, BLOCK_J,
                   N_BLOCKS, False, JC)


@triton.jit
def _carry_any(A_ptr, X_ptr, S_ptr, E_ptr, pid_b, pid_j, n_inner, n_state, n_chunks, REVERSE: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, N_BLOCKS: tl.constexpr, A_ZERO: tl.constexpr,
               JC: tl.constexpr):
    if JC:
        _carry_run_jc(A_ptr, X_ptr, S_ptr, E_ptr, pid_b, pid_j, n_inner, n_state, n_chunks, REVERSE, BLOCK_C, BLOCK_J,
                      N_BLOCKS, A_ZERO)
    else:
        _carry_run(A_ptr, X_ptr, S_ptr, E_ptr, pid_b, pid_j, n_inner, n_state, n_chunks, REVERSE, BLOCK_C, BLOCK_J,
                   N_BLOCKS, A_ZERO)


@triton.jit
def _carry_start(A_ptr, E_ptr, pid_b, pid_j, n_inner, n_state, n_chunks, REVERSE: tl.constexpr, BLOCK_J: tl.constexpr,
                 A_ZERO: tl.constexpr):
    """Both carry tilings' start: block ``pid_j`` of the flat (channel, state) index (A's layout), its A (A_ZERO: 0,
    not read), the zero carry stored at the scan's first chunk; returns the offsets, A, the carry and the shift from
    a chunk to the one its value enters."""
    n_j = n_inner * n_state
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_j = offs_j < n_j
    d_of_j = offs_j // n_state
    if A_ZERO:
        A_safe = tl.zeros((BLOCK_J,), dtype=tl.float32)
        a_zero = A_safe != A_safe
    else:
        A_safe, a_zero = load_a_matrix(A_ptr, 0, offs_j, mask_j, 1)
    carry = tl.zeros((BLOCK_J,), dtype=tl.float32)  # the value entering the next block
    if REVERSE:
        tl.store(E_ptr + (pid_b * n_chunks + n_chunks - 1) * n_j + offs_j, carry, mask=mask_j)
        shift = -1
    else:
        tl.store(E_ptr + pid_b * n_chunks * n_j + offs_j, carry, mask=mask_j)
        shift = 1
    return n_j, offs_j, mask_j, d_of_j, A_safe, a_zero, carry, shift


@triton.jit
def _carry_run(A_ptr, X_ptr, S_ptr, E_ptr, pid_b, pid_j, n_inner, n_state, n_chunks, REVERSE: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, N_BLOCKS: tl.constexpr, A_ZERO: tl.constexpr):
    # One program's carry over block ``pid_j`` of the flat (channel, state) index; A_ZERO: A = 0 (not read).
    n_j, offs_j, mask_j, d_of_j, A_safe, a_zero, carry, shift = _carry_start(A_ptr, E_ptr, pid_b, pid_j, n_inner,
                                                                             n_state, n_chunks, REVERSE, BLOCK_J,
                                                                             A_ZERO)
    c_loc = tl.arange(0, BLOCK_C)
    for i in range(N_BLOCKS):
        if REVERSE:
            offs_c = (N_BLOCKS - 1 - i) * BLOCK_C + c_loc
        else:
            offs_c = i * BLOCK_C + c_loc
        m = (offs_c < n_chunks)[:, None] & mask_j[None, :]
        X = tl.load(X_ptr + (pid_b * n_chunks + offs_c)[:, None] * n_j + offs_j[None, :], mask=m, other=0.0)
        S = tl.load(S_ptr + (pid_b * n_chunks + offs_c)[:, None] * n_inner + d_of_j[None, :], mask=m, other=0.0)
        P = discretize(A_safe[None, :] * S, a_zero[None, :])
        P = tl.where(m, P, 1.0)  # chunks past the end: the identity (P = 1, X = 0)
        p_cum, r = tl.associative_scan((P, X), axis=0, combine_fn=combine, reverse=REVERSE)
        r = r + p_cum * carry[None, :]  # reverse: r_c = E_{c-1}; forward: r_c = H_{c+1}
        dst = offs_c + shift
        tl.store(E_ptr + (pid_b * n_chunks + dst)[:, None] * n_j + offs_j[None, :], r,
                 mask=m & ((dst >= 0) & (dst < n_chunks))[:, None])
        pick = c_loc == 0 if REVERSE else c_loc == BLOCK_C - 1
        carry = tl.sum(tl.where(pick[:, None], r, 0.0), axis=0)


@triton.jit
def _carry_run_jc(A_ptr, X_ptr, S_ptr, E_ptr, pid_b, pid_j, n_inner, n_state, n_chunks, REVERSE: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, N_BLOCKS: tl.constexpr, A_ZERO: tl.constexpr):
    # _carry_run on (j, chunk) tiles, chunks walked in the scan's order by their addresses (the reverse carry is a
    # forward scan over chunks read last to first): Triton 3.6 keeps each thread's chunks in its registers, so the
    # scan over a block of chunks is a register chain (no lane exchanges at sm_90 at CARRY_TILES, against 1664 for
    # the (chunk, j) tiles: ssm_scan_regs_runs/triton36_s24.json; 0.15 -> 0.07 ms in the preset's scan on an H100).
    n_j, offs_j, mask_j, d_of_j, A_safe, a_zero, carry, shift = _carry_start(A_ptr, E_ptr, pid_b, pid_j, n_inner,
                                                                             n_state, n_chunks, REVERSE, BLOCK_J,
                                                                             A_ZERO)
    c_loc = tl.arange(0, BLOCK_C)
    for i in range(N_BLOCKS):
        if REVERSE:  # the scan's order: chunk n_chunks - 1 first
            offs_c = n_chunks - 1 - (i * BLOCK_C + c_loc)
        else:
            offs_c = i * BLOCK_C + c_loc
        m = mask_j[:, None] & ((offs_c >= 0) & (offs_c < n_chunks))[None, :]
        X = tl.load(X_ptr + (pid_b * n_chunks + offs_c)[None, :] * n_j + offs_j[:, None], mask=m, other=0.0)
        S = tl.load(S_ptr + (pid_b * n_chunks + offs_c)[None, :] * n_inner + d_of_j[:, None], mask=m, other=0.0)
        P = discretize(A_safe[:, None] * S, a_zero[:, None])
        P = tl.where(m, P, 1.0)
        p_cum, r = tl.associative_scan((P, X), axis=1, combine_fn=combine)
        r = r + p_cum * carry[:, None]
        dst = offs_c + shift
        tl.store(E_ptr + (pid_b * n_chunks + dst)[None, :] * n_j + offs_j[:, None], r,
                 mask=m & ((dst >= 0) & (dst < n_chunks))[None, :])
        carry = tl.sum(tl.where((c_loc == BLOCK_C - 1)[None, :], r, 0.0), axis=1)


@triton.jit
def _grads_load(u_ptr, delta_ptr, A_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, E_ptr, k, pid_b, pid_c, part,
                n_inner, n_state, seq, n_state_tiles, tile_ratio, offs_n, mask_n, offs_t, mask_t, mask_t1,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Every global read of channel block ``k`` (raw: no arithmetic, so a prefetch holds few registers)."""
    offs_d = k * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < n_inner
    m_nd = mask_n[:, None] & mask_d[None, :]
    m_dt = mask_d[:, None] & mask_t[None, :]
    A = tl.load(A_ptr + offs_d[None, :] * n_state + offs_n[:, None], mask=m_nd, other=0.0).to(tl.float32)
    bias = load_vec(bias_ptr, offs_d, mask_d, HAS_BIAS)
    Dv = load_vec(D_ptr, offs_d, mask_d, HAS_D)
    dn = offs_d[None, :] * n_state + offs_n[:, None]
    h0 = tl.load(states_ptr + (pid_b * n_state_tiles + pid_c * tile_ratio) * n_inner * n_state + dn,
                 mask=m_nd, other=0.0)
    E = tl.load(E_ptr + part * n_state + dn, mask=m_nd, other=0.0)
    row = pid_b * n_inner * seq + offs_d[:, None] * seq + offs_t[None, :]
    u = tl.load(u_ptr + row, mask=m_dt, other=0.0).to(tl.float32)
    draw = tl.load(delta_ptr + row, mask=m_dt, other=0.0).to(tl.float32)
    draw1 = tl.load(delta_ptr + row + 1, mask=mask_d[:, None] & mask_t1[None, :], other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + row, mask=m_dt, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row, mask=m_dt, other=0.0).to(tl.float32)
    else:
        z = tl.zeros_like(u)
    return A, bias, Dv, h0, E, u, draw, draw1, dout, z


@triton.jit
def _grads_block(k, A, bias, Dv, h0, E, u, draw, draw1, dout, z, Bt, Ct, dB3, dC3,
                 du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, pid_b, part, n_inner, n_state, seq,
                 offs_n, mask_n, offs_t, mask_t, is_last,
                 HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """Channel block ``k`` of one chunk from its loads (``_grads_load``): stores du, ddelta, dz and the
    dA / dD / d(bias) partials, returns the dB / dC accumulators with this block added."""
    offs_d = k * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < n_inner
    m_nd = mask_n[:, None] & mask_d[None, :]
    m_dt = mask_d[:, None] & mask_t[None, :]
    a_zero = A == float("-inf")  # load_a_matrix's rule, on the prefetched A
    A3, z3 = tl.where(a_zero, 0.0, A)[:, :, None], a_zero[:, :, None]
    dn = offs_d[None, :] * n_state + offs_n[:, None]
    row = pid_b * n_inner * seq + offs_d[:, None] * seq + offs_t[None, :]
    dtr, dtr1 = draw, draw1  # load_dt's arithmetic after the raw loads
    if HAS_BIAS:
        dtr, dtr1 = dtr + bias[:, None], dtr1 + bias[:, None]
    dt, dt1 = dtr, dtr1
    if SOFTPLUS:
        dt, dt1 = softplus(dtr), softplus(dtr1)
    a = discretize(A3 * dt[None, :, :], z3)
    a = tl.where(mask_t[None, None, :], a, 1.0)  # past the end: carry the state unchanged
    dtu = dt * u
    b = dtu[None, :, :] * Bt[:, None, :]
    a_cum, h_loc = tl.associative_scan((a, b), axis=2, combine_fn=combine)
    hs = h_loc + a_cum * h0[:, :, None]
    dy = dout
    if HAS_Z:
        y = tl.sum(hs * Ct[:, None, :], axis=0)
        if HAS_D:
            y += Dv[:, None] * u
        s, ds = silu_and_grad(z)
        tl.store(dz_ptr + row, (dout * y * ds).to(dz_ptr.dtype.element_ty), mask=m_dt)
        dy = dout * s
    a1 = discretize(A3 * dt1[None, :, :], z3)
    a1 = tl.where(is_last, 1.0, a1)
    c = Ct[:, None, :] * dy[None, :, :]
    g_cum, g_loc = tl.associative_scan((a1, c), axis=2, combine_fn=combine, reverse=True)
    g = g_loc + g_cum * E[:, :, None]
    gq = g * (hs - b)  # g_t a_t h_{t-1}: no division by a_t
    gB = tl.sum(g * Bt[:, None, :], axis=0)  # (D, T), a register sum over states
    ddt = gB * u + tl.sum(gq * A3, axis=0)
    tl.store(dA_ptr + part * n_state + dn, tl.sum(gq * dt[None, :, :], axis=2), mask=m_nd)
    du = gB * dt
    if HAS_D:
        du += Dv[:, None] * dy
        tl.store(dD_ptr + part + offs_d, tl.sum(tl.where(m_dt, dy * u, 0.0), axis=1), mask=mask_d)
    if SOFTPLUS:
        ddt = ddt * softplus_grad(dtr)
    ddt = tl.where(m_dt, ddt, 0.0)
    if HAS_BIAS:
        tl.store(dbias_ptr + part + offs_d, tl.sum(ddt, axis=1), mask=mask_d)
    tl.store(du_ptr + row, du.to(du_ptr.dtype.element_ty), mask=m_dt)
    tl.store(ddelta_ptr + row, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_dt)
    return dB3 + g * dtu[None, :, :], dC3 + hs * dy[None, :, :]


@triton.jit
def _chunk_grads_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, E_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    n_inner, n_state, seq, n_chunks, n_state_tiles, tile_ratio, d_split,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, N_ITERS: tl.constexpr,
    PREFETCH: tl.constexpr = False,
):
    # Channel blocks k = pid_s, pid_s + d_split, ...: N_ITERS = cdiv(n_dblocks, d_split) (a constexpr bound,
    # see _chunk_carry_kernel; set by the _grads heuristic from BLOCK_D, so a tuned BLOCK_D gets its own);
    # a block past the end is fully masked (u = dout = h0 = E = 0) and adds nothing.
    # PREFETCH: block k + d_split's loads are issued before block k's arithmetic (a hand-made two-stage
    # pipeline: the loads' latency hides behind the two scans; the last prefetch is fully masked, no traffic).
    pid_b, pid_c, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = tl.arange(0, BLOCK_N)
    t_loc = tl.arange(0, BLOCK_T)
    offs_t = pid_c * BLOCK_T + t_loc
    mask_n, mask_t = offs_n < n_state, offs_t < seq
    # a_{t+1} inside the chunk; the chunk's last step takes E_c, which already holds a_{t1+1}.
    mask_t1 = (offs_t + 1 < seq) & (t_loc < BLOCK_T - 1)
    is_last = (t_loc == BLOCK_T - 1)[None, None, :]
    m_nt = mask_n[:, None] & mask_t[None, :]
    rowB = pid_b * n_state * seq + offs_n[:, None] * seq + offs_t[None, :]
    Bt = tl.load(B_ptr + rowB, mask=m_nt, other=0.0).to(tl.float32)  # (N, T), shared by all channel blocks
    Ct = tl.load(C_ptr + rowB, mask=m_nt, other=0.0).to(tl.float32)
    dB3 = tl.zeros((BLOCK_N, BLOCK_D, BLOCK_T), dtype=tl.float32)
    dC3 = tl.zeros((BLOCK_N, BLOCK_D, BLOCK_T), dtype=tl.float32)
    part = (pid_b * n_chunks + pid_c) * n_inner  # row of the per-(batch, chunk) partials
    if PREFETCH:
        A, bias, Dv, h0, E, u, draw, draw1, dout, z = _grads_load(
            u_ptr, delta_ptr, A_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, E_ptr, pid_s, pid_b, pid_c, part,
            n_inner, n_state, seq, n_state_tiles, tile_ratio, offs_n, mask_n, offs_t, mask_t, mask_t1,
            HAS_D, HAS_Z, HAS_BIAS, BLOCK_D)
        for i in range(N_ITERS):
            k = pid_s + i * d_split
            nA, nbias, nDv, nh0, nE, nu, ndraw, ndraw1, ndout, nz = _grads_load(
                u_ptr, delta_ptr, A_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, E_ptr, k + d_split, pid_b,
                pid_c, part, n_inner, n_state, seq, n_state_tiles, tile_ratio, offs_n, mask_n, offs_t, mask_t,
                mask_t1, HAS_D, HAS_Z, HAS_BIAS, BLOCK_D)
            dB3, dC3 = _grads_block(
                k, A, bias, Dv, h0, E, u, draw, draw1, dout, z, Bt, Ct, dB3, dC3, du_ptr, ddelta_ptr, dz_ptr,
                dA_ptr, dD_ptr, dbias_ptr, pid_b, part, n_inner, n_state, seq, offs_n, mask_n, offs_t, mask_t,
                is_last, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BLOCK_D)
            A, bias, Dv, h0, E, u, draw, draw1, dout, z = nA, nbias, nDv, nh0, nE, nu, ndraw, ndraw1, ndout, nz
    else:
        for i in range(N_ITERS):
            k = pid_s + i * d_split
            A, bias, Dv, h0, E, u, draw, draw1, dout, z = _grads_load(
                u_ptr, delta_ptr, A_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, E_ptr, k, pid_b, pid_c, part,
                n_inner, n_state, seq, n_state_tiles, tile_ratio, offs_n, mask_n, offs_t, mask_t, mask_t1,
                HAS_D, HAS_Z, HAS_BIAS, BLOCK_D)
            dB3, dC3 = _grads_block(
                k, A, bias, Dv, h0, E, u, draw, draw1, dout, z, Bt, Ct, dB3, dC3, du_ptr, ddelta_ptr, dz_ptr,
                dA_ptr, dD_ptr, dbias_ptr, pid_b, part, n_inner, n_state, seq, offs_n, mask_n, offs_t, mask_t,
                is_last, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BLOCK_D)
    out = pid_s * tl.num_programs(0) * n_state * seq + rowB
    tl.store(dB_ptr + out, tl.sum(dB3, axis=1).to(dB_ptr.dtype.element_ty), mask=m_nt)
    tl.store(dC_ptr + out, tl.sum(dC3, axis=1).to(dC_ptr.dtype.element_ty), mask=m_nt)


# N_ITERS from BLOCK_D (a heuristic, so a tuned BLOCK_D loops the right number of times).
_grads = triton.heuristics(
    {"N_ITERS": lambda a: triton.cdiv(triton.cdiv(a["n_inner"], a["BLOCK_D"]), a["d_split"])})(_chunk_grads_kernel)

# (BLOCK_D, num_warps[, maxnreg]) the autotuned backward tries; the chunk (BLOCK_T) stays ScanBlocks.bwd_chunked's,
# since the chunk count sizes X, E and the partials and must equal the forward's tile for its states.
# Each config is checked against the reference under the interpreter (tests/ssm/triton_interpret_check.py).
# Registers at sm_90 (fp32, 16 states, chunk 16; benchmarks/ssm/scan_regs.py, ssm_scan_regs.json): grads (8, 4)
# takes 228 a thread unbounded, 2 programs an SM; capped at 168 (maxnreg) it fits without spilling and 3 fit;
# (8, 8) 143 -> 128 (2 programs of 8 warps instead of 1), (4, 2) 235 -> 168 (6 instead of 4), no spills.
# (8, 2) and (16, 4) spill unbounded, (16, 8) at 128: left out.
GRADS_CONFIGS = ((4, 2, None), (4, 2, 168), (4, 4, None), (8, 4, None), (8, 4, 168), (8, 8, None), (8, 8, 128),
                 (16, 8, None))
ADJOINT_CONFIGS = ((8, 4), (16, 2), (16, 4), (32, 4), (32, 8), (64, 8))
# The chunked backward's carry kernel: (BLOCK_C chunks, BLOCK_J (channel, state) pairs, num_warps, JC); JC: (j, chunk)
# tiles (_carry_run_jc). Fastest measured alone on an H100 (ssm_carry_speed.json: 99 us against 171 for the
# (chunk, j) tiles (16, 256, 4) at 16 x 256 chunks x 4096 pairs).
CARRY_TILES = (8, 32, 1, True)
_TUNE_KEY = ["n_inner", "n_state", "seq", "n_chunks"]


def _configs(entries):
    return [triton.Config({"BLOCK_D": e[0]}, num_warps=e[1], maxnreg=e[2] if len(e) > 2 else None) for e in entries]


# triton.autotune benchmarks every config once per new key (shape), then launches the best: only
# stores, so re-running a config is harmless. It synchronises the device, which a CUDA-graph capture
# forbids: FastStep's warm-up steps before each capture meet every shape first.
_GRADS_TUNED = triton.autotune(_configs(GRADS_CONFIGS), key=[*_TUNE_KEY, "d_split"])(_grads)
_ADJOINT_TUNED = triton.autotune(_configs(ADJOINT_CONFIGS), key=_TUNE_KEY)(_chunk_adjoint_kernel)


def _d_split(bsz: int, n_chunks: int, n_dblocks: int, target: int) -> int:
    """Channel split: enough programs (``target``) when batch x chunks alone are few."""
    split = 1
    while bsz * n_chunks * split < target and split * 2 <= n_dblocks:
        split *= 2
    return split


def chunked_backward(ctx_tensors, states, fwd_tile, dout, delta_softplus, tiles, *, block_n, target_programs=512,
                     adjoint=None, autotune=False, prefetch=False, maxnreg=None, time_major=False, gluon=False,
                     fixed=None):
    """Gradients of ``selective_scan_triton`` by the chunk-parallel backward (see the module docstring).

    ``states``: the forward's tile-start states ``(batch, seq / fwd_tile, d_inner, d_state)``
    float32, used when the chunk (``tiles[1]``) is a multiple of ``fwd_tile``; otherwise (or with
    ``states=None``) the chunk-start states are rebuilt here in closed form (each chunk's end state
    from a zero start, then the same carry forward). ``tiles = (BLOCK_D, BLOCK_T, num_warps)``;
    ``adjoint = (BLOCK_D, num_warps)`` of the adjoint kernel alone (None: ``tiles``'); ``autotune``
    (CUDA only): the adjoint's and the grads kernel's (BLOCK_D, num_warps) chosen per shape among
    :data:`ADJOINT_CONFIGS` / :data:`GRADS_CONFIGS` by ``triton.autotune`` (``tiles`` keeps the chunk);
    ``prefetch``: the grads kernel loads channel block k + 1 before computing block k (same results);
    ``maxnreg``: a cap on the grads kernel's registers a thread (ptxas; None: its own choice), for more
    programs an SM (ignored with ``autotune``, whose configs carry their own); ``time_major``: the adjoint and
    grads kernels on (time, channel, state) tiles (``scan_triton_bwd_tm``: the scans and sums over a chunk's time
    steps in registers, no lane exchanges; same results; ``prefetch`` ignored); with ``autotune``, the tuner picks
    per shape among both layouts' configs (:data:`ADJOINT_CONFIGS`, :data:`GRADS_CONFIGS` and
    ``scan_triton_bwd_tm.GRADS_TM_CONFIGS``); ``gluon`` (CUDA only): the grads kernel written in Gluon with its
    layouts stated (``scan_gluon_bwd``: fewer lane exchanges and exps; same results; ``tiles`` must satisfy
    ``scan_gluon_bwd.check_tiles``; ``autotune`` then applies to the adjoint only; ``prefetch`` True: the next
    block's reads in registers, ``"async"``: as cp.async copies into shared memory, fp32 inputs, else as True).
    ``fixed = (B1, C1, Q, states1, ypre)`` (``ScanBlocks.fold_fixed``; ``time_major`` only, no ``autotune``, chunks a
    multiple of the forward's tiles): the polarized channels folded into the kernels, A, B and C holding the learned
    states only (B and C may be column slices of wider tensors, rows contiguous: read in place at their batch
    strides, B1 and C1 too); ``B1, C1``: the one-polarized channel's rows (batch, seq) and ``states1`` its
    tile-start states (batch, tiles, d_inner) from the forward, or None without one; ``Q = sum_zeros B C`` (batch, seq) or None without
    zero-polarized channels; ``ypre``: the forward's y before the gate (with z; else None): the gate's backward then
    runs in the adjoint kernel (``GATE``), the grads kernel takes dy = dout silu(z) and reads neither z nor y.
    Returns ``(du, ddelta, dA, dB, dC, dD, dz, dbias)`` in the inputs' dtypes (None where absent); with ``fixed``
    also ``(dB1, dC1, P)`` float32 (batch, seq) (None where absent), ``P = sum_d dy dt u`` (the zero channels'
    dB_k = C_k P, dC_k = B_k P).
    """
    u, delta, A, B, C, D, z, delta_bias = ctx_tensors
    block_d, block_t, warps = tiles
    adj_d, adj_warps = adjoint if adjoint is not None else (block_d, warps)
    own_states = states is None or block_t % fwd_tile != 0
    one = fixed is not None and fixed[0] is not None
    zero = fixed is not None and fixed[2] is not None
    gate = fixed is not None and z is not None and fixed[4] is not None
    if fixed is not None and (own_states or autotune or not time_major):
        raise ValueError(f"fixed channels folded in need time_major=True, autotune=False and chunks a multiple of the "
                         f"forward's tiles; got time_major={time_major}, autotune={autotune}, chunk {block_t} over "
                         f"forward tile {fwd_tile}")
    bsz, n_inner, seq = u.shape
    n_state = A.shape[1]
    n_chunks = math.ceil(seq / block_t)
    dev, f32 = u.device, torch.float32
    flags = {"HAS_Z": z is not None, "HAS_BIAS": delta_bias is not None, "SOFTPLUS": bool(delta_softplus)}
    dummy = u
    zz = z if z is not None else dummy
    bb = delta_bias if delta_bias is not None else dummy
    X = torch.empty(bsz, n_chunks, n_inner, n_state, device=dev, dtype=f32)
    S = torch.empty(bsz, n_chunks, n_inner, device=dev, dtype=f32)
    Y = torch.empty_like(X) if own_states else X
    adj_args = (u, delta, A, B, C, zz, bb, dout, X, S, Y, n_inner, n_state, seq, n_chunks)
    adj_tuned, adj_plain = _ADJOINT_TUNED, _chunk_adjoint_kernel
    if time_major:
        from anybudget.ssm import scan_triton_bwd_tm as tm

        adj_tuned, adj_plain = tm.adjoint_any_tuned, tm.adjoint_tm
    if autotune:
        adj_tuned[lambda m: (bsz, n_chunks, triton.cdiv(n_inner, m["BLOCK_D"]))](
            *adj_args, STATES=own_states, BLOCK_N=block_n, BLOCK_T=block_t, **flags)
    else:
        X1 = torch.empty(bsz, n_chunks, n_inner, device=dev, dtype=f32) if one else None
        fold = {"C1_ptr": fixed[1], "X1_ptr": X1, "ONE": True} if one else {}
        if fixed is not None:  # the learned columns (and B1, C1) are slices read in place (scan_triton._fold_inputs)
            fold["c_batch"] = C.stride(0)
        if time_major:  # every tile index in range: the time-major adjoint without masks
            fold["EVEN"] = seq % block_t == 0 and n_inner % adj_d == 0 and n_state == block_n
        if gate:  # the gate's backward in the adjoint kernel: dz, and dy for the grads kernel (no z, no y there)
            dz, dy = torch.empty_like(z), torch.empty(u.shape, device=dev, dtype=f32)
            fold.update(ypre_ptr=fixed[4], dz_ptr=dz, dy_ptr=dy, GATE=True)
        adj_plain[(bsz, n_chunks, triton.cdiv(n_inner, adj_d))](
            *adj_args, STATES=own_states, BLOCK_D=adj_d, BLOCK_N=block_n, BLOCK_T=block_t, num_warps=adj_warps,
            **flags, **fold)
    E = torch.empty_like(X)
    block_c, block_j, carry_warps, jc = CARRY_TILES
    carry_grid = (bsz, triton.cdiv(n_inner * n_state, block_j))
    carry = {"BLOCK_C": block_c, "BLOCK_J": block_j, "N_BLOCKS": triton.cdiv(n_chunks, block_c),
             "num_warps": carry_warps, "JC": jc}
    if one:  # the one-channel's adjoint carry too (A = 0: no decay, one "state" a channel), by extra programs
        E1 = torch.empty_like(X1)
        _chunk_carry_kernel[(bsz, carry_grid[1] + triton.cdiv(n_inner, block_j))](
            A, X, S, E, n_inner, n_state, n_chunks, REVERSE=True, X1_ptr=X1, E1_ptr=E1, ONE=True, **carry)
    else:
        _chunk_carry_kernel[carry_grid](A, X, S, E, n_inner, n_state, n_chunks, REVERSE=True, **carry)
    if own_states:
        states, fwd_tile = torch.empty_like(X), block_t
        _chunk_carry_kernel[carry_grid](A, Y, S, states, n_inner, n_state, n_chunks, REVERSE=False, **carry)
    del X, S, Y
    n_dblocks = triton.cdiv(n_inner, block_d)
    split = _d_split(bsz, n_chunks, n_dblocks, target_programs)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    if gate:  # the grads kernel takes dy = dout silu(z) as its incoming gradient and no gate
        dout, zz, flags["HAS_Z"] = dy, dummy, False
    else:
        dz = torch.empty_like(z) if z is not None else None
    if split == 1:
        dB = torch.empty(B.shape, device=dev, dtype=B.dtype)  # contiguous (B may be a slice: fold_fixed)
        dC = torch.empty(C.shape, device=dev, dtype=C.dtype)
    else:
        dB = torch.empty(split, *B.shape, device=dev, dtype=f32)
        dC = torch.empty(split, *C.shape, device=dev, dtype=f32)
    dA = torch.empty(bsz, n_chunks, n_inner, n_state, device=dev, dtype=f32)
    dD = torch.empty(bsz, n_chunks, n_inner, device=dev, dtype=f32)
    dbias = torch.empty(bsz, n_chunks, n_inner, device=dev, dtype=f32)
    grads_args = (u, delta, A, B, C, D if D is not None else dummy, zz, bb, dout, states, E,
                  du, ddelta, dz if dz is not None and not gate else du, dB, dC, dA, dD, dbias,
                  n_inner, n_state, seq, n_chunks, states.shape[1], block_t // fwd_tile, split)
    fold = {}
    if fixed is not None:
        B1, C1, Q, states1, _ = fixed
        extra = [torch.empty(split, bsz, seq, device=dev, dtype=f32) if on else None for on in (one, one, zero)]
        fold = {"B1_ptr": B1, "C1_ptr": C1, "Q_ptr": Q, "states1_ptr": states1, "E1_ptr": E1 if one else None,
                "dB1_ptr": extra[0], "dC1_ptr": extra[1], "P_ptr": extra[2], "ONE": one, "ZERO": zero,
                "b_batch": B.stride(0), "c_batch": C.stride(0)}
    # The split is fixed by ``tiles``' BLOCK_D; a tuned BLOCK_D with fewer blocks than the split leaves
    # some programs' blocks fully masked (they store zero partials): still exact.
    if time_major:
        tuned, plain = tm.grads_any_tuned, tm.grads_tm
    else:
        tuned, plain = _GRADS_TUNED, _grads
    # Every tile index in range (the shapes the MQAR step and the benchmarks run): the Gluon and the time-major
    # grads kernels without masks.
    even = seq % block_t == 0 and n_inner % block_d == 0 and n_dblocks % split == 0 and n_state == block_n
    if gluon:
        from anybudget.ssm.scan_gluon_bwd import GRADS_FLAGS, grads_gluon

        # prefetch "async": the next block's reads as cp.async copies into shared memory (4-byte elements only;
        # else the register prefetch)
        copies = prefetch == "async" and all(t.element_size() == 4 for t in (u, delta, dout, A))
        grads_gluon[(bsz, n_chunks, split)](*grads_args, HAS_D=D is not None, BLOCK_D=block_d, BLOCK_N=block_n,
                                            BLOCK_T=block_t, N_ITERS=triton.cdiv(n_dblocks, split), num_warps=warps,
                                            maxnreg=maxnreg, EVEN=even, PREFETCH=bool(prefetch) and not copies,
                                            ASYNC=copies, **GRADS_FLAGS, **flags, **fold)
    elif autotune:
        tuned[(bsz, n_chunks, split)](*grads_args, HAS_D=D is not None, BLOCK_N=block_n, BLOCK_T=block_t,
                                      PREFETCH=bool(prefetch), **flags)
    else:
        if time_major:
            fold["EVEN"] = even
        plain[(bsz, n_chunks, split)](*grads_args, HAS_D=D is not None, BLOCK_D=block_d, BLOCK_N=block_n,
                                      BLOCK_T=block_t, PREFETCH=bool(prefetch), num_warps=warps, maxnreg=maxnreg,
                                      **flags, **fold)
    if split > 1:
        dB, dC = dB.sum(0).to(B.dtype), dC.sum(0).to(C.dtype)
    grads = (du, ddelta, dA.sum((0, 1)), dB, dC,
             dD.sum((0, 1)).to(D.dtype) if D is not None else None, dz,
             dbias.sum((0, 1)).to(delta_bias.dtype) if delta_bias is not None else None)
    if fixed is None:
        return grads
    # (one channel split: its partials are the sums, a view instead of a reduction kernel)
    return grads, tuple((e[0] if split == 1 else e.sum(0)) if e is not None else None for e in extra)
