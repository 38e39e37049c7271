"""Time-major grads and adjoint kernels of the chunked backward (``ScanBlocks.bwd_tm``): ``scan_triton_bwd``'s
``_chunk_grads_kernel`` / ``_chunk_adjoint_kernel`` with tiles ``(time, channel, state)`` instead of
``(state, channel, time)``.

Why: Triton spreads a tile's last axis over a warp's lanes. The default kernel's last axis is time,
so both ``associative_scan`` s over a chunk (the state h and the adjoint g) and the dA partial's sum
over time are log2(BLOCK_T)-round lane exchanges for every (state, channel) pair: at (8, 16, 4) and
16 states its sm_90 code spends ~490 of ~2000 instructions a channel block on shuffles, with only
2 programs an SM to hide their latency. Here the chunk's time steps sit in one thread's registers
(lanes hold states, warps channels, as ``scan_triton_tm``'s forward): both scans are sequential
loops in registers and the dA partial is a register sum; only the three sums over states per
(time, channel) (y, dL/d(dt), dL/du) cross lanes. Same algorithm, arguments and results as
``_chunk_grads_kernel`` (checked against the reference under the interpreter and on CUDA); no
prefetch path. Per-thread tile is ``BLOCK_T`` elements when ``BLOCK_D = 2 * num_warps`` (16 states).
The adjoint kernel's cumulative sum of dt and its sums over the chunk's time steps (X, and Y when it rebuilds
chunk-start states) become register sums the same way: at (8, 16, 4) its sm_90 code has 8 shuffles instead of 72
and ~30% fewer instructions (``benchmarks/ssm/scan_regs.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from anybudget.ssm.scan_triton_bwd import (
    ADJOINT_CONFIGS,
    GRADS_CONFIGS,
    _chunk_adjoint_kernel,
    _chunk_grads_kernel,
)
from anybudget.ssm.scan_triton_common import (
    combine,
    discretize,
    in_range,
    load_a_matrix,
    load_dt,
    load_vec,
    silu_and_grad,
    softplus,
    softplus_grad,
)

__all__ = ["GRADS_TM_CONFIGS", "adjoint_any_tuned", "adjoint_tm", "grads_any", "grads_any_tuned", "grads_tm"]


@triton.jit
def _chunk_adjoint_tm_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, X_ptr, S_ptr, Y_ptr,
    n_inner, n_state, seq, n_chunks,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STATES: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    C1_ptr=None, X1_ptr=None, ONE: tl.constexpr = False, ypre_ptr=None, dz_ptr=None, dy_ptr=None,
    GATE: tl.constexpr = False, EVEN: tl.constexpr = False, c_batch=None,
):
    """``scan_triton_bwd._chunk_adjoint_kernel`` on (time, channel, state) tiles: the cumulative sum of dt and
    the sums over the chunk's time steps run in each thread's registers (same arguments and results).
    ``ONE`` (``ScanBlocks.fold_fixed``): also the one-polarized channel's share, ``X1_c = sum_t C1_t dy_t`` (A-bar
    = 1: no decay) into ``X1: (batch, chunks, d_inner)``, from ``C1: (batch, seq)``. ``GATE`` (with ``HAS_Z``): the
    gate's backward here instead of in the grads kernel: ``dz = dout ypre silu'(z)`` from the forward's y before
    the gate (``ypre``), and ``dy = dout silu(z)`` (float32) for the grads kernel, which then reads neither z nor y.
    ``EVEN``: every index of the tile in range (seq a multiple of BLOCK_T, d_inner of BLOCK_D, n_state == BLOCK_N):
    constant masks, dropped by the compiler."""
    pid_b, pid_c, pid_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = pid_c * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d, mask_n, mask_t = in_range(offs_d, n_inner, EVEN), in_range(offs_n, n_state, EVEN), in_range(offs_t, seq,
                                                                                                        EVEN)
    m_dn = mask_d[:, None] & mask_n[None, :]
    A_safe, a_zero = load_a_matrix(A_ptr, offs_n[None, :], offs_d[:, None], m_dn, n_state)
    A3, z3 = A_safe[None, :, :], a_zero[None, :, :]
    bias = load_vec(bias_ptr, offs_d, mask_d, HAS_BIAS)
    row = pid_b * n_inner * seq + offs_d[None, :] * seq + offs_t[:, None]  # (T, D)
    m_td = mask_t[:, None] & mask_d[None, :]
    dt, _ = load_dt(delta_ptr + row, m_td, bias[None, :], HAS_BIAS, SOFTPLUS)
    dt = tl.where(m_td, dt, 0.0)
    dy = tl.load(dout_ptr + row, mask=m_td, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row, mask=m_td, other=0.0).to(tl.float32)
        s, ds = silu_and_grad(z)
        if GATE:
            yp = tl.load(ypre_ptr + row, mask=m_td, other=0.0).to(tl.float32)
            tl.store(dz_ptr + row, (dy * yp * ds).to(dz_ptr.dtype.element_ty), mask=m_td)
        dy = dy * s
        if GATE:
            tl.store(dy_ptr + row, dy, mask=m_td)
    # c_batch: C's batch stride (a slice of the whole C: ScanBlocks.fold_fixed reads its columns in place; None:
    # contiguous (batch, n_state, seq), and C1 (batch, seq))
    cb = n_state * seq if c_batch is None else c_batch
    rowB = pid_b * cb + offs_n[None, :] * seq + offs_t[:, None]  # (T, N)
    m_tn = mask_t[:, None] & mask_n[None, :]
    Ct = tl.load(C_ptr + rowB, mask=m_tn, other=0.0).to(tl.float32)
    cs = tl.cumsum(dt, axis=0)  # (T, D): sum of dt from the chunk's first step to t
    w = discretize(cs[:, :, None] * A3, z3)  # prod_{k <= t} a_k, (T, D, N)
    X = tl.sum(w * (dy[:, :, None] * Ct[:, None, :]), axis=0)  # (D, N)
    base = (pid_b * n_chunks + pid_c) * n_inner
    dn = (base + offs_d[:, None]) * n_state + offs_n[None, :]
    tl.store(X_ptr + dn, X, mask=m_dn)
    if ONE:
        c1 = tl.load(C1_ptr + pid_b * (seq if c_batch is None else c_batch) + offs_t, mask=mask_t,
                     other=0.0).to(tl.float32)
        tl.store(X1_ptr + base + offs_d, tl.sum(c1[:, None] * dy, axis=0), mask=mask_d)
    S = tl.sum(dt, axis=0)
    tl.store(S_ptr + base + offs_d, S, mask=mask_d)
    if STATES:  # the chunk's end state from a zero start: sum_t prod_{t < k <= end} a_k dt_t u_t B_t
        u = tl.load(u_ptr + row, mask=m_td, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + rowB, mask=m_tn, other=0.0).to(tl.float32)
        last = offs_t == tl.minimum(pid_c * BLOCK_T + BLOCK_T, seq) - 1  # empty product: 1, also for A = -inf
        v = discretize((S[None, :] - cs)[:, :, None] * A3, z3 & ~last[:, None, None])
        tl.store(Y_ptr + dn, tl.sum(v * ((dt * u)[:, :, None] * Bt[:, None, :]), axis=0), mask=m_dn)


@triton.jit
def _chunk_adjoint_any_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, X_ptr, S_ptr, Y_ptr,
    n_inner, n_state, seq, n_chunks,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STATES: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, TM: tl.constexpr = True,
):
    # Either adjoint kernel, chosen by the constexpr TM (for triton.autotune, as _chunk_grads_any_kernel).
    args = (u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, X_ptr, S_ptr, Y_ptr,
            n_inner, n_state, seq, n_chunks)
    if TM:
        _chunk_adjoint_tm_kernel(*args, HAS_Z, HAS_BIAS, SOFTPLUS, STATES, BLOCK_D, BLOCK_N, BLOCK_T)
    else:
        _chunk_adjoint_kernel(*args, HAS_Z, HAS_BIAS, SOFTPLUS, STATES, BLOCK_D, BLOCK_N, BLOCK_T)


@triton.jit
def _grads_tm_block(k, pid_b, pid_c, part, u_ptr, delta_ptr, A_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr,
                    E_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, Bt, Ct,
                    n_inner, n_state, seq, n_state_tiles, tile_ratio, offs_n, mask_n, offs_t, mask_t, mask_t1, is_last,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    BLOCK_D: tl.constexpr, fix=None, b1=0.0, c1=0.0, q=0.0, ONE: tl.constexpr = False,
                    ZERO: tl.constexpr = False, EVEN: tl.constexpr = False):
    """Channel block ``k`` of one chunk: stores du, ddelta, dz and the dA / dD / d(bias) partials, returns
    this block's (T, D, N) terms of dB and dC, and with the polarized channels folded in (``ONE`` / ``ZERO``,
    ``fix = (states1, E1)``, ``b1, c1, q`` the chunk's (T,) rows) its (T, D) terms of dB1, dC1 and
    P = dy dtu (else 0)."""
    offs_d = k * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = in_range(offs_d, n_inner, EVEN)
    m_dn = mask_d[:, None] & mask_n[None, :]
    m_td = mask_t[:, None] & mask_d[None, :]
    dn = offs_d[:, None] * n_state + offs_n[None, :]  # (D, N), A's and the states' layout
    A = tl.load(A_ptr + dn, mask=m_dn, other=0.0).to(tl.float32)  # load_a_matrix's rule on the shared index dn
    a_zero = A == float("-inf")
    A3, z3 = tl.where(a_zero, 0.0, A)[None, :, :], a_zero[None, :, :]
    bias = load_vec(bias_ptr, offs_d, mask_d, HAS_BIAS)
    Dv = load_vec(D_ptr, offs_d, mask_d, HAS_D)
    h0 = tl.load(states_ptr + (pid_b * n_state_tiles + pid_c * tile_ratio) * n_inner * n_state + dn,
                 mask=m_dn, other=0.0)
    E = tl.load(E_ptr + part * n_state + dn, mask=m_dn, other=0.0)
    row = pid_b * n_inner * seq + offs_d[None, :] * seq + offs_t[:, None]  # (T, D)
    u = tl.load(u_ptr + row, mask=m_td, other=0.0).to(tl.float32)
    # The raw loads first, then load_dt's arithmetic (the order the compiler schedules best: fewer instructions).
    dtr = tl.load(delta_ptr + row, mask=m_td, other=0.0).to(tl.float32)
    dtr1 = tl.load(delta_ptr + row + 1, mask=mask_t1[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + row, mask=m_td, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dtr, dtr1 = dtr + bias[None, :], dtr1 + bias[None, :]
    dt, dt1 = dtr, dtr1
    if SOFTPLUS:
        dt, dt1 = softplus(dtr), softplus(dtr1)
    a = discretize(dt[:, :, None] * A3, z3)
    a = tl.where(mask_t[:, None, None], a, 1.0)  # past the end: carry the state unchanged
    dtu = dt * u
    b = dtu[:, :, None] * Bt[:, None, :]
    a_cum, h_loc = tl.associative_scan((a, b), axis=0, combine_fn=combine)
    hs = h_loc + a_cum * h0[None, :, :]
    if ONE:  # the one-polarized channel's state (A-bar = 1: a running sum from the chunk-start state)
        states1_ptr, E1_ptr = fix
        H1_0 = tl.load(states1_ptr + (pid_b * n_state_tiles + pid_c * tile_ratio) * n_inner + offs_d, mask=mask_d,
                       other=0.0)
        H1 = tl.cumsum(dtu * b1[:, None], axis=0) + H1_0[None, :]
    dy = dout
    if HAS_Z:
        z = tl.load(z_ptr + row, mask=m_td, other=0.0).to(tl.float32)
        y = tl.sum(hs * Ct[:, None, :], axis=2)
        if HAS_D:
            y += Dv[None, :] * u
        if ONE:
            y += c1[:, None] * H1
        if ZERO:
            y += dtu * q[:, None]
        s, ds = silu_and_grad(z)
        tl.store(dz_ptr + row, (dout * y * ds).to(dz_ptr.dtype.element_ty), mask=m_td)
        dy = dout * s
    a1 = discretize(dt1[:, :, None] * A3, z3)
    a1 = tl.where(is_last, 1.0, a1)  # the chunk's last step takes E_c, which already holds a_{t1+1}
    c = dy[:, :, None] * Ct[:, None, :]
    g_cum, g_loc = tl.associative_scan((a1, c), axis=0, combine_fn=combine, reverse=True)
    g = g_loc + g_cum * E[None, :, :]
    gq = g * (hs - b)  # g_t a_t h_{t-1}: no division by a_t
    gB = tl.sum(g * Bt[:, None, :], axis=2)  # (T, D): dL/d(dt u)
    tB1, tC1, tP = 0.0, 0.0, 0.0
    if ONE:  # its adjoint G1_t = E1 + sum_{s >= t in the chunk} C1_s dy_s (no decay)
        cdy = c1[:, None] * dy
        E1 = tl.load(E1_ptr + part + offs_d, mask=mask_d, other=0.0)
        G1 = tl.sum(cdy, axis=0)[None, :] - tl.cumsum(cdy, axis=0) + cdy + E1[None, :]
        gB += G1 * b1[:, None]
        tB1, tC1 = G1 * dtu, H1 * dy
    if ZERO:  # the zero-polarized channels: y += dtu Q, Q = sum_zeros B C
        gB += dy * q[:, None]
        tP = dy * dtu
    ddt = gB * u + tl.sum(gq * A3, axis=2)
    tl.store(dA_ptr + part * n_state + dn, tl.sum(gq * dt[:, :, None], axis=0), mask=m_dn)
    du = gB * dt
    if HAS_D:
        du += Dv[None, :] * dy
        tl.store(dD_ptr + part + offs_d, tl.sum(tl.where(m_td, dy * u, 0.0), axis=0), mask=mask_d)
    if SOFTPLUS:
        ddt = ddt * softplus_grad(dtr)
    ddt = tl.where(m_td, ddt, 0.0)
    if HAS_BIAS:
        tl.store(dbias_ptr + part + offs_d, tl.sum(ddt, axis=0), mask=mask_d)
    tl.store(du_ptr + row, du.to(du_ptr.dtype.element_ty), mask=m_td)
    tl.store(ddelta_ptr + row, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_td)
    return g * dtu[:, :, None], hs * dy[:, :, None], tB1, tC1, tP


@triton.jit
def _chunk_grads_tm_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, E_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    n_inner, n_state, seq, n_chunks, n_state_tiles, tile_ratio, d_split,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, N_ITERS: tl.constexpr,
    PREFETCH: tl.constexpr = False,
    B1_ptr=None, C1_ptr=None, Q_ptr=None, states1_ptr=None, E1_ptr=None, dB1_ptr=None, dC1_ptr=None, P_ptr=None,
    ONE: tl.constexpr = False, ZERO: tl.constexpr = False, EVEN: tl.constexpr = False, b_batch=None, c_batch=None,
):
    # b_batch, c_batch: B's and C's batch strides (slices of the whole B, C read in place, with B1, C1; None:
    # contiguous (batch, n_state, seq) and (batch, seq)). The grid, channel split (blocks pid_s, pid_s + d_split,
    # ...), partials and outputs of _chunk_grads_kernel;
    # PREFETCH is accepted (the same call site) and ignored. ONE / ZERO: the polarized channels folded in
    # (ScanBlocks.fold_fixed; B1, C1, Q: (batch, seq) rows, states1: (batch, tiles, d_inner), E1: (batch, chunks,
    # d_inner)); dB1, dC1 and P = sum_d dy dtu are stored per channel split, (split, batch, seq).
    pid_b, pid_c, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = tl.arange(0, BLOCK_N)
    t_loc = tl.arange(0, BLOCK_T)
    offs_t = pid_c * BLOCK_T + t_loc
    # EVEN (seq a multiple of BLOCK_T, every program's channel blocks in range, n_state == BLOCK_N): constant masks
    mask_n, mask_t = in_range(offs_n, n_state, EVEN), in_range(offs_t, seq, EVEN)
    mask_t1 = (offs_t + 1 < seq) & (t_loc < BLOCK_T - 1)  # a_{t+1} inside the chunk
    is_last = (t_loc == BLOCK_T - 1)[:, None, None]
    m_tn = mask_t[:, None] & mask_n[None, :]
    rowB = pid_b * n_state * seq + offs_n[None, :] * seq + offs_t[:, None]  # (T, N), dB's and dC's
    tn = offs_n[None, :] * seq + offs_t[:, None]
    Bt = tl.load(B_ptr + pid_b * (n_state * seq if b_batch is None else b_batch) + tn, mask=m_tn,
                 other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + pid_b * (n_state * seq if c_batch is None else c_batch) + tn, mask=m_tn,
                 other=0.0).to(tl.float32)
    dB3 = tl.zeros((BLOCK_T, BLOCK_D, BLOCK_N), dtype=tl.float32)
    dC3 = tl.zeros((BLOCK_T, BLOCK_D, BLOCK_N), dtype=tl.float32)
    b1, c1, q = 0.0, 0.0, 0.0
    if ONE:
        b1 = tl.load(B1_ptr + pid_b * (seq if b_batch is None else b_batch) + offs_t, mask=mask_t,
                     other=0.0).to(tl.float32)
        c1 = tl.load(C1_ptr + pid_b * (seq if c_batch is None else c_batch) + offs_t, mask=mask_t,
                     other=0.0).to(tl.float32)
    if ZERO:
        q = tl.load(Q_ptr + pid_b * seq + offs_t, mask=mask_t, other=0.0).to(tl.float32)
    accB1 = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    accC1 = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    accP = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    part = (pid_b * n_chunks + pid_c) * n_inner
    for i in range(N_ITERS):
        k = pid_s + i * d_split
        tB, tC, tB1, tC1, tP = _grads_tm_block(
            k, pid_b, pid_c, part, u_ptr, delta_ptr, A_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, E_ptr,
            du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, Bt, Ct, n_inner, n_state, seq, n_state_tiles,
            tile_ratio, offs_n, mask_n, offs_t, mask_t, mask_t1, is_last, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BLOCK_D,
            (states1_ptr, E1_ptr), b1, c1, q, ONE, ZERO, EVEN)
        dB3 += tB
        dC3 += tC
        if ONE:
            accB1 += tB1
            accC1 += tC1
        if ZERO:
            accP += tP
    out = pid_s * tl.num_programs(0) * n_state * seq + rowB
    tl.store(dB_ptr + out, tl.sum(dB3, axis=1).to(dB_ptr.dtype.element_ty), mask=m_tn)
    tl.store(dC_ptr + out, tl.sum(dC3, axis=1).to(dC_ptr.dtype.element_ty), mask=m_tn)
    out1 = (pid_s * tl.num_programs(0) + pid_b) * seq + offs_t
    if ONE:
        tl.store(dB1_ptr + out1, tl.sum(accB1, axis=1), mask=mask_t)
        tl.store(dC1_ptr + out1, tl.sum(accC1, axis=1), mask=mask_t)
    if ZERO:
        tl.store(P_ptr + out1, tl.sum(accP, axis=1), mask=mask_t)


@triton.jit
def _chunk_grads_any_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, E_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    n_inner, n_state, seq, n_chunks, n_state_tiles, tile_ratio, d_split,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, N_ITERS: tl.constexpr,
    PREFETCH: tl.constexpr = False, TM: tl.constexpr = True,
):
    # Either grads kernel, chosen by the constexpr TM: one function for triton.autotune to pick among both.
    args = (u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, E_ptr,
            du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
            n_inner, n_state, seq, n_chunks, n_state_tiles, tile_ratio, d_split)
    if TM:
        _chunk_grads_tm_kernel(*args, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BLOCK_D, BLOCK_N, BLOCK_T, N_ITERS)
    else:
        _chunk_grads_kernel(*args, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BLOCK_D, BLOCK_N, BLOCK_T, N_ITERS, PREFETCH)


def _n_iters(kernel):
    """N_ITERS = cdiv(channel blocks, d_split) from the (maybe tuned) BLOCK_D, as ``scan_triton_bwd._grads``."""
    return triton.heuristics(
        {"N_ITERS": lambda a: triton.cdiv(triton.cdiv(a["n_inner"], a["BLOCK_D"]), a["d_split"])})(kernel)


grads_tm = _n_iters(_chunk_grads_tm_kernel)
grads_any = _n_iters(_chunk_grads_any_kernel)

# (BLOCK_D, num_warps, maxnreg) of the time-major kernel that the autotuned launch adds to GRADS_CONFIGS'.
# Registers at sm_90 (fp32, 16 states, chunk 16; benchmarks/ssm/scan_regs.py): (8, 4) 249 unbounded (2 programs an SM),
# 168 with 56 bytes of spills (3); (4, 2) 231 (4), 200 without spills (5), 168 with 80 bytes (6); (16, 8) 243 (1).
GRADS_TM_CONFIGS = ((8, 4, None), (8, 4, 168), (4, 2, None), (4, 2, 200), (4, 2, 168), (16, 8, None))


def _configs(entries, tm):
    return [triton.Config({"BLOCK_D": e[0], "TM": tm}, num_warps=e[1], maxnreg=e[2] if len(e) > 2 else None)
            for e in entries]


# The autotuned launches with ScanBlocks.bwd_tm: both layouts' configs, the faster per shape (warm-up only).
grads_any_tuned = triton.autotune(_configs(GRADS_CONFIGS, False) + _configs(GRADS_TM_CONFIGS, True),
                                  key=["n_inner", "n_state", "seq", "n_chunks", "d_split"])(grads_any)
adjoint_tm = _chunk_adjoint_tm_kernel
adjoint_any_tuned = triton.autotune(_configs(ADJOINT_CONFIGS, False) + _configs(ADJOINT_CONFIGS, True),
                                    key=["n_inner", "n_state", "seq", "n_chunks"])(_chunk_adjoint_any_kernel)
