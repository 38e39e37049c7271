"""The chunked backward's grads kernel in Gluon (``ScanBlocks.bwd_gluon``): ``scan_triton_bwd_tm``'s
``_chunk_grads_tm_kernel`` with every tensor's layout stated instead of inferred.

Why: the time-major Triton kernel holds a chunk's time steps in each thread's registers and the
states on a warp's lanes, but Triton loads a (time, channel) row with time across lanes (the
contiguous axis) and converts it to the registers layout, and sums over states by butterfly
shuffles, and Triton 3.6 lowers its reverse scan (the adjoint's) with lane exchanges too: at sm_90 that is 506
lane exchanges (SHFL, static count of the whole kernel at the MQAR step's flags), ~30 a (time, channel, state)
element, on the pipe it shares with the exps. Here (Gluon: explicit layouts):

* the per-step inputs the (time, channel, state) arithmetic broadcasts (u, dout) are loaded straight
  into its layout (time in registers, each lane of a state group reading the same row: one L1 line);
* dt (softplus, once per element) is computed in the compact layout (one (time, channel) a thread)
  and converted once;
* A-bar at t + 1, which the adjoint's recurrence needs (g_t = c_t + A-bar_{t+1} g_{t+1}), is A-bar_t
  shifted one step inside each thread's registers (an associative scan that keeps the previous element of
  the time-reversed tile) instead of a second exp of a second read of delta;
* the adjoint's reverse scan is a flip of the tile in registers, a forward scan and a flip back (Triton
  3.6 lowers ``reverse=True`` on this tile with lane exchanges: most of a first version's, which used it);
* the two sums over states (<g, B> and <g a h_prev, A>) become a transpose each through shared memory
  (stored with time in registers, loaded with the states in registers) and a register sum: the result
  lands in the compact layout that du and d(delta) are stored from;
* the chunk-start state and the carried adjoint enter their scans as the first step's input (``SEED``:
  ``h_0 = a_0 h_start + b_0``; the scans' products of A-bar are then dead code), and B, C wait in shared memory
  (``BC_SMEM``) instead of 32 registers a thread: together no spills at 168 registers (3 programs an SM; 64
  bytes before), where an Nsight Compute profile of the kernel had 42% of its warps' samples waiting on the
  long scoreboard, at the block's reads and reloads of spilled values (``benchmarks/ssm/scan_ncu.py``;
  ``ssm_scan_ncu_runs/run0_h100_s23_kernels.json``);
* ``ASYNC`` (``ScanBlocks.bwd_prefetch = "async"``): the next channel block's reads are issued as cp.async copies
  into a second shared-memory stage before this block's arithmetic; a register prefetch (``PREFETCH``) needs ~40
  more registers a thread and spills at 168.

Measured at issue 17's shape on an H100 (``benchmarks/ssm/scan_fold_speed.py``): the kernel 885 us with neither
SEED nor BC_SMEM, 760 us with both, 640 us with ASYNC too.

Same grid, arguments, algorithm and results as ``_chunk_grads_tm_kernel`` (checked against the
reference scan and the Triton kernel on CUDA by ``tests/ssm/test_triton.py::test_gluon_grads_gpu_*``;
Gluon has no CPU interpreter, so on the CPU the tests check the tile constraints, the CUDA-only switch and
the kernel's sm_90 build, ``benchmarks/ssm/scan_regs.py``). Tiles: BLOCK_N states on
lanes (<= 32), BLOCK_D = (32 // BLOCK_N) * num_warps channels, BLOCK_T time steps in registers; the
shared-memory transposes touch only the warp's own rows when BLOCK_T == BLOCK_N (16 and 16 at the MQAR
step).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy

# cp.async global -> shared: ``async_load`` in Triton >= 3.7 (where the old name raises), before that
# ``async_copy_global_to_shared`` (the device's Triton 3.6).
_cp_async = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
# A CTA barrier: ``gl.barrier`` in Triton >= 3.7, ``gl.thread_barrier`` before.
_cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier

from anybudget.ssm.scan_triton_common import combine, silu_and_grad, softplus, softplus_grad

__all__ = ["GRADS_FLAGS", "check_tiles", "grads_gluon"]

# Compile-time choices of the grads kernel that change no result (benchmarks flip them): SEED, the carried state and
# adjoint enter their scans as the first step's input; BC_SMEM, B and C held in shared memory.
GRADS_FLAGS = {"SEED": True, "BC_SMEM": True}


def check_tiles(block_d: int, block_n: int, block_t: int, num_warps: int) -> None:
    """Raise ValueError unless the tiles fit the kernel's layouts (see the module docstring)."""
    if block_n > 32 or 32 % block_n:
        raise ValueError(f"BLOCK_N={block_n}: the Gluon grads kernel puts the states on one warp's lanes; allowed: "
                         "a power of two <= 32")
    if block_t > 32 or 32 % block_t:
        raise ValueError(f"BLOCK_T={block_t}: allowed a power of two <= 32 (the chunk's steps on a warp's lanes "
                         "in the transposed layout)")
    if block_d != (32 // block_n) * num_warps:
        raise ValueError(f"BLOCK_D={block_d} with BLOCK_N={block_n}, num_warps={num_warps}: the Gluon grads kernel "
                         f"needs BLOCK_D = (32 // BLOCK_N) * num_warps = {(32 // block_n) * num_warps}")


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _ld(ptrs, mask, EVEN: gl.constexpr):
    # A masked load (0 where masked), or a plain one when EVEN: every index of the tile is in range.
    if EVEN:
        v = gl.load(ptrs)
    else:
        v = gl.load(ptrs, mask=mask, other=0.0)
    return v


@gluon.jit
def _st(ptrs, v, mask, EVEN: gl.constexpr):
    if EVEN:
        gl.store(ptrs, v)
    else:
        gl.store(ptrs, v, mask=mask)


@gluon.jit
def _keep_prev(p1, l1, h1, p2, l2, h2):
    # Summary (element before the last, last element, has two) of a run: an associative operator whose
    # inclusive scan is the input shifted one step (the first step keeps its own "before": the initial value).
    return gl.where(h2 > 0.0, p2, l1), l2, gl.maximum(h2, 1.0)


@gluon.jit
def _swap_halves(x, axis: gl.constexpr, rank: gl.constexpr):
    # Exchange the two halves of a size-2 axis: to the end, split, join the other way round, back.
    perm: gl.constexpr = _perm_last(axis, rank)
    lo, hi = gl.split(gl.permute(x, perm.value))
    inv: gl.constexpr = _perm_inv_last(axis, rank)
    return gl.permute(gl.join(hi, lo), inv.value)


@gluon.jit
def _flip_time(x, BLOCK_T: gl.constexpr, BLOCK_D: gl.constexpr, BLOCK_N: gl.constexpr):
    """x[::-1] along axis 0 of a (BLOCK_T, BLOCK_D, BLOCK_N) tile held in registers: t -> (BLOCK_T - 1) XOR t, one
    index bit at a time. Triton's reverse associative_scan on such a tile exchanges lanes (~20 SHFL an element
    at sm_90 for Triton 3.6); a flip in registers, a forward scan and a flip back do not."""
    L2: gl.constexpr = _log2(BLOCK_T)
    y = gl.reshape(x, _bits_shape(L2, BLOCK_D, BLOCK_N))
    for k in gl.static_range(L2):
        y = _swap_halves(y, k, L2 + 2)
    return gl.reshape(y, [BLOCK_T, BLOCK_D, BLOCK_N])


@gluon.constexpr_function
def _log2(n):
    return n.bit_length() - 1


@gluon.constexpr_function
def _bits_shape(bits, d, n):
    return [2] * bits + [d, n]


@gluon.constexpr_function
def _perm_last(axis, rank):
    return [i for i in range(rank) if i != axis] + [axis]


@gluon.constexpr_function
def _perm_inv_last(axis, rank):
    p = [i for i in range(rank) if i != axis] + [axis]
    return [p.index(i) for i in range(rank)]


@gluon.jit
def _block_index(k, pid_b, n_inner, n_state, seq, d_dn0, n_dn, mask_n_dn, d_c0, offs_t_c, mask_t_c,
                 BLOCK_D: gl.constexpr):
    """Channel block ``k``'s offsets and masks: (channel, state) ``dn, m_dn``; (time, channel) compact ``offs_d_c,
    mask_d_c, m_c, row_c`` (its reads, copies and stores index the same way)."""
    offs_d_dn = k * BLOCK_D + d_dn0
    m_dn = (offs_d_dn < n_inner)[:, None] & mask_n_dn[None, :]
    dn = offs_d_dn[:, None] * n_state + n_dn[None, :]
    offs_d_c = k * BLOCK_D + d_c0
    mask_d_c = offs_d_c < n_inner
    m_c = mask_t_c[:, None] & mask_d_c[None, :]
    row_c = pid_b * n_inner * seq + offs_d_c[None, :] * seq + offs_t_c[:, None]
    return dn, m_dn, offs_d_c, mask_d_c, m_c, row_c


@gluon.jit
def _gl_load_channels(k, bias_ptr, D_ptr, states1_ptr, E1_ptr, tile0, part, n_inner, d_c0, d_f0,
                      HAS_D: gl.constexpr, HAS_BIAS: gl.constexpr, ONE: gl.constexpr, EVEN: gl.constexpr,
                      BLOCK_D: gl.constexpr):
    """Channel block ``k``'s per-channel reads: the bias, D, the one-channel's start state and carried adjoint
    (zeros where absent; unused then)."""
    offs_d_c = k * BLOCK_D + d_c0
    mask_d_c = offs_d_c < n_inner
    zero_c = gl.zeros_like(offs_d_c.to(gl.float32))
    if HAS_BIAS:
        bias_c = _ld(bias_ptr + offs_d_c, mask_d_c, EVEN).to(gl.float32)
    else:
        bias_c = zero_c
    if HAS_D:  # (scan_triton_common.load_vec's zeros need a layout in Gluon: read only when present)
        Dv = _ld(D_ptr + offs_d_c, mask_d_c, EVEN).to(gl.float32)
    else:
        Dv = zero_c
    offs_d_f = k * BLOCK_D + d_f0
    if ONE:
        mask_d_f = offs_d_f < n_inner
        H1_0 = _ld(states1_ptr + tile0 * n_inner + offs_d_f, mask_d_f, EVEN)
        E1 = _ld(E1_ptr + part + offs_d_f, mask_d_f, EVEN)
    else:
        H1_0 = gl.zeros_like(offs_d_f.to(gl.float32))
        E1 = H1_0
    return bias_c, Dv, H1_0, E1


@gluon.jit
def _gl_load_block(k, A_ptr, states_ptr, E_ptr, delta_ptr, u_ptr, dout_ptr, tile0, part, pid_b, n_inner, n_state, seq,
                   d_dn0, n_dn, mask_n_dn, d_c0, offs_t_c, mask_t_c, d_s0, offs_t_s, mask_t_s, EVEN: gl.constexpr,
                   BLOCK_D: gl.constexpr, NEED_DOUT_C: gl.constexpr):
    """Channel block ``k``'s other reads (raw values, no arithmetic, so a prefetch holds few registers): A, the
    chunk-start state and the carried adjoint (channel, state); delta, u and dout compact; u and dout with time in
    registers (``ASYNC`` copies these through shared memory instead, ``_gl_copy_block``)."""
    dn, m_dn, offs_d_c, mask_d_c, m_c, row_c = _block_index(k, pid_b, n_inner, n_state, seq, d_dn0, n_dn, mask_n_dn,
                                                            d_c0, offs_t_c, mask_t_c, BLOCK_D)
    A = _ld(A_ptr + dn, m_dn, EVEN).to(gl.float32)
    h0 = _ld(states_ptr + tile0 * n_inner * n_state + dn, m_dn, EVEN)
    E = _ld(E_ptr + part * n_state + dn, m_dn, EVEN)
    dtr = _ld(delta_ptr + row_c, m_c, EVEN).to(gl.float32)
    u_c = _ld(u_ptr + row_c, m_c, EVEN).to(gl.float32)
    if NEED_DOUT_C:
        dout_c = _ld(dout_ptr + row_c, m_c, EVEN).to(gl.float32)
    else:  # (unused)
        dout_c = u_c
    offs_d_s = k * BLOCK_D + d_s0
    m_s = mask_t_s[:, None] & (offs_d_s < n_inner)[None, :]
    row_s = pid_b * n_inner * seq + offs_d_s[None, :] * seq + offs_t_s[:, None]
    u_s = _ld(u_ptr + row_s, m_s, EVEN).to(gl.float32)
    dout_s = _ld(dout_ptr + row_s, m_s, EVEN).to(gl.float32)
    return A, h0, E, dtr, u_c, u_s, dout_s, dout_c


@gluon.jit
def _gl_copy_block(k, stage, buf_A, buf_h0, buf_E, buf_dt, buf_u, buf_do, A_ptr, states_ptr, E_ptr, delta_ptr, u_ptr,
                   dout_ptr, tile0, part, pid_b, n_inner, n_state, seq, d_dn0, n_dn, mask_n_dn, d_c0, offs_t_c,
                   mask_t_c, EVEN: gl.constexpr, BLOCK_D: gl.constexpr):
    """``ASYNC``: block ``k``'s (channel, state) and (time, channel) reads as asynchronous copies (cp.async) into
    shared-memory ``stage``, one commit group: they land while the block before computes, in no registers."""
    dn, m_dn, offs_d_c, mask_d_c, m_c, row_c = _block_index(k, pid_b, n_inner, n_state, seq, d_dn0, n_dn, mask_n_dn,
                                                            d_c0, offs_t_c, mask_t_c, BLOCK_D)
    if EVEN:
        m_dn = None
        m_c = None
    _cp_async(buf_A.index(stage), A_ptr + dn, mask=m_dn)
    _cp_async(buf_h0.index(stage), states_ptr + tile0 * n_inner * n_state + dn, mask=m_dn)
    _cp_async(buf_E.index(stage), E_ptr + part * n_state + dn, mask=m_dn)
    _cp_async(buf_dt.index(stage), delta_ptr + row_c, mask=m_c)
    _cp_async(buf_u.index(stage), u_ptr + row_c, mask=m_c)
    _cp_async(buf_do.index(stage), dout_ptr + row_c, mask=m_c)
    async_copy.commit_group()


@gluon.jit
def _grads_gl_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, E_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    n_inner, n_state, seq, n_chunks, n_state_tiles, tile_ratio, d_split,
    HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
    BLOCK_D: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_T: gl.constexpr, N_ITERS: gl.constexpr,
    B1_ptr=None, C1_ptr=None, Q_ptr=None, states1_ptr=None, E1_ptr=None, dB1_ptr=None, dC1_ptr=None, P_ptr=None,
    ONE: gl.constexpr = False, ZERO: gl.constexpr = False, EVEN: gl.constexpr = False,
    PREFETCH: gl.constexpr = False, BC_SMEM: gl.constexpr = True, ASYNC: gl.constexpr = False,
    SEED: gl.constexpr = True, b_batch=None, c_batch=None,
):
    # EVEN: seq a multiple of BLOCK_T, every program's channel blocks in range and n_state == BLOCK_N: no masks
    # (fewer instructions in a kernel bound by their issue). ONE / ZERO: the polarized channels folded in (ScanBlocks.fold_fixed), as scan_triton_bwd_tm's _grads_tm_block:
    # their (time, channel) terms in the time-in-registers layout (cumulative sums in registers), converted once a
    # block into the compact layout where they join dL/d(dt u) and y; dB1, dC1, P summed over channels at the end.
    W: gl.constexpr = gl.num_warps()
    # (time, channel, state): time in registers, states on lanes, channels on the rest of the lanes and the warps.
    L3: gl.constexpr = gl.BlockedLayout([BLOCK_T, 1, 1], [1, 32 // BLOCK_N, BLOCK_N], [1, W, 1], [2, 1, 0])
    # The same tile transposed inside each warp: states in registers, time on lanes (sums over states in registers).
    L3R: gl.constexpr = gl.BlockedLayout([1, 1, BLOCK_N], [BLOCK_T, 32 // BLOCK_T, 1], [1, W, 1], [0, 1, 2])
    TDS: gl.constexpr = gl.SliceLayout(2, L3)  # (time, channel), time in registers (replicated over the state lanes)
    TN: gl.constexpr = gl.SliceLayout(1, L3)  # (time, state)
    DN: gl.constexpr = gl.SliceLayout(0, L3)  # (channel, state)
    TDC: gl.constexpr = gl.SliceLayout(2, L3R)  # (time, channel) compact: one element a thread

    pid_b, pid_c, pid_s = gl.program_id(0), gl.program_id(1), gl.program_id(2)
    t_tn = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, TN))
    n_tn = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, TN))
    offs_t_tn = pid_c * BLOCK_T + t_tn
    m_tn = (offs_t_tn < seq)[:, None] & (n_tn < n_state)[None, :]
    # b_batch, c_batch: B's and C's batch strides (slices of the whole B, C read in place, with B1, C1; None:
    # contiguous (batch, n_state, seq) and (batch, seq)); rowB indexes dB and dC (contiguous)
    rowB = pid_b * n_state * seq + n_tn[None, :] * seq + offs_t_tn[:, None]
    tn = n_tn[None, :] * seq + offs_t_tn[:, None]
    Bt = _ld(B_ptr + pid_b * (n_state * seq if b_batch is None else b_batch) + tn, m_tn, EVEN).to(gl.float32)
    Ct = _ld(C_ptr + pid_b * (n_state * seq if c_batch is None else c_batch) + tn, m_tn, EVEN).to(gl.float32)
    if BC_SMEM:  # B and C stay in shared memory, read back each block (frees 2 x BLOCK_T registers for the prefetch)
        # time contiguous, 4 pad words every BLOCK_T: a warp's 128-bit reads of 16 states hit distinct banks
        SHB: gl.constexpr = gl.PaddedSharedLayout.with_identity_for([[BLOCK_T, 4]], [BLOCK_T, BLOCK_N], [0, 1])
        buf_B = gl.allocate_shared_memory(gl.float32, [BLOCK_T, BLOCK_N], SHB, Bt)
        buf_C = gl.allocate_shared_memory(gl.float32, [BLOCK_T, BLOCK_N], SHB, Ct)
    else:
        B3 = gl.expand_dims(Bt, 1)
        C3 = gl.expand_dims(Ct, 1)

    t_s = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, TDS))
    offs_t_s = pid_c * BLOCK_T + t_s
    mask_t_s = offs_t_s < seq
    d_s0 = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, TDS))
    t_c = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, TDC))
    offs_t_c = pid_c * BLOCK_T + t_c
    mask_t_c = offs_t_c < seq
    d_c0 = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, TDC))
    d_dn0 = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, DN))
    n_dn = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, DN))
    mask_n_dn = n_dn < n_state
    m3 = gl.expand_dims(gl.expand_dims(mask_t_s, 1), 2)  # (T, 1, 1) in L3
    first3 = gl.expand_dims(gl.expand_dims(t_s == 0, 1), 2)  # the tile's first step (a register index: folded)

    # The transposes go through shared memory (an in-warp shuffle transpose costs ~15 exchanges an element): 4 pad
    # words a time step (16 bytes: the loads of 4 states stay aligned 128-bit reads; 1 word makes them misaligned)
    # keep both the stores (fixed t) and the loads (fixed n) free of bank conflicts at 16 x 2 x 16.
    SH: gl.constexpr = gl.PaddedSharedLayout.with_identity_for([[BLOCK_D * BLOCK_N, 4]], [BLOCK_T, BLOCK_D, BLOCK_N],
                                                               [2, 1, 0])
    buf_b = gl.allocate_shared_memory(gl.float32, [BLOCK_T, BLOCK_D, BLOCK_N], SH)
    buf_a = gl.allocate_shared_memory(gl.float32, [BLOCK_T, BLOCK_D, BLOCK_N], SH)
    dB3 = gl.zeros([BLOCK_T, BLOCK_D, BLOCK_N], gl.float32, L3)
    dC3 = gl.zeros([BLOCK_T, BLOCK_D, BLOCK_N], gl.float32, L3)
    # The fixed channels' (time, channel) work: TDC's distribution as a blocked layout (Triton 3.6 scans no slice
    # layout), so the cumulative sums over time are lane scans and each thread holds one element of each term.
    TD: gl.constexpr = gl.BlockedLayout([1, 1], [BLOCK_T, 32 // BLOCK_T], [1, W], [0, 1])
    offs_t_f = pid_c * BLOCK_T + gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, TD))
    mask_t_f = offs_t_f < seq
    d_f0 = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, TD))
    if ONE:
        b1 = _ld(B1_ptr + pid_b * (seq if b_batch is None else b_batch) + offs_t_f, mask_t_f, EVEN).to(gl.float32)
        c1 = _ld(C1_ptr + pid_b * (seq if c_batch is None else c_batch) + offs_t_f, mask_t_f, EVEN).to(gl.float32)
        b1 = b1[:, None]
        c1 = c1[:, None]
        accB1 = gl.zeros([BLOCK_T, BLOCK_D], gl.float32, TD)
        accC1 = gl.zeros([BLOCK_T, BLOCK_D], gl.float32, TD)
    if ZERO:
        q = _ld(Q_ptr + pid_b * seq + offs_t_f, mask_t_f, EVEN).to(gl.float32)[:, None]
        accP = gl.zeros([BLOCK_T, BLOCK_D], gl.float32, TD)
    part = (pid_b * n_chunks + pid_c) * n_inner
    tile0 = pid_b * n_state_tiles + pid_c * tile_ratio
    ch_args = (bias_ptr, D_ptr, states1_ptr, E1_ptr, tile0, part, n_inner, d_c0, d_f0)
    ld_args = (A_ptr, states_ptr, E_ptr, delta_ptr, u_ptr, dout_ptr, tile0, part, pid_b, n_inner, n_state, seq, d_dn0,
               n_dn, mask_n_dn, d_c0, offs_t_c, mask_t_c, d_s0, offs_t_s, mask_t_s)
    NEED_DOUT_C: gl.constexpr = HAS_Z or HAS_D or ONE or ZERO
    if ASYNC:  # two stages of every block read: block k + d_split's copies land while block k computes
        SH_TD: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0, 1])  # (stage: the leading axis) time contiguous
        SH_DN: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        buf_A = gl.allocate_shared_memory(A_ptr.dtype.element_ty, [2, BLOCK_D, BLOCK_N], SH_DN)
        buf_h0 = gl.allocate_shared_memory(states_ptr.dtype.element_ty, [2, BLOCK_D, BLOCK_N], SH_DN)
        buf_E = gl.allocate_shared_memory(E_ptr.dtype.element_ty, [2, BLOCK_D, BLOCK_N], SH_DN)
        buf_dt = gl.allocate_shared_memory(delta_ptr.dtype.element_ty, [2, BLOCK_T, BLOCK_D], SH_TD)
        buf_u = gl.allocate_shared_memory(u_ptr.dtype.element_ty, [2, BLOCK_T, BLOCK_D], SH_TD)
        buf_do = gl.allocate_shared_memory(dout_ptr.dtype.element_ty, [2, BLOCK_T, BLOCK_D], SH_TD)
        cp_args = (buf_A, buf_h0, buf_E, buf_dt, buf_u, buf_do, A_ptr, states_ptr, E_ptr, delta_ptr, u_ptr, dout_ptr,
                   tile0, part, pid_b, n_inner, n_state, seq, d_dn0, n_dn, mask_n_dn, d_c0, offs_t_c, mask_t_c)
        _gl_copy_block(pid_s, 0, *cp_args, EVEN=EVEN, BLOCK_D=BLOCK_D)
    # block k + d_split's reads are issued before block k's arithmetic: in registers (PREFETCH; with ASYNC the
    # per-channel reads only)
    if PREFETCH or ASYNC:
        nxt_ch = _gl_load_channels(pid_s, *ch_args, HAS_D=HAS_D, HAS_BIAS=HAS_BIAS, ONE=ONE, EVEN=EVEN, BLOCK_D=BLOCK_D)
    if PREFETCH and not ASYNC:
        nxt = _gl_load_block(pid_s, *ld_args, EVEN=EVEN, BLOCK_D=BLOCK_D, NEED_DOUT_C=NEED_DOUT_C)
    for i in range(N_ITERS):
        k = pid_s + i * d_split
        # the last block's "next" is itself (in range, so EVEN's unmasked reads stay inside the tensors)
        k_next = gl.minimum(k + d_split, pid_s + (N_ITERS - 1) * d_split)
        if PREFETCH or ASYNC:
            bias_c, Dv, H1_0, E1 = nxt_ch
            nxt_ch = _gl_load_channels(k_next, *ch_args, HAS_D=HAS_D, HAS_BIAS=HAS_BIAS, ONE=ONE, EVEN=EVEN,
                                       BLOCK_D=BLOCK_D)
        else:
            bias_c, Dv, H1_0, E1 = _gl_load_channels(k, *ch_args, HAS_D=HAS_D, HAS_BIAS=HAS_BIAS, ONE=ONE, EVEN=EVEN,
                                                     BLOCK_D=BLOCK_D)
        if ASYNC:
            stage = i % 2
            async_copy.wait_group(0)  # this block's copies (issued one block ago) have landed, for this thread
            _cta_barrier()  # ... and for every thread; and every thread is done reading the other stage
            _gl_copy_block(k_next, 1 - stage, *cp_args, EVEN=EVEN, BLOCK_D=BLOCK_D)
            A = buf_A.index(stage).load(DN).to(gl.float32)
            h0 = buf_h0.index(stage).load(DN)
            E = buf_E.index(stage).load(DN)
            dtr = buf_dt.index(stage).load(TDC).to(gl.float32)
            u_c = buf_u.index(stage).load(TDC).to(gl.float32)
            u_s = buf_u.index(stage).load(TDS).to(gl.float32)
            dout_s = buf_do.index(stage).load(TDS).to(gl.float32)
            dout_c = buf_do.index(stage).load(TDC).to(gl.float32) if NEED_DOUT_C else u_c
        elif PREFETCH:
            A, h0, E, dtr, u_c, u_s, dout_s, dout_c = nxt
            nxt = _gl_load_block(k_next, *ld_args, EVEN=EVEN, BLOCK_D=BLOCK_D, NEED_DOUT_C=NEED_DOUT_C)
        else:
            A, h0, E, dtr, u_c, u_s, dout_s, dout_c = _gl_load_block(k, *ld_args, EVEN=EVEN, BLOCK_D=BLOCK_D,
                                                                     NEED_DOUT_C=NEED_DOUT_C)
        if HAS_BIAS:
            dtr = dtr + bias_c[None, :]
        a_zero = A == float("-inf")
        A3 = gl.expand_dims(gl.where(a_zero, 0.0, A), 0)
        z3 = gl.expand_dims(a_zero, 0)
        dn, m_dn, offs_d_c, mask_d_c, m_c, row_c = _block_index(k, pid_b, n_inner, n_state, seq, d_dn0, n_dn,
                                                                mask_n_dn, d_c0, offs_t_c, mask_t_c, BLOCK_D)
        dt = dtr
        if SOFTPLUS:
            dt = softplus(dtr)
        dt_s = gl.convert_layout(dt, TDS)
        dy_s = dout_s
        dy_c = dout_c
        if HAS_Z:
            z = _ld(z_ptr + row_c, m_c, EVEN).to(gl.float32)
            s, ds = silu_and_grad(z)
            dy_c = dout_c * s
            dy_s = gl.convert_layout(dy_c, TDS)
        dtu_s = dt_s * u_s
        if ONE or ZERO:  # the fixed channels' dL/d(dt u) and y terms, (time, channel) one element a thread
            dtu_f = gl.convert_layout(dt * u_c, TD)
            dy_f = gl.convert_layout(dy_c, TD)
            gB_fix = gl.zeros_like(dtu_f)
            y_fix = gl.zeros_like(dtu_f)
        if ONE:  # H1 = chunk-start state + running sum; G1 = E1 + the chunk's reverse sum of C1 dy (no decay)
            H1 = gl.associative_scan(dtu_f * b1, axis=0, combine_fn=_add) + H1_0[None, :]
            cdy = c1 * dy_f
            G1 = gl.sum(cdy, axis=0)[None, :] - gl.associative_scan(cdy, axis=0, combine_fn=_add) + cdy + E1[None, :]
            gB_fix += G1 * b1
            y_fix += c1 * H1
            accB1 += G1 * dtu_f
            accC1 += H1 * dy_f
        if ZERO:  # y += dt u Q, Q = sum_zeros B C
            gB_fix += dy_f * q
            y_fix += dtu_f * q
            accP += dy_f * dtu_f
        if BC_SMEM:
            B3 = gl.expand_dims(buf_B.load(TN), 1)
            C3 = gl.expand_dims(buf_C.load(TN), 1)
        a = gl.where(z3, 0.0, gl.exp(gl.expand_dims(dt_s, 2) * A3))
        if not EVEN:
            a = gl.where(m3, a, 1.0)  # past the end: carry the state unchanged
        b = gl.expand_dims(dtu_s, 2) * B3
        if SEED:  # the carried state enters as the first step's input: h_0 = a_0 h_start + b_0, then the scan's
            # states are the chunk's (its products of a unused: dead code, no registers or multiplies for them)
            _, hs = gl.associative_scan((a, gl.where(first3, b + a * gl.expand_dims(h0, 0), b)), axis=0,
                                        combine_fn=combine)
        else:
            a_cum, h_loc = gl.associative_scan((a, b), axis=0, combine_fn=combine)
            hs = h_loc + a_cum * gl.expand_dims(h0, 0)
        # The adjoint g_t = c_t + A-bar_{t+1} g_{t+1} (g past the chunk: E, which holds A-bar_{t1+1} g_{t1+1}) as a
        # forward scan over the time-reversed tile, where A-bar_{t+1} is the previous step's A-bar (1 at the first).
        a_rev = _flip_time(a, BLOCK_T, BLOCK_D, BLOCK_N)
        a1_rev, _, _ = gl.associative_scan((gl.full_like(a, 1.0), a_rev, gl.zeros_like(a)), axis=0,
                                           combine_fn=_keep_prev)
        c_rev = _flip_time(gl.expand_dims(dy_s, 2) * C3, BLOCK_T, BLOCK_D, BLOCK_N)
        if SEED:  # E enters at the reversed tile's first step (A-bar there: 1)
            _, g_rev = gl.associative_scan((a1_rev, gl.where(first3, c_rev + gl.expand_dims(E, 0), c_rev)), axis=0,
                                           combine_fn=combine)
            g = _flip_time(g_rev, BLOCK_T, BLOCK_D, BLOCK_N)
        else:
            g_cum, g_loc = gl.associative_scan((a1_rev, c_rev), axis=0, combine_fn=combine)
            g = _flip_time(g_loc + g_cum * gl.expand_dims(E, 0), BLOCK_T, BLOCK_D, BLOCK_N)
        gq = g * (hs - b)  # g_t a_t h_{t-1}: no division by a_t
        _st(dA_ptr + part * n_state + dn, gl.sum(gq * gl.expand_dims(dt_s, 2), axis=0), m_dn, EVEN)
        buf_b.store(g * B3)
        buf_a.store(gq * A3)
        gB = gl.sum(buf_b.load(L3R), axis=2)  # (T, D) compact
        qA = gl.sum(buf_a.load(L3R), axis=2)
        if ONE or ZERO:
            gB += gl.convert_layout(gB_fix, TDC)
        ddt = gB * u_c + qA
        du = gB * dt
        if HAS_Z:
            y = gl.sum(gl.convert_layout(hs * C3, L3R), axis=2)
            if HAS_D:
                y += Dv[None, :] * u_c
            if ONE or ZERO:
                y += gl.convert_layout(y_fix, TDC)
            _st(dz_ptr + row_c, (dout_c * y * ds).to(dz_ptr.dtype.element_ty), m_c, EVEN)
        if HAS_D:
            du += Dv[None, :] * dy_c
            dyu = dy_c * u_c
            if not EVEN:
                dyu = gl.where(m_c, dyu, 0.0)
            _st(dD_ptr + part + offs_d_c, gl.sum(dyu, axis=0), mask_d_c, EVEN)
        if SOFTPLUS:
            ddt = ddt * softplus_grad(dtr)
        if not EVEN:
            ddt = gl.where(m_c, ddt, 0.0)
        if HAS_BIAS:
            _st(dbias_ptr + part + offs_d_c, gl.sum(ddt, axis=0), mask_d_c, EVEN)
        _st(du_ptr + row_c, du.to(du_ptr.dtype.element_ty), m_c, EVEN)
        _st(ddelta_ptr + row_c, ddt.to(ddelta_ptr.dtype.element_ty), m_c, EVEN)
        dB3 += g * gl.expand_dims(dtu_s, 2)
        dC3 += hs * gl.expand_dims(dy_s, 2)
    out = pid_s * gl.num_programs(0) * n_state * seq + rowB
    _st(dB_ptr + out, gl.sum(dB3, axis=1).to(dB_ptr.dtype.element_ty), m_tn, EVEN)
    _st(dC_ptr + out, gl.sum(dC3, axis=1).to(dC_ptr.dtype.element_ty), m_tn, EVEN)
    out1 = (pid_s * gl.num_programs(0) + pid_b) * seq + offs_t_f
    if ONE:
        _st(dB1_ptr + out1, gl.sum(accB1, axis=1), mask_t_f, EVEN)
        _st(dC1_ptr + out1, gl.sum(accC1, axis=1), mask_t_f, EVEN)
    if ZERO:
        _st(P_ptr + out1, gl.sum(accP, axis=1), mask_t_f, EVEN)


grads_gluon = _grads_gl_kernel
