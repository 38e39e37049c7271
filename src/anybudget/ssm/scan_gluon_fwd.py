"""The time-major forward (``scan_triton_tm.fwd_kernel_tm``) in Gluon (``ScanBlocks.fwd_gluon``): same grid,
arguments, algorithm and outputs, every tensor's layout stated instead of inferred.

Why: one program walks all of a row's tiles, so the forward is a chain of dependent tiles and its time is the
instructions of a tile (``ssm_scan_ncu``: at the MQAR shape it issues on ~56% of cycles, ~500 instructions a warp
and tile). Triton's version sums y over the states by lane exchanges (4 rounds x 16 time steps a thread: 64 SHFL
and 64 adds a tile) and converts layouts through shared memory with CTA barriers around them. Here, as in
``scan_gluon_bwd``:

* dt (softplus, once a (time, channel) element) and dt u are computed in the compact layout (one element a thread)
  and converted once each to the layout with time in registers;
* the scan over a tile's steps is a register chain in each thread, the carried state entering as the first step's
  input (``h_0 = a_0 h + b_0``: no products of a kept);
* y = <C, h> is a transpose through shared memory (stored with time in registers, loaded with the states in
  registers) and a register sum, landing in the compact layout that y, y before the gate and the output are
  stored from;
* the polarized channels (``ONE`` / ``ZERO``, ``ScanBlocks.fold_fixed``) in a compact blocked layout with lane scans
  (``scan_triton_tm.fold_fwd_tile``'s arithmetic).

Tiles as ``scan_gluon_bwd.check_tiles``: BLOCK_N states on lanes, BLOCK_D = (32 // BLOCK_N) * num_warps channels,
BLOCK_T <= 32 steps in registers. Gluon has no CPU interpreter: checked against the reference and the Triton kernel
on CUDA (``tests/ssm/test_triton.py``), its sm_90 build on the CPU (``benchmarks/ssm/scan_regs.py``).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from anybudget.ssm.scan_gluon_bwd import _add, _ld, _st
from anybudget.ssm.scan_triton_common import combine, silu_and_grad, softplus

__all__ = ["fwd_gluon"]


@gluon.jit
def _fwd_gl_load(tile, u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, B1_ptr, C1_ptr, Q_ptr, row_c, rowB, t_c, t_tn, t_f,
                 m_dc, m_n_tn, pid_b, seq, HAS_Z: gl.constexpr, ONE: gl.constexpr, ZERO: gl.constexpr,
                 EVEN: gl.constexpr, BLOCK_T: gl.constexpr):
    """Tile ``tile``'s raw reads: u, delta, z (compact (T, D)), B, C ((T, N), time in registers), the polarized rows
    b1, c1, q ((T,); zeros when absent)."""
    offs_c = tile * BLOCK_T + t_c
    m_c = (offs_c < seq)[:, None] & m_dc[None, :]
    u = _ld(u_ptr + row_c + offs_c[:, None], m_c, EVEN).to(gl.float32)
    draw = _ld(delta_ptr + row_c + offs_c[:, None], m_c, EVEN).to(gl.float32)
    if HAS_Z:
        z = _ld(z_ptr + row_c + offs_c[:, None], m_c, EVEN).to(gl.float32)
    else:  # (unused)
        z = u
    offs_tn = tile * BLOCK_T + t_tn
    m_tn = (offs_tn < seq)[:, None] & m_n_tn[None, :]
    Bt = _ld(B_ptr + rowB + offs_tn[:, None], m_tn, EVEN).to(gl.float32)
    Ct = _ld(C_ptr + rowB + offs_tn[:, None], m_tn, EVEN).to(gl.float32)
    offs_f = tile * BLOCK_T + t_f
    m_f = offs_f < seq
    if ONE:
        b1 = _ld(B1_ptr + pid_b * seq + offs_f, m_f, EVEN).to(gl.float32)
        c1 = _ld(C1_ptr + pid_b * seq + offs_f, m_f, EVEN).to(gl.float32)
    else:  # (unused)
        b1 = gl.zeros_like(offs_f.to(gl.float32))
        c1 = b1
    if ZERO:
        q = _ld(Q_ptr + pid_b * seq + offs_f, m_f, EVEN).to(gl.float32)
    else:  # (unused)
        q = gl.zeros_like(offs_f.to(gl.float32))
    return u, draw, z, Bt, Ct, b1, c1, q


@gluon.jit
def _fwd_gl_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, states_ptr, last_ptr,
    n_inner, n_state, seq,
    N_TILES: gl.constexpr,
    HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
    BLOCK_D: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_T: gl.constexpr, PREFETCH: gl.constexpr = False,
    B1_ptr=None, C1_ptr=None, Q_ptr=None, states1_ptr=None, last1_ptr=None, ypre_ptr=None,
    ONE: gl.constexpr = False, ZERO: gl.constexpr = False, Y_OUT: gl.constexpr = False, EVEN: gl.constexpr = False,
):
    W: gl.constexpr = gl.num_warps()
    L3: gl.constexpr = gl.BlockedLayout([BLOCK_T, 1, 1], [1, 32 // BLOCK_N, BLOCK_N], [1, W, 1], [2, 1, 0])
    L3R: gl.constexpr = gl.BlockedLayout([1, 1, BLOCK_N], [BLOCK_T, 32 // BLOCK_T, 1], [1, W, 1], [0, 1, 2])
    TDS: gl.constexpr = gl.SliceLayout(2, L3)  # (time, channel), time in registers
    TN: gl.constexpr = gl.SliceLayout(1, L3)  # (time, state), time in registers
    DN: gl.constexpr = gl.SliceLayout(0, L3)  # (channel, state): one a thread
    TDC: gl.constexpr = gl.SliceLayout(2, L3R)  # (time, channel) compact
    TD: gl.constexpr = gl.BlockedLayout([1, 1], [BLOCK_T, 32 // BLOCK_T], [1, W], [0, 1])  # compact, blocked (scans)

    pid_b, pid_d = gl.program_id(0), gl.program_id(1)
    d_dn = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, DN))
    n_dn = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, DN))
    m_dn = (d_dn < n_inner)[:, None] & (n_dn < n_state)[None, :]
    st_off = d_dn[:, None] * n_state + n_dn[None, :]
    A = _ld(A_ptr + st_off, m_dn, EVEN).to(gl.float32)
    a_zero = A == float("-inf")
    A3 = gl.expand_dims(gl.where(a_zero, 0.0, A), 0)
    z3 = gl.expand_dims(a_zero, 0)

    t_c = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, TDC))
    d_c = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, TDC))
    m_dc = d_c < n_inner
    row_c = pid_b * n_inner * seq + d_c[None, :] * seq
    if HAS_BIAS:
        bias = _ld(bias_ptr + d_c, m_dc, EVEN).to(gl.float32)
    if HAS_D:
        Dv = _ld(D_ptr + d_c, m_dc, EVEN).to(gl.float32)
    t_tn = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, TN))
    n_tn = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, TN))
    rowB = pid_b * n_state * seq + n_tn[None, :] * seq
    m_n_tn = n_tn < n_state
    t_s = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, TDS))
    first3 = gl.expand_dims(gl.expand_dims(t_s == 0, 1), 2)
    last3 = gl.expand_dims(gl.expand_dims(t_s == BLOCK_T - 1, 1), 2)
    t_f = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, TD))
    d_f = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, TD))
    m_df = d_f < n_inner

    SH: gl.constexpr = gl.PaddedSharedLayout.with_identity_for([[BLOCK_D * BLOCK_N, 4]], [BLOCK_T, BLOCK_D, BLOCK_N],
                                                               [2, 1, 0])
    buf_y = gl.allocate_shared_memory(gl.float32, [BLOCK_T, BLOCK_D, BLOCK_N], SH)
    h = gl.zeros([BLOCK_D, BLOCK_N], gl.float32, DN)
    H1 = gl.zeros([BLOCK_D], gl.float32, gl.SliceLayout(0, TD))
    ld_args = (u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, B1_ptr, C1_ptr, Q_ptr, row_c, rowB, t_c, t_tn, t_f, m_dc, m_n_tn,
               pid_b, seq)
    if PREFETCH:  # tile + 1's reads issued before this tile's arithmetic (the last re-reads itself: in range)
        nxt = _fwd_gl_load(0, *ld_args, HAS_Z=HAS_Z, ONE=ONE, ZERO=ZERO, EVEN=EVEN, BLOCK_T=BLOCK_T)
    for tile in range(N_TILES):
        if PREFETCH:
            cur = nxt
            nxt = _fwd_gl_load(gl.minimum(tile + 1, N_TILES - 1), *ld_args, HAS_Z=HAS_Z, ONE=ONE, ZERO=ZERO, EVEN=EVEN,
                               BLOCK_T=BLOCK_T)
        else:
            cur = _fwd_gl_load(tile, *ld_args, HAS_Z=HAS_Z, ONE=ONE, ZERO=ZERO, EVEN=EVEN, BLOCK_T=BLOCK_T)
        u, draw, z, Bt, Ct, b1, c1, q = cur
        offs_c = tile * BLOCK_T + t_c
        m_c = (offs_c < seq)[:, None] & m_dc[None, :]
        _st(states_ptr + (pid_b * N_TILES + tile) * n_inner * n_state + st_off, h, m_dn, EVEN)
        dt = draw
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = softplus(dt)
        dtu = dt * u  # 0 past the end (u reads 0 there)
        a = gl.where(z3, 0.0, gl.exp(gl.expand_dims(gl.convert_layout(dt, TDS), 2) * A3))
        if not EVEN:
            m3 = gl.expand_dims(gl.expand_dims(tile * BLOCK_T + t_s < seq, 1), 2)
            a = gl.where(m3, a, 1.0)  # past the end: carry the state unchanged
        b = gl.expand_dims(gl.convert_layout(dtu, TDS), 2) * gl.expand_dims(Bt, 1)
        _, hs = gl.associative_scan((a, gl.where(first3, b + a * gl.expand_dims(h, 0), b)), axis=0, combine_fn=combine)
        h = gl.sum(gl.where(last3, hs, 0.0), axis=0)  # the tile's end state (a register pick)
        buf_y.store(hs * gl.expand_dims(Ct, 1))
        y = gl.sum(buf_y.load(L3R), axis=2)  # (T, D) compact
        if ONE or ZERO:  # fold_fwd_tile: y_fix = C1 H1 + dtu Q, H1 the one-channel's running sum
            dtu_f = gl.convert_layout(dtu, TD)
            y_fix = gl.zeros_like(dtu_f)
            if ONE:
                _st(states1_ptr + (pid_b * N_TILES + tile) * n_inner + d_f, H1, m_df, EVEN)
                w = dtu_f * b1[:, None]
                y_fix += c1[:, None] * (gl.associative_scan(w, axis=0, combine_fn=_add) + H1[None, :])
                H1 = H1 + gl.sum(w, axis=0)
            if ZERO:
                y_fix += dtu_f * q[:, None]
            y += gl.convert_layout(y_fix, TDC)
        if HAS_D:
            y += Dv[None, :] * u
        ptr = row_c + offs_c[:, None]
        if Y_OUT:
            _st(ypre_ptr + ptr, y.to(ypre_ptr.dtype.element_ty), m_c, EVEN)
        if HAS_Z:
            silu_z, _ = silu_and_grad(z)  # (its second value unused: dead code)
            y = y * silu_z
        _st(out_ptr + ptr, y.to(out_ptr.dtype.element_ty), m_c, EVEN)
    _st(last_ptr + pid_b * n_inner * n_state + st_off, h, m_dn, EVEN)
    if ONE:
        _st(last1_ptr + pid_b * n_inner + d_f, H1, m_df, EVEN)


fwd_gluon = _fwd_gl_kernel
