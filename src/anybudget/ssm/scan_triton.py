"""Triton selective scan, forward and backward (same contract as ``scan.selective_scan_ref``).

One program owns (one batch row, ``BLOCK_D`` channels, all ``d_state`` states) and walks the
sequence in tiles of ``BLOCK_T`` steps. Inside a tile the recurrence h_t = a_t h_{t-1} + b_t is a
``tl.associative_scan`` over time (combine (a1, b1), (a2, b2) -> (a1 a2, a2 b1 + b2)); the state
at each tile's start is carried in registers and also stored, so the backward pass can recompute
h inside a tile instead of keeping the (batch, d_inner, seq, d_state) tensor.

Backward: the adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} (a reverse associative scan),
with a_t h_{t-1} = h_t - b_t, so no division by a_t is needed and A-bar = 0 (``A = -inf``, the
zero-polarized channel) stays exact. Two implementations (``ScanBlocks.bwd_impl``): ``"chunked"``
(``scan_triton_bwd``, the default: every chunk in parallel from a precomputed adjoint carry, dB/dC
summed over channels in registers; on the H200 it equals the reference to 1e-6 and takes the backward
kernel from 4.67 to 3.50 ms at batch 16, d_inner 256, seq 4096, ``ssm_scan_bwd.json``) and
``"sequential"`` (this file's and ``scan_triton_tm``'s kernels: one program walks all tiles in
reverse, channel blocks add into dB and dC atomically).

Polarized channels (A exactly 0 or -inf) are either split off and added in closed form by PyTorch ops
(``scan_split``, the default) or folded into the kernels (``ScanBlocks.fold_fixed``:
:func:`triton_forward_fold` / :func:`triton_backward_fold`). ``ScanBlocks.preset("fastest")`` sets the
fastest measured combination (``benchmarks/results/ssm/ssm_train_speed.json``).

Triton is imported here only; ``anybudget.ssm`` works without it. For CPU tests set
``TRITON_INTERPRET=1`` before the first ``import triton``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - exercised only without triton
    raise ImportError(
        "the Triton selective scan needs triton: pip install 'anybudget[gpu]'"
    ) from e

from anybudget.ssm.scan import check_scan_inputs
from anybudget.ssm.scan_triton_common import (
    channel_tile,
    discretize,
    load_a_matrix,
    load_dt,
    load_vec,
    softplus_grad,
)
from anybudget.ssm.scan_triton_common import combine as _combine
from anybudget.ssm.scan_triton_tm import bwd_kernel_tm, fwd_kernel_tm

__all__ = ["SCAN_PRESETS", "ScanBlocks", "fold_problem", "selective_scan_triton", "triton_backward", "triton_backward_fold",
           "triton_forward", "triton_forward_fold"]


class ScanBlocks:
    """Tile sizes (powers of two) and tile layout. Overridable for tuning: ``ScanBlocks.fwd = (d, t, warps)``.

    ``variant``: ``"time_last"`` (tiles (channel, state, time): this file's kernels) or
    ``"time_first"`` (tiles (time, channel, state): ``scan_triton_tm``, the scan over time in
    registers). Defaults: the fastest of benchmarks/ssm/scan_speed.py's sweep on an H100 (batch 16,
    d_inner 256, seq 1024, d_state 18): forward 0.69 ms, forward+backward 2.64 ms (time_last, the
    sequential backward). ``bwd`` tiles the sequential backward, ``bwd_chunked`` the chunked one
    (benchmarks/ssm/scan_bwd_speed.py times both). The chunked backward keeps the states in each
    thread's registers: 16 (the learned states, ``split_fixed``) fit at chunk 32; with 17..32 states
    its chunk is capped at 16, above that at 8."""

    fwd = (4, 32, 4)
    bwd = (4, 32, 4)
    variant = "time_last"
    # Backward: "chunked" (``scan_triton_bwd``: chunk-parallel, no atomics) or "sequential" (the
    # layout's own kernel: one program walks every tile in reverse, dB/dC added atomically).
    bwd_impl = "chunked"  # checked and timed on the GPU: results/ssm/ssm_scan_bwd.json
    # The chunked backward's tiles (BLOCK_D channels per loop step, BLOCK_T = chunk, warps); the
    # chunk must be a multiple of the forward tile, else the chunk-start states are recomputed.
    bwd_chunked = (4, 32, 4)
    # Programs the chunked backward aims for (4 per SM on an H100): when batch x chunks are fewer,
    # each chunk's channel blocks are split over programs (dB/dC partials summed afterwards).
    bwd_programs = 512
    # The chunked backward's adjoint kernel alone: (BLOCK_D, warps), or None for bwd_chunked's. Its
    # programs have no channel loop, so a wider channel block means fewer, fuller programs.
    bwd_adjoint = None
    # CUDA only: the chunked backward's adjoint and grads kernels tuned per shape by triton.autotune
    # (scan_triton_bwd.ADJOINT_CONFIGS / GRADS_CONFIGS; bwd_chunked keeps the chunk), during warm-up.
    bwd_autotune = False
    # The time_first forward issues tile i + 1's reads before tile i's arithmetic (same results).
    fwd_prefetch = False
    # A cap on the forward kernel's registers a thread (None: ptxas's choice; time_first (8, 16, 4) takes 88,
    # 5 programs an SM; 80 fits without spilling, 6 programs: ssm_scan_regs.json's method).
    fwd_maxnreg = None
    # The chunked backward's grads kernel issues the next channel block's loads before this block's
    # arithmetic (a two-stage pipeline by hand; same results). True: into registers; "async": the Gluon grads kernel
    # copies them into two shared-memory stages (cp.async, fp32 inputs; no registers held: at 168 registers the
    # register prefetch spills; ssm_scan_fold.json), the Triton kernels take it as True.
    bwd_prefetch = False
    # A cap on the chunked grads kernel's registers a thread (None: ptxas's choice; at (8, 16, 4) and 16
    # states it takes 228, 2 programs an SM; 168 fits without spilling, 3 programs: ssm_scan_regs.json).
    bwd_maxnreg = None
    # The chunked backward's adjoint and grads kernels on (time, channel, state) tiles (scan_triton_bwd_tm: the
    # scans and sums over a chunk's time steps in registers, no lane exchanges; same results). Off: (state, channel,
    # time) tiles. With bwd_autotune, the tuner picks per shape among both layouts' configs.
    bwd_tm = False
    # CUDA only: the chunked backward's grads kernel in Gluon (scan_gluon_bwd: layouts stated, so the chunk's inputs
    # are read into the layout they are used in, the sums over states are a shared-memory transpose and a register sum,
    # and the adjoint's reverse scan is a flip and a forward scan: at sm_90, Triton 3.6, 72 lane exchanges
    # against the time-major Triton kernel's 574: ssm_scan_regs_runs/triton36.json). bwd_chunked's tiles must satisfy scan_gluon_bwd.check_tiles.
    # "auto": Gluon on CUDA where Triton has it and the tiles satisfy check_tiles, else the Triton kernel.
    bwd_gluon = False
    # The time_first forward split into chunks of this many steps (a multiple of fwd's tile), scanned in parallel
    # from zero, their start states carried across chunks, then each chunk re-scanned from its true start
    # (scan_triton_fwdchunk: same outputs, ~9 B more traffic a (token, channel) at fp32, chunk 256). None: one
    # program walks the whole sequence (fwd_kernel_tm). Opt-in until timed on a GPU.
    fwd_chunk = None
    # Polarized channels (A exactly 0 / -inf) in closed form outside the kernel (scan_split):
    # 16 learned states tile as 16, 16 + 2 would pad to 32.
    split_fixed = True
    # With split_fixed: the closed form inside the kernels instead of PyTorch ops around them (fold_fwd_tile: the
    # one-channel's running sum and the zero channels' dt u <B, C> added to y in the forward; their gradients, and D
    # and z, in the backward's kernels): no elementwise passes over (batch, d_inner, seq) around the scan. Needs
    # variant "time_first", the chunked backward with bwd_tm (bwd_gluon too), no bwd_autotune or fwd_chunk, at most one
    # one-channel, and chunks a multiple of the forward's tile (fold_problem says which is unmet; scan.selective_scan
    # then runs the split path, selective_scan_triton(fixed_channels=...) raises). Same results.
    # Settings read while torch.compile traces (variant, fwd's tile, split_fixed, fold_fixed) are baked into the
    # graph without a guard: after changing them, torch._dynamo.reset() before compiling again.
    fold_fixed = False

    @classmethod
    def preset(cls, name: str) -> dict:
        """Set every tuning field to the named preset of :data:`SCAN_PRESETS` and return the previous values
        (``ScanBlocks.restore(old)`` puts them back). ``"default"``: the class's own defaults; ``"fastest"``: the
        fastest MQAR training step measured on an H100 (``benchmarks/results/ssm/ssm_train_speed.json``: time_first
        forward (8, 16, 4) with prefetch, chunked backward (8, 16, 4) with the time-major adjoint and the Gluon grads
        kernel capped at 168 registers reading each channel block ahead by cp.async, the polarized channels folded
        into the kernels); without Gluon (Triton < 3.5)
        or where its tiles do not fit the state count (``bwd_gluon = "auto"``) the time-major Triton grads kernel, and
        the split path where the kernels cannot fold the channels (``fold_problem``). Same results either way.
        Measured for the compiled step captured as CUDA graphs and for eager runs; under ``torch.compile`` without
        CUDA graphs the fold's extra launches cost more than it saves (``ssm_scan_fold.json``). Compiled graphs keep
        the settings they were traced with: set the preset before ``torch.compile`` (or ``torch._dynamo.reset()``
        after)."""
        if name not in SCAN_PRESETS:
            raise ValueError(f"ScanBlocks.preset({name!r}): allowed {', '.join(map(repr, SCAN_PRESETS))}")
        values = dict(SCAN_PRESETS["default"])
        if name == "fastest":
            gluon = _gluon_available()
            values.update(SCAN_PRESETS["fastest"], bwd_gluon="auto" if gluon else False,
                          bwd_maxnreg=168 if gluon else None)
        old = {k: getattr(cls, k) for k in values}
        cls.restore(values)
        return old

    @classmethod
    def restore(cls, values: dict) -> None:
        """Set the fields ``values`` names (what :meth:`preset` returned); unknown names raise ValueError."""
        unknown = [k for k in values if k not in SCAN_PRESETS["default"]]
        if unknown:
            raise ValueError(f"ScanBlocks.restore: unknown settings {unknown}; allowed {list(SCAN_PRESETS['default'])}")
        for k, v in values.items():
            setattr(cls, k, v)


# Every tuning field of ScanBlocks at its default, and the fields the "fastest" preset changes (its bwd_gluon and
# bwd_maxnreg follow whether Triton has Gluon).
SCAN_PRESETS = {
    "default": {k: v for k, v in vars(ScanBlocks).items() if not k.startswith("_") and not callable(v)
                and not isinstance(v, classmethod)},
    "fastest": {"variant": "time_first", "fwd": (8, 16, 4), "bwd": (8, 16, 4), "bwd_impl": "chunked",
                "bwd_chunked": (8, 16, 4), "bwd_tm": True, "fwd_prefetch": True, "split_fixed": True,
                "fold_fixed": True, "bwd_prefetch": "async"},
}


def _gluon_tiles_fit(block_d, block_n, block_t, warps) -> bool:
    from anybudget.ssm.scan_gluon_bwd import check_tiles

    try:
        check_tiles(block_d, block_n, block_t, warps)
    except ValueError:
        return False
    return True


def _gluon_available() -> bool:
    try:
        from anybudget.ssm import scan_gluon_bwd  # noqa: F401
    except ImportError:
        return False
    return True


def _kernels():
    if ScanBlocks.variant == "time_first":
        return fwd_kernel_tm, bwd_kernel_tm
    if ScanBlocks.variant != "time_last":
        raise ValueError(f"ScanBlocks.variant={ScanBlocks.variant!r}; allowed: 'time_last', 'time_first'")
    return _fwd_kernel, _bwd_kernel


@triton.jit
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, states_ptr, last_ptr,
    n_inner, n_state, seq,
    N_TILES: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_b = tl.program_id(0)
    offs_d, offs_n, mask_d, mask_n = channel_tile(tl.program_id(1), n_inner, n_state, BLOCK_D, BLOCK_N)
    t_loc = tl.arange(0, BLOCK_T)
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A_safe, a_zero = load_a_matrix(A_ptr, offs_n[None, :], offs_d[:, None], mask_dn, n_state)
    bias = load_vec(bias_ptr, offs_d, mask_d, HAS_BIAS)
    Dv = load_vec(D_ptr, offs_d, mask_d, HAS_D)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    row = pid_b * n_inner * seq + offs_d[:, None] * seq
    rowB = pid_b * n_state * seq + offs_n[:, None] * seq
    st_off = offs_d[:, None] * n_state + offs_n[None, :]
    for tile in range(N_TILES):
        offs_t = tile * BLOCK_T + t_loc
        mask_t = offs_t < seq
        tl.store(states_ptr + (pid_b * N_TILES + tile) * n_inner * n_state + st_off, h, mask=mask_dn)
        m_dt = mask_d[:, None] & mask_t[None, :]
        m_nt = mask_n[:, None] & mask_t[None, :]
        u = tl.load(u_ptr + row + offs_t[None, :], mask=m_dt, other=0.0).to(tl.float32)
        dt, _ = load_dt(delta_ptr + row + offs_t[None, :], m_dt, bias[:, None], HAS_BIAS, SOFTPLUS)
        Bt = tl.load(B_ptr + rowB + offs_t[None, :], mask=m_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + rowB + offs_t[None, :], mask=m_nt, other=0.0).to(tl.float32)
        a = discretize(dt[:, None, :] * A_safe[:, :, None], a_zero[:, :, None])
        # Past the end a = 1, b = 0: the carried state is left as it was at the last token.
        a = tl.where(mask_t[None, None, :], a, 1.0)
        b = (dt * u)[:, None, :] * Bt[None, :, :]
        a_cum, h_loc = tl.associative_scan((a, b), axis=2, combine_fn=_combine)
        hs = h_loc + a_cum * h[:, :, None]
        y = tl.sum(hs * Ct[None, :, :], axis=1)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + row + offs_t[None, :], mask=m_dt, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + row + offs_t[None, :], y.to(out_ptr.dtype.element_ty), mask=m_dt)
        h = tl.sum(tl.where((t_loc == BLOCK_T - 1)[None, None, :], hs, 0.0), axis=2)
    tl.store(last_ptr + pid_b * n_inner * n_state + st_off, h, mask=mask_dn)


@triton.jit
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    n_inner, n_state, seq,
    N_TILES: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_b = tl.program_id(0)
    offs_d, offs_n, mask_d, mask_n = channel_tile(tl.program_id(1), n_inner, n_state, BLOCK_D, BLOCK_N)
    t_loc = tl.arange(0, BLOCK_T)
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A_safe, a_zero = load_a_matrix(A_ptr, offs_n[None, :], offs_d[:, None], mask_dn, n_state)
    bias = load_vec(bias_ptr, offs_d, mask_d, HAS_BIAS)
    Dv = load_vec(D_ptr, offs_d, mask_d, HAS_D)
    row = pid_b * n_inner * seq + offs_d[:, None] * seq
    rowB = pid_b * n_state * seq + offs_n[:, None] * seq
    st_off = offs_d[:, None] * n_state + offs_n[None, :]
    g_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # g at the next tile's first step
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(N_TILES):
        tile = N_TILES - 1 - i
        offs_t = tile * BLOCK_T + t_loc
        mask_t = offs_t < seq
        m_dt = mask_d[:, None] & mask_t[None, :]
        m_nt = mask_n[:, None] & mask_t[None, :]
        h0 = tl.load(states_ptr + (pid_b * N_TILES + tile) * n_inner * n_state + st_off, mask=mask_dn, other=0.0)
        u = tl.load(u_ptr + row + offs_t[None, :], mask=m_dt, other=0.0).to(tl.float32)
        dt, dtr = load_dt(delta_ptr + row + offs_t[None, :], m_dt, bias[:, None], HAS_BIAS, SOFTPLUS)
        Bt = tl.load(B_ptr + rowB + offs_t[None, :], mask=m_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + rowB + offs_t[None, :], mask=m_nt, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + row + offs_t[None, :], mask=m_dt, other=0.0).to(tl.float32)
        a = discretize(dt[:, None, :] * A_safe[:, :, None], a_zero[:, :, None])
        a = tl.where(mask_t[None, None, :], a, 1.0)
        dtu = dt * u
        b = dtu[:, None, :] * Bt[None, :, :]
        a_cum, h_loc = tl.associative_scan((a, b), axis=2, combine_fn=_combine)
        hs = h_loc + a_cum * h0[:, :, None]
        dy = dout
        if HAS_Z:
            y = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            z = tl.load(z_ptr + row + offs_t[None, :], mask=m_dt, other=0.0).to(tl.float32)
            sz = tl.sigmoid(z)
            dz = dout * y * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_ptr + row + offs_t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m_dt)
            dy = dout * z * sz
        # a_{t+1}, the transition that carries g_{t+1} back to step t; 0 past the end (g_L = 0).
        offs_t1 = offs_t + 1
        m_dt1 = mask_d[:, None] & (offs_t1 < seq)[None, :]
        dt1, _ = load_dt(delta_ptr + row + offs_t1[None, :], m_dt1, bias[:, None], HAS_BIAS, SOFTPLUS)
        a1 = tl.exp(dt1[:, None, :] * A_safe[:, :, None])
        a1 = tl.where(a_zero[:, :, None] | (offs_t1 >= seq)[None, None, :], 0.0, a1)
        c = Ct[None, :, :] * dy[:, None, :]
        g_cum, g_loc = tl.associative_scan((a1, c), axis=2, combine_fn=_combine, reverse=True)
        g = g_loc + g_cum * g_next[:, :, None]
        gq = g * (hs - b)  # g_t * a_t * h_{t-1}
        gB = tl.sum(g * Bt[None, :, :], axis=1)
        ddt = gB * u + tl.sum(gq * A_safe[:, :, None], axis=1)
        dA_acc += tl.sum(gq * dt[:, None, :], axis=2)
        du = gB * dt
        if HAS_D:
            du += Dv[:, None] * dy
            dD_acc += tl.sum(tl.where(m_dt, dy * u, 0.0), axis=1)
        if SOFTPLUS:
            ddt = ddt * softplus_grad(dtr)
        ddt = tl.where(m_dt, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + row + offs_t[None, :], du.to(du_ptr.dtype.element_ty), mask=m_dt)
        tl.store(ddelta_ptr + row + offs_t[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m_dt)
        dB_t = tl.sum(g * dtu[:, None, :], axis=0)
        dC_t = tl.sum(hs * dy[:, None, :], axis=0)
        tl.atomic_add(dB_ptr + rowB + offs_t[None, :], dB_t, mask=m_nt)
        tl.atomic_add(dC_ptr + rowB + offs_t[None, :], dC_t, mask=m_nt)
        g_next = tl.sum(tl.where((t_loc == 0)[None, None, :], g, 0.0), axis=2)
    tl.store(dA_ptr + pid_b * n_inner * n_state + st_off, dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * n_inner + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * n_inner + offs_d, dbias_acc, mask=mask_d)


def _block_n(n_state: int) -> int:
    return max(2, triton.next_power_of_2(n_state))


def _fwd_even(seq, n_inner, n_state, block_d, block_t) -> bool:
    """Every index of the time-major forward's tiles in range: its EVEN flag (the kernel without masks)."""
    return seq % block_t == 0 and n_inner % block_d == 0 and _block_n(n_state) == n_state


def _bwd_chunk(block_n: int) -> int:
    # States sit in each thread's registers: above 16 (padded) states, shorter chunks keep the
    # (state, time) tile at 512 (no spills at 32 states, chunk 16; ptxas sm_90).
    return min(ScanBlocks.bwd_chunked[1], max(8, 512 // block_n))


def fold_problem(n_state: int, n_ones: int, n_zeros: int) -> str | None:
    """Why ``ScanBlocks.fold_fixed`` cannot run these polarized channels as ``ScanBlocks`` is set, or None."""
    learned = n_state - n_ones - n_zeros
    if n_ones < 0 or n_zeros < 0 or learned < 1:
        return f"n_ones={n_ones}, n_zeros={n_zeros} must be >= 0 and leave a learned column of d_state={n_state}"
    if n_ones > 1:
        return f"n_ones={n_ones}: the kernels fold at most one one-polarized channel"
    sb = ScanBlocks
    for ok, what in ((sb.variant == "time_first", f"variant={sb.variant!r} (needs 'time_first')"),
                     (sb.bwd_impl == "chunked", f"bwd_impl={sb.bwd_impl!r} (needs 'chunked')"),
                     (sb.bwd_tm, "bwd_tm=False (needs True)"),
                     (not sb.bwd_autotune, "bwd_autotune=True (needs False)"),
                     (sb.fwd_chunk is None, f"fwd_chunk={sb.fwd_chunk!r} (needs None)"),
                     (_bwd_chunk(_block_n(learned)) % sb.fwd[1] == 0,
                      f"backward chunk {_bwd_chunk(_block_n(learned))} is not a multiple of the forward tile "
                      f"{sb.fwd[1]}")):
        if not ok:
            return f"ScanBlocks.{what}"
    return None


def _rows_in_place(X):
    """X itself where each (batch, state) row is contiguous and rows are seq apart (the kernels then read its column
    slices in place, at X's batch stride), else a contiguous copy."""
    return X if X.stride(-1) == 1 and X.stride(-2) == X.shape[-1] else X.contiguous()


def _fold_inputs(A, B, C, n_ones, n_zeros):
    """(learned A contiguous; learned B, C; B1, C1 (batch, seq) or None; Q = sum_zeros B C (batch, seq) float32 or
    None). The B and C columns are views (no copies: the kernels read them at B's and C's batch strides,
    ``_rows_in_place``)."""
    lo, hi = n_ones, A.shape[1] - n_zeros
    B, C = _rows_in_place(B), _rows_in_place(C)
    Al, Bl, Cl = A[:, lo:hi].contiguous(), B[:, lo:hi], C[:, lo:hi]
    B1, C1 = (B[:, 0], C[:, 0]) if n_ones else (None, None)
    if n_zeros == 1:  # one product, no sum over channels (one kernel fewer)
        Q = (B[:, hi].float() * C[:, hi].float()).contiguous()
    else:
        Q = (B[:, hi:].float() * C[:, hi:].float()).sum(1).contiguous() if n_zeros else None
    return Al, Bl, Cl, B1, C1, Q


def _check_fold(n_state, fixed):
    problem = fold_problem(n_state, *fixed)
    if problem:
        raise ValueError(f"ScanBlocks.fold_fixed with fixed_channels={tuple(fixed)}: {problem}")


def triton_forward_fold(u, delta, A, B, C, D, z, delta_bias, delta_softplus, fixed, block_t=None):
    """:func:`triton_forward` with the polarized channels ``fixed = (n_ones, n_zeros)`` folded into the kernel
    (``ScanBlocks.fold_fixed``): A, B, C hold every column ``[ones | learned | zeros]``, as ``scan_split`` takes
    them. Returns ``(out, learned tile-start states, last state (batch, d_inner, d_state) f32, the one-channel's
    tile-start states (batch, tiles, d_inner) f32 ((batch, 0, d_inner) without one), y before the gate like u (for
    the backward's dz; (0,) without z))``. Per tile the forward reads the next tile's inputs before this tile's
    arithmetic when ``ScanBlocks.fwd_prefetch``."""
    u, delta = u.contiguous(), delta.contiguous()
    z = z.contiguous() if z is not None else None
    _check_fold(A.shape[1], fixed)
    n_ones, n_zeros = fixed
    Al, Bl, Cl, B1, C1, Q = _fold_inputs(A.float(), B, C, n_ones, n_zeros)
    bsz, n_inner, seq = u.shape
    block_d, default_t, warps = ScanBlocks.fwd
    block_t = block_t or default_t
    n_tiles = math.ceil(seq / block_t)
    f32 = torch.float32
    out = torch.empty_like(u)
    states = torch.empty(bsz, n_tiles, n_inner, Al.shape[1], device=u.device, dtype=f32)
    last = torch.empty(bsz, n_inner, Al.shape[1], device=u.device, dtype=f32)
    states1 = torch.empty(bsz, n_tiles if n_ones else 0, n_inner, device=u.device, dtype=f32)
    last1 = torch.empty(bsz, n_inner, device=u.device, dtype=f32) if n_ones else None
    ypre = torch.empty_like(u) if z is not None else u.new_empty((0,))
    extra = {"PREFETCH": True} if ScanBlocks.fwd_prefetch else {}
    extra["EVEN"] = _fwd_even(seq, n_inner, Al.shape[1], block_d, block_t)
    fwd_kernel_tm[(bsz, triton.cdiv(n_inner, block_d))](
        u, delta, Al, Bl, Cl, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, out, states, last,
        n_inner, Al.shape[1], seq, N_TILES=n_tiles,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_N=_block_n(Al.shape[1]),
        BLOCK_T=block_t, num_warps=warps, maxnreg=ScanBlocks.fwd_maxnreg,
        B1_ptr=B1, C1_ptr=C1, Q_ptr=Q, states1_ptr=states1 if n_ones else None, last1_ptr=last1,
        ypre_ptr=ypre if z is not None else None, ONE=bool(n_ones), ZERO=bool(n_zeros), Y_OUT=z is not None,
        b_batch=Bl.stride(0), c_batch=Cl.stride(0), **extra,
    )
    parts = [last1[..., None]] if n_ones else []
    parts.append(last)
    if n_zeros:  # a zero-polarized state keeps only the last token: dt_L u_L B_L
        dt = delta[..., -1].float()
        if delta_bias is not None:
            dt = dt + delta_bias.float()
        if delta_softplus:
            dt = torch.nn.functional.softplus(dt)
        parts.append((dt * u[..., -1].float())[..., None] * B[:, A.shape[1] - n_zeros:, -1].float()[:, None, :])
    return out, states, torch.cat(parts, -1) if len(parts) > 1 else last, states1, ypre


def triton_backward_fold(saved, states, states1, fwd_tile, dout, delta_softplus, fixed, ypre):
    """Gradients of :func:`triton_forward_fold` (``triton_backward``'s contract, every column of A, B, C) from its
    saved outputs: the chunked backward with the polarized channels folded in, the gate's backward in the adjoint
    kernel (from ``ypre``); A's fixed columns get a zero gradient (as the split path's slice of A gives them: the
    model builds them as constants)."""
    u, delta, A, B, C, D, z, delta_bias = saved
    n_ones, n_zeros = fixed
    Al, Bl, Cl, B1, C1, Q = _fold_inputs(A.float(), B, C, n_ones, n_zeros)
    grads, (dB1, dC1, P) = _chunked(fwd_tile, states, delta_softplus, (u, delta, Al, Bl, Cl, D, z, delta_bias),
                                    dout.contiguous(), fixed=(B1, C1, Q, states1 if n_ones else None,
                                                              ypre if z is not None else None))
    du, ddelta, dAl, dBl, dCl, dD, dz, dbias = grads
    lo, hi = n_ones, A.shape[1] - n_zeros
    dA = torch.nn.functional.pad(dAl.float(), (lo, n_zeros))  # zeros in the fixed columns (one kernel)
    dBs, dCs = [dB1[:, None]] if n_ones else [], [dC1[:, None]] if n_ones else []
    dBs.append(dBl.float())
    dCs.append(dCl.float())
    if n_zeros:  # y += dt u sum_k B_k C_k: dB_k = C_k P, dC_k = B_k P with P = sum_d dy dt u
        dBs.append(C[:, hi:].float() * P[:, None])
        dCs.append(B[:, hi:].float() * P[:, None])
    return (du, ddelta, dA.to(A.dtype), torch.cat(dBs, 1).to(B.dtype), torch.cat(dCs, 1).to(C.dtype), dD, dz, dbias)


def triton_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_t=None):
    """Run the forward kernel: ``(out, tile-start states (batch, tiles, d_inner, d_state) f32, last state f32)``.

    Inputs are made contiguous here (the kernels index ``(batch, channel, time)`` rows); ``block_t``
    (default ``ScanBlocks.fwd[1]``) is the tile the states are stored at. With ``ScanBlocks.fwd_chunk``:
    the chunk-parallel forward (``scan_triton_fwdchunk``), same outputs.
    """
    u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
    A = A.contiguous().float()
    z = z.contiguous() if z is not None else None
    bsz, n_inner, seq = u.shape
    n_state = A.shape[1]
    block_d, default_t, warps = ScanBlocks.fwd
    block_t = block_t or default_t
    if ScanBlocks.fwd_chunk is not None:
        if ScanBlocks.variant != "time_first":
            raise ValueError(f"ScanBlocks.fwd_chunk={ScanBlocks.fwd_chunk!r} needs ScanBlocks.variant='time_first', "
                             f"got {ScanBlocks.variant!r}")
        from anybudget.ssm.scan_triton_fwdchunk import chunked_forward

        return chunked_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk=ScanBlocks.fwd_chunk,
                               tiles=(block_d, block_t, warps), block_n=_block_n(n_state),
                               prefetch=ScanBlocks.fwd_prefetch, maxnreg=ScanBlocks.fwd_maxnreg)
    n_tiles = math.ceil(seq / block_t)
    out = torch.empty_like(u)
    states = torch.empty(bsz, n_tiles, n_inner, n_state, device=u.device, dtype=torch.float32)
    last = torch.empty(bsz, n_inner, n_state, device=u.device, dtype=torch.float32)
    grid = (bsz, triton.cdiv(n_inner, block_d))
    extra = {"PREFETCH": True} if ScanBlocks.fwd_prefetch and ScanBlocks.variant == "time_first" else {}
    if ScanBlocks.variant == "time_first":  # every tile index in range: the kernel without masks
        extra["EVEN"] = _fwd_even(seq, n_inner, n_state, block_d, block_t)
    _kernels()[0][grid](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, out, states, last,
        n_inner, n_state, seq, N_TILES=n_tiles,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_N=_block_n(n_state),
        BLOCK_T=block_t, num_warps=warps, maxnreg=ScanBlocks.fwd_maxnreg, **extra,
    )
    return out, states, last


def triton_backward(saved, states, fwd_tile, dout, delta_softplus):
    """Gradients ``(du, ddelta, dA, dB, dC, dD, dz, dbias)`` (None where the input is None).

    ``saved = (u, delta, A, B, C, D, z, delta_bias)`` as the forward saw them (contiguous, A float32);
    ``states`` / ``fwd_tile``: the forward's tile-start states and tile. ``ScanBlocks.bwd_impl`` picks the kernel.
    """
    u, delta, A, B, C, D, z, delta_bias = saved
    dout = dout.contiguous()
    if ScanBlocks.bwd_impl == "chunked":
        return _chunked(fwd_tile, states, delta_softplus, saved, dout)
    if ScanBlocks.bwd_impl != "sequential":
        raise ValueError(f"ScanBlocks.bwd_impl={ScanBlocks.bwd_impl!r}; allowed: 'chunked', 'sequential'")
    bsz, n_inner, seq = u.shape
    n_state = A.shape[1]
    block_d, block_t, warps = ScanBlocks.bwd
    n_tiles = math.ceil(seq / block_t)
    if block_t != fwd_tile:
        # The backward recomputes h per tile from the stored tile-start states, so its tiles
        # must start where the forward's did; otherwise recompute the states at its tiling.
        states = _states_for_tiling(u, delta, A, B, C, delta_bias, delta_softplus, block_t)
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dB = torch.zeros(B.shape, device=u.device, dtype=torch.float32)
    dC = torch.zeros(C.shape, device=u.device, dtype=torch.float32)
    dA = torch.empty(bsz, n_inner, n_state, device=u.device, dtype=torch.float32)
    dD = torch.empty(bsz, n_inner, device=u.device, dtype=torch.float32)
    dbias = torch.empty(bsz, n_inner, device=u.device, dtype=torch.float32)
    grid = (bsz, triton.cdiv(n_inner, block_d))
    _kernels()[1][grid](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, dout, states,
        du, ddelta, dz if dz is not None else du, dB, dC, dA, dD, dbias,
        n_inner, n_state, seq, N_TILES=n_tiles,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_N=_block_n(n_state),
        BLOCK_T=block_t, num_warps=warps,
    )
    return (
        du, ddelta, dA.sum(0), dB.to(B.dtype), dC.to(C.dtype),
        dD.sum(0).to(D.dtype) if D is not None else None,
        dz,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
    )


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, fixed=None):
        u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
        A = A.contiguous().float()
        z = z.contiguous() if z is not None else None
        if fixed:
            out, states, last, ctx.states1, ctx.ypre = triton_forward_fold(u, delta, A, B, C, D, z, delta_bias,
                                                                           delta_softplus, fixed)
        else:
            out, states, last = triton_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.fwd_tile = ScanBlocks.fwd[1]
        ctx.fixed = fixed
        ctx.mark_non_differentiable(last)
        ctx.states = states
        return out, last

    @staticmethod
    def backward(ctx, dout, _dlast):
        if ctx.fixed:
            grads = triton_backward_fold(ctx.saved_tensors, ctx.states, ctx.states1, ctx.fwd_tile, dout,
                                         ctx.delta_softplus, ctx.fixed, ctx.ypre)
        else:
            grads = triton_backward(ctx.saved_tensors, ctx.states, ctx.fwd_tile, dout, ctx.delta_softplus)
        return (*grads, None, None)


def _chunked(fwd_tile, states, delta_softplus, saved, dout, fixed=None):
    from anybudget.ssm.scan_triton_bwd import chunked_backward

    if ScanBlocks.bwd_prefetch not in (False, True, "async"):
        raise ValueError(f"ScanBlocks.bwd_prefetch={ScanBlocks.bwd_prefetch!r}; allowed: False, True, 'async'")
    block_n = _block_n(saved[2].shape[1])
    bd, _, warps = ScanBlocks.bwd_chunked
    # A chunk that is not a multiple of the forward tile rebuilds its chunk-start states itself.
    bt = _bwd_chunk(block_n)
    if ScanBlocks.bwd_autotune and not saved[0].is_cuda:
        raise ValueError(f"ScanBlocks.bwd_autotune=True needs CUDA tensors, got {saved[0].device}; "
                         "triton.autotune times its configs on the device")
    gluon = ScanBlocks.bwd_gluon
    if gluon == "auto":  # where it can run: CUDA, Triton with Gluon, tiles its layouts hold
        gluon = saved[0].is_cuda and _gluon_available() and _gluon_tiles_fit(bd, block_n, bt, warps)
    if gluon:
        if not saved[0].is_cuda:
            raise ValueError(f"ScanBlocks.bwd_gluon=True needs CUDA tensors, got {saved[0].device}; Gluon kernels "
                             "have no CPU interpreter (bwd_gluon=False runs the Triton kernels there)")
        try:
            from anybudget.ssm.scan_gluon_bwd import check_tiles
        except ImportError as e:
            raise ValueError(f"ScanBlocks.bwd_gluon=True needs Triton with Gluon (triton.experimental.gluon, Triton "
                             f">= 3.5): {e}") from e

        check_tiles(bd, block_n, bt, warps)
    return chunked_backward(saved, states, fwd_tile, dout, delta_softplus, (bd, bt, warps),
                            block_n=block_n, target_programs=ScanBlocks.bwd_programs,
                            adjoint=ScanBlocks.bwd_adjoint, autotune=ScanBlocks.bwd_autotune,
                            prefetch=ScanBlocks.bwd_prefetch, maxnreg=ScanBlocks.bwd_maxnreg,
                            time_major=ScanBlocks.bwd_tm, gluon=bool(gluon), fixed=fixed)


def _states_for_tiling(u, delta, A, B, C, delta_bias, delta_softplus, block_t):
    bsz, n_inner, seq = u.shape
    n_tiles = math.ceil(seq / block_t)
    states = torch.empty(bsz, n_tiles, n_inner, A.shape[1], device=u.device, dtype=torch.float32)
    last = torch.empty(bsz, n_inner, A.shape[1], device=u.device, dtype=torch.float32)
    out = torch.empty_like(u)
    block_d, _, warps = ScanBlocks.fwd
    _kernels()[0][(bsz, triton.cdiv(n_inner, block_d))](
        u, delta, A, B, C, u, u, delta_bias if delta_bias is not None else u, out, states, last,
        n_inner, A.shape[1], seq, N_TILES=n_tiles,
        HAS_D=False, HAS_Z=False, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        BLOCK_D=block_d, BLOCK_N=_block_n(A.shape[1]), BLOCK_T=block_t, num_warps=warps,
    )
    return states


def selective_scan_triton(
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
    fixed_channels: tuple[int, int] | None = None,
):
    """Triton selective scan (forward + backward); contract of ``selective_scan_ref``.

    The last state is returned without gradient (it is for decoding). fp32 accumulation.
    ``fixed_channels = (n_ones, n_zeros)``: A's first n_ones columns are exactly 0 and its last n_zeros exactly -inf
    (the caller's promise, as ``scan.selective_scan`` takes it); they are folded into the kernels
    (``ScanBlocks.fold_fixed``'s path, whatever the flag; ``fold_problem`` lists what it needs) and A's fixed columns
    get a zero gradient.
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    fixed = tuple(int(x) for x in fixed_channels) if fixed_channels and any(fixed_channels) else None
    if fixed:
        _check_fold(A.shape[1], fixed)
    out, last = _SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, fixed)
    return (out, last) if return_last_state else out
