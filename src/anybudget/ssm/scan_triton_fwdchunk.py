"""Chunk-parallel time-major forward of the selective scan (``ScanBlocks.fwd_chunk``, opt-in).

Algorithm (chunks of ``fwd_chunk`` steps, a multiple of the forward tile):

1. ``_chunk_end_kernel``, one program per (batch, channel block, chunk): the chunk's end state from a
   zero start (the tile scan of ``fwd_kernel_tm`` without y, C or z) and ``S_c = sum_t dt_t``.
2. ``scan_triton_bwd._chunk_carry_kernel`` forward: ``H_{c+1} = Y_c + exp(A S_c) H_c``, ``H_0 = 0``;
   ``exp(A S_c) = prod_t A-bar_t`` (A = 0: 1; A = -inf: 0 exactly, ``discretize``; A = -100: finite).
3. ``_chunk_fwd_kernel``, one program per (batch, channel block, chunk): ``fwd_kernel_tm``'s tile
   loop over the chunk from its true start state ``H_c``: y (D u added and the z gate applied as
   there), every tile-start state and, in the last chunk, the last state.

Why: ``fwd_kernel_tm`` runs one program per (batch, channel block) over all ``seq / BLOCK_T`` tiles
in series; at batch 16, d_inner 256, 8 channels a block that is 512 programs of 256 dependent tiles,
too few warps an SM to hide the loads' and exps' latency (1.5 ms against a ~0.08 ms traffic bound).
With chunks, ``seq / fwd_chunk`` times more programs each walk ``fwd_chunk / BLOCK_T`` tiles.

The correction is not applied to a first pass's y and states (that would read and write y and
every stored state again): step 3 recomputes the chunk from its true start instead, so y and the
states are written once, exactly as today, and the backward reads them unchanged. The extra
traffic against ``fwd_kernel_tm`` (:func:`extra_bytes`, each tensor once): step 1 reads u and delta
again (2 x d_inner x seq x their element size) and B (d_state x seq); Y and H (d_inner x d_state a
chunk) and S (d_inner) are written once and read once, float32: (4 d_inner d_state + 2 d_inner) x 4
bytes a chunk. At fp32, batch 16, d_inner 256, 16 states, seq 4096, chunk 256: 147 MB, ~8.8 B per
(token, channel) on top of the whole-sequence forward's ~20 B (u, delta, out, the tile-start states;
z too where the kernel gates), ~0.045 ms at 3.35 TB/s. The last chunk's end state starts no chunk: its
step-1 reads are masked off. One chunk (seq <= fwd_chunk) runs step 3 alone (no extra traffic).

Registers at sm_90 (``benchmarks/ssm/scan_regs.py``, fp32, 16 states, tiles (8, 16, 4), chunk 256): step 3 as
``fwd_kernel_tm`` (88 with z and D, 77 without, as the split path runs it: 6 programs an SM), step 1 64 (8 programs,
496 SASS instructions against 680); no spills. Expectation, by occupancy alone (the forward is latency-bound): at
batch 16, d_inner 256, seq 4096 the whole-sequence forward's 512 programs fill ~4 of an SM's 6 slots for 256 tiles;
step 3's 8192 programs keep all 6 busy for ~165 tile-latencies, step 1 adds ~80 of its shorter ones: roughly
break-even unless more resident programs also shorten each tile's latency; a clear gain only where
batch x d_inner / BLOCK_D is below the GPU's slots (small batches), likely a small loss at MQAR's batch 128.

Opt-in (``fwd_chunk = None`` keeps ``fwd_kernel_tm``) until timed on a GPU
(``benchmarks/ssm/scan_bwd_speed.py``, ``train_speed.py``'s ``+fwdchunk`` variant). Same results
as the reference (tests/ssm/triton_interpret_check.py ``fwdchunk``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from anybudget.ssm.scan_triton_common import (
    channel_tile,
    combine,
    discretize,
    load_a_matrix,
    load_vec,
    softplus,
)
from anybudget.ssm.scan_triton_tm import _fwd_tm_load, _fwd_tm_tile

__all__ = ["chunked_forward", "extra_bytes"]


@triton.jit
def _end_load(u_ptr, delta_ptr, B_ptr, row, rowB, tile, t_loc, lim, mask_d, mask_n, BLOCK_T: tl.constexpr):
    """Step 1's raw reads of ``tile`` (u, delta, B as float32), steps at or past ``lim`` masked off (read as 0)."""
    offs_t = tile * BLOCK_T + t_loc
    mask_t = offs_t < lim
    m_td = mask_t[:, None] & mask_d[None, :]
    u = tl.load(u_ptr + row + offs_t[:, None], mask=m_td, other=0.0).to(tl.float32)  # (T, D)
    draw = tl.load(delta_ptr + row + offs_t[:, None], mask=m_td, other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + rowB + offs_t[:, None], mask=mask_t[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    return u, draw, Bt


@triton.jit
def _end_tile(u, draw, Bt, h, S, A_safe, a_zero, bias, tile, t_loc, lim, mask_d,
              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr):
    """One tile of step 1 from its reads: the state carried from a zero chunk start, and the running sum of dt."""
    mask_t = tile * BLOCK_T + t_loc < lim
    dt = draw  # load_dt's arithmetic after the raw read
    if HAS_BIAS:
        dt = dt + bias[None, :]
    if SOFTPLUS:
        dt = softplus(dt)
    dt = tl.where(mask_t[:, None] & mask_d[None, :], dt, 0.0)  # past the end: no time passes (S: real steps only)
    a = discretize(dt[:, :, None] * A_safe, a_zero)  # (T, D, N)
    a = tl.where(mask_t[:, None, None], a, 1.0)
    b = (dt * u)[:, :, None] * Bt[:, None, :]
    a_cum, h_loc = tl.associative_scan((a, b), axis=0, combine_fn=combine)
    hs = h_loc + a_cum * h[None, :, :]
    return tl.sum(tl.where((t_loc == BLOCK_T - 1)[:, None, None], hs, 0.0), axis=0), S + tl.sum(dt, axis=0)


@triton.jit
def _chunk_end_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, Y_ptr, S_ptr,
    n_inner, n_state, seq, n_chunks,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, TILES_PER_CHUNK: tl.constexpr,
    PREFETCH: tl.constexpr = False,
):
    # PREFETCH: tile i + 1's reads issued before tile i's arithmetic (the chunk's last one reads nothing).
    pid_b, pid_c = tl.program_id(0), tl.program_id(2)
    offs_d, offs_n, mask_d, mask_n = channel_tile(tl.program_id(1), n_inner, n_state, BLOCK_D, BLOCK_N)
    t_loc = tl.arange(0, BLOCK_T)
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A2, a_zero2 = load_a_matrix(A_ptr, offs_n[None, :], offs_d[:, None], mask_dn, n_state)
    A_safe, a_zero = A2[None, :, :], a_zero2[None, :, :]
    bias = load_vec(bias_ptr, offs_d, mask_d, HAS_BIAS)
    row = pid_b * n_inner * seq + offs_d[None, :] * seq  # (1, D)
    rowB = pid_b * n_state * seq + offs_n[None, :] * seq  # (1, N)
    # The last chunk's end state starts no chunk (the carry never stores it): no reads for it.
    lim = tl.where(pid_c == n_chunks - 1, 0, seq)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    S = tl.zeros((BLOCK_D,), dtype=tl.float32)
    first = pid_c * TILES_PER_CHUNK
    if PREFETCH:
        u, draw, Bt = _end_load(u_ptr, delta_ptr, B_ptr, row, rowB, first, t_loc, lim, mask_d, mask_n, BLOCK_T)
        for i in range(TILES_PER_CHUNK):
            tile = first + i
            nlim = tl.where(i + 1 < TILES_PER_CHUNK, lim, 0)
            nu, ndraw, nBt = _end_load(u_ptr, delta_ptr, B_ptr, row, rowB, tile + 1, t_loc, nlim, mask_d, mask_n,
                                       BLOCK_T)
            h, S = _end_tile(u, draw, Bt, h, S, A_safe, a_zero, bias, tile, t_loc, lim, mask_d, HAS_BIAS, SOFTPLUS,
                             BLOCK_T)
            u, draw, Bt = nu, ndraw, nBt
    else:
        for i in range(TILES_PER_CHUNK):
            tile = first + i
            u, draw, Bt = _end_load(u_ptr, delta_ptr, B_ptr, row, rowB, tile, t_loc, lim, mask_d, mask_n, BLOCK_T)
            h, S = _end_tile(u, draw, Bt, h, S, A_safe, a_zero, bias, tile, t_loc, lim, mask_d, HAS_BIAS, SOFTPLUS,
                             BLOCK_T)
    base = (pid_b * n_chunks + pid_c) * n_inner
    tl.store(Y_ptr + (base + offs_d[:, None]) * n_state + offs_n[None, :], h, mask=mask_dn)
    tl.store(S_ptr + base + offs_d, S, mask=mask_d)


@triton.jit
def _chunk_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, H_ptr,
    out_ptr, states_ptr, last_ptr,
    n_inner, n_state, seq, n_chunks,
    N_TILES: tl.constexpr, TILES_PER_CHUNK: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, PREFETCH: tl.constexpr = False,
):
    # fwd_kernel_tm over one chunk's tiles from the carried start state H[b, c] (HAS_H0) or zero. Tiles past
    # the sequence (the last chunk's) read nothing, store no state and leave h unchanged (a = 1, b = 0).
    pid_b, pid_c = tl.program_id(0), tl.program_id(2)
    offs_d, offs_n, mask_d, mask_n = channel_tile(tl.program_id(1), n_inner, n_state, BLOCK_D, BLOCK_N)
    t_loc = tl.arange(0, BLOCK_T)
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A2, a_zero2 = load_a_matrix(A_ptr, offs_n[None, :], offs_d[:, None], mask_dn, n_state)
    A_safe, a_zero = A2[None, :, :], a_zero2[None, :, :]
    bias = load_vec(bias_ptr, offs_d, mask_d, HAS_BIAS)
    Dv = load_vec(D_ptr, offs_d, mask_d, HAS_D)
    row = pid_b * n_inner * seq + offs_d[None, :] * seq  # (1, D)
    rowB = pid_b * n_state * seq + offs_n[None, :] * seq  # (1, N)
    st_off = offs_d[:, None] * n_state + offs_n[None, :]
    # Scalar conditions enter masks through a full (D, N) compare (the interpreter's & of a (D, N) mask with a
    # broadcast scalar comparison yields an int32 mask that tl.store refuses).
    idx_dn = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.int32)
    if HAS_H0:
        h = tl.load(H_ptr + (pid_b * n_chunks + pid_c) * n_inner * n_state + st_off, mask=mask_dn, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    first = pid_c * TILES_PER_CHUNK
    if PREFETCH:
        u, draw, Bt, Ct, z, _, _, _ = _fwd_tm_load(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, row, rowB, rowB, first,
                                                   t_loc, seq, mask_d, mask_n, HAS_Z, BLOCK_T)
        for i in range(TILES_PER_CHUNK):
            tile = first + i
            # The read after the chunk's last tile is masked off (no traffic) by limiting it to this chunk.
            nxt = tl.where(i + 1 < TILES_PER_CHUNK, tile + 1, N_TILES)
            nu, ndraw, nBt, nCt, nz, _, _, _ = _fwd_tm_load(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, row, rowB, rowB,
                                                            nxt, t_loc, seq, mask_d, mask_n, HAS_Z, BLOCK_T)
            h, _ = _fwd_tm_tile(u, draw, Bt, Ct, z, h, A_safe, a_zero, bias, Dv, out_ptr, states_ptr, row, st_off,
                                pid_b, tile, t_loc, seq, n_inner, n_state, mask_d,
                                mask_dn & (idx_dn + tile < N_TILES), N_TILES, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS,
                                BLOCK_T)
            u, draw, Bt, Ct, z = nu, ndraw, nBt, nCt, nz
    else:
        for i in range(TILES_PER_CHUNK):
            tile = first + i
            u, draw, Bt, Ct, z, _, _, _ = _fwd_tm_load(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, row, rowB, rowB, tile,
                                                       t_loc, seq, mask_d, mask_n, HAS_Z, BLOCK_T)
            h, _ = _fwd_tm_tile(u, draw, Bt, Ct, z, h, A_safe, a_zero, bias, Dv, out_ptr, states_ptr, row, st_off,
                                pid_b, tile, t_loc, seq, n_inner, n_state, mask_d,
                                mask_dn & (idx_dn + tile < N_TILES), N_TILES, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS,
                                BLOCK_T)
    tl.store(last_ptr + pid_b * n_inner * n_state + st_off, h, mask=mask_dn & (idx_dn + pid_c == n_chunks - 1))


def extra_bytes(bsz: int, d_inner: int, d_state: int, seq: int, chunk: int, elem: int = 4) -> int:
    """Bytes the chunked forward moves beyond ``fwd_kernel_tm`` (each tensor once, as ``scan_bound`` counts).

    Step 1 reads u, delta (``elem`` bytes each) and B for every chunk but the last; Y and S are written
    and read by the carry, which writes H for step 3 to read (float32). One chunk: 0.
    """
    n_chunks = -(-seq // chunk)
    if n_chunks == 1:
        return 0
    steps = (n_chunks - 1) * chunk
    reads = bsz * steps * (2 * d_inner + d_state) * elem
    return reads + bsz * n_chunks * (4 * d_inner * d_state + 2 * d_inner) * 4


def chunked_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, *, chunk, tiles, block_n, prefetch=False,
                    maxnreg=None, end_tiles=None):
    """``triton_forward``'s outputs ``(out, tile-start states, last state)`` by the three steps above.

    Inputs as ``triton_forward`` passes them (contiguous, A float32). ``tiles = (BLOCK_D, BLOCK_T, warps)``
    of the forward (step 3, and the states' tile); ``chunk``: a positive multiple of BLOCK_T;
    ``end_tiles``: step 1's (BLOCK_D, warps) (None: ``tiles``'); ``prefetch`` (steps 1 and 3) / ``maxnreg``
    (step 3) as ``ScanBlocks.fwd_prefetch`` / ``fwd_maxnreg``.
    """
    from anybudget.ssm.scan_triton_bwd import _chunk_carry_kernel

    block_d, block_t, warps = tiles
    if not isinstance(chunk, int) or chunk <= 0 or chunk % block_t:
        raise ValueError(f"ScanBlocks.fwd_chunk={chunk!r}: must be a positive multiple of the forward tile "
                         f"BLOCK_T={block_t} (or None)")
    bsz, n_inner, seq = u.shape
    n_state = A.shape[1]
    n_tiles = math.ceil(seq / block_t)
    n_chunks = math.ceil(seq / chunk)
    dev, f32 = u.device, torch.float32
    out = torch.empty_like(u)
    states = torch.empty(bsz, n_tiles, n_inner, n_state, device=dev, dtype=f32)
    last = torch.empty(bsz, n_inner, n_state, device=dev, dtype=f32)
    bb = delta_bias if delta_bias is not None else u
    H = u  # unused when there is one chunk
    if n_chunks > 1:
        end_d, end_warps = end_tiles if end_tiles is not None else (block_d, warps)
        Y = torch.empty(bsz, n_chunks, n_inner, n_state, device=dev, dtype=f32)
        S = torch.empty(bsz, n_chunks, n_inner, device=dev, dtype=f32)
        _chunk_end_kernel[(bsz, triton.cdiv(n_inner, end_d), n_chunks)](
            u, delta, A, B, bb, Y, S, n_inner, n_state, seq, n_chunks,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), BLOCK_D=end_d, BLOCK_N=block_n,
            BLOCK_T=block_t, TILES_PER_CHUNK=chunk // block_t, PREFETCH=bool(prefetch), num_warps=end_warps)
        H = torch.empty_like(Y)
        block_c, block_j = 16, 256
        _chunk_carry_kernel[(bsz, triton.cdiv(n_inner * n_state, block_j))](
            A, Y, S, H, n_inner, n_state, n_chunks, REVERSE=False, BLOCK_C=block_c, BLOCK_J=block_j,
            N_BLOCKS=triton.cdiv(n_chunks, block_c), num_warps=4)
    _chunk_fwd_kernel[(bsz, triton.cdiv(n_inner, block_d), n_chunks)](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u, bb, H, out, states, last,
        n_inner, n_state, seq, n_chunks, N_TILES=n_tiles, TILES_PER_CHUNK=min(chunk, n_tiles * block_t) // block_t,
        HAS_H0=n_chunks > 1, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, PREFETCH=bool(prefetch),
        num_warps=warps, maxnreg=maxnreg)
    return out, states, last
