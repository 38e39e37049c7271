"""Run in a subprocess by test_triton.py: the Triton scan under TRITON_INTERPRET=1 vs the reference.

TRITON_INTERPRET must be set before triton is first imported, hence a separate process.
Prints one line per case and exits non-zero on the first mismatch.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch

sys.path.insert(0, os.path.dirname(__file__))
from ssm_helpers import scan_inputs

from anybudget.ssm.scan import selective_scan_ref
from anybudget.ssm.scan_triton import ScanBlocks, selective_scan_triton

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def check(b, d, seq, n, polar, optional=True, softplus=True, fwd=(8, 32, 4), bwd=(4, 32, 4), dtype=torch.float32,
          variant="time_last", impl="sequential", chunked=(4, 32, 4), programs=512, adjoint=None, prefetch=False,
          fwd_prefetch=False, time_major=False, fwd_chunk=None, a_last=None):
    ScanBlocks.bwd_tm, ScanBlocks.fwd_chunk = time_major, fwd_chunk
    ScanBlocks.fwd, ScanBlocks.bwd, ScanBlocks.variant, ScanBlocks.fwd_prefetch = fwd, bwd, variant, fwd_prefetch
    ScanBlocks.bwd_impl, ScanBlocks.bwd_chunked, ScanBlocks.bwd_programs = impl, chunked, programs
    ScanBlocks.bwd_adjoint, ScanBlocks.bwd_prefetch = adjoint, prefetch
    ins = [t.detach().float() for t in scan_inputs(b, d, seq, n, polar=polar, seed=seq + n)]
    if a_last is not None:  # e.g. the reference code's zero-polarized form A = -100 instead of -inf
        ins[2][:, -1] = a_last
    if not softplus:
        ins[1] = ins[1].abs() * 0.3
    if not optional:
        ins[5] = ins[6] = ins[7] = None
    ins = [t.requires_grad_() if t is not None else None for t in ins]
    ins_t = [t.detach().to(dtype).requires_grad_() if i in (0, 1, 3, 4, 6) and t is not None
             else (t.detach().clone().requires_grad_() if t is not None else None) for i, t in enumerate(ins)]
    o1, h1 = selective_scan_ref(*ins, delta_softplus=softplus, return_last_state=True)
    o2, h2 = selective_scan_triton(*ins_t, delta_softplus=softplus, return_last_state=True)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 3e-2, "atol": 3e-2}
    assert o2.dtype == dtype
    torch.testing.assert_close(o2.float(), o1.float(), **tol)
    torch.testing.assert_close(h2, h1, **tol)
    g = torch.randn(o1.shape, generator=torch.Generator().manual_seed(0))
    idx = [i for i, t in enumerate(ins) if t is not None]
    g1 = torch.autograd.grad((o1 * g).sum(), [ins[i] for i in idx])
    g2 = torch.autograd.grad((o2.float() * g).sum(), [ins_t[i] for i in idx])
    for i, a, c in zip(idx, g1, g2):
        assert torch.isfinite(c).all(), NAMES[i]
        scale = a.abs().max().clamp_min(1.0)
        err = ((c.float() - a).abs().max() / scale).item()
        assert err < (1e-4 if dtype == torch.float32 else 5e-2), f"grad {NAMES[i]}: rel err {err:.2e}"
    print(f"ok b={b} d={d} seq={seq} n={n} polar={polar} optional={optional} softplus={softplus} "
          f"fwd={fwd} bwd={bwd} {dtype} {variant} {impl} {chunked if impl == 'chunked' else ''} adjoint={adjoint}",
          f"prefetch={prefetch} fwd_prefetch={fwd_prefetch} time_major={time_major} fwd_chunk={fwd_chunk} "
          f"a_last={a_last}", flush=True)
    ScanBlocks.bwd_adjoint, ScanBlocks.bwd_prefetch, ScanBlocks.fwd_prefetch = None, False, False
    ScanBlocks.bwd_tm, ScanBlocks.fwd_chunk = False, None


def check_split(variant, impl="sequential"):
    """The dispatch's split path: Triton over the learned columns, polarized ones in closed form."""
    from anybudget.ssm.scan import selective_scan

    ScanBlocks.fwd, ScanBlocks.bwd, ScanBlocks.variant = (4, 16, 4), (4, 16, 4), variant
    ScanBlocks.bwd_impl, ScanBlocks.bwd_chunked = impl, (4, 16, 4)
    ins = [t.detach().float().requires_grad_() for t in scan_inputs(2, 5, 37, 6, polar=True, seed=11)]
    o1, h1 = selective_scan_ref(*ins, delta_softplus=True, return_last_state=True)
    o2, h2 = selective_scan(*ins, delta_softplus=True, return_last_state=True, backend="triton", fixed_channels=(1, 1))
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h2, h1, rtol=1e-4, atol=1e-4)
    leaves = [t for i, t in enumerate(ins) if i != 2]
    for a, c in zip(torch.autograd.grad(o1.sum(), leaves), torch.autograd.grad(o2.sum(), leaves)):
        assert ((c - a).abs().max() / a.abs().max().clamp_min(1.0)).item() < 1e-4
    print(f"ok split fixed channels {variant} {impl}", flush=True)


def sequential_cases():
    """The layouts' own backward kernels (``ScanBlocks.bwd_impl = "sequential"``)."""
    check_split("time_last")
    check_split("time_first")
    check(2, 5, 37, 6, polar=True)  # two tiles, masked channels (5 of 8) and states (6 of 8)
    check(1, 3, 20, 3, polar=False, optional=False, softplus=False)
    check(2, 8, 45, 18, polar=True, fwd=(4, 16, 4), bwd=(8, 8, 4))  # backward tiling differs
    check(1, 4, 33, 4, polar=True, dtype=torch.bfloat16)
    # The time-major tiles: same cases (tile edges, masks, a different backward tiling, bf16).
    check(2, 5, 37, 6, polar=True, fwd=(4, 16, 4), bwd=(4, 16, 4), variant="time_first")
    check(1, 3, 20, 3, polar=False, optional=False, softplus=False, fwd=(4, 8, 4), bwd=(4, 8, 4),
          variant="time_first")
    check(2, 8, 45, 18, polar=True, fwd=(4, 16, 4), bwd=(8, 8, 4), variant="time_first")
    check(1, 4, 33, 4, polar=True, dtype=torch.bfloat16, fwd=(4, 16, 4), bwd=(4, 16, 4), variant="time_first")


def chunked_cases():
    """The chunk-parallel backward (``scan_triton_bwd``)."""
    # The chunk-parallel backward (scan_triton_bwd): chunk = forward tile, a multiple of it, not a
    # multiple (chunk-start states rebuilt in closed form), more than 16 chunks (carried across the carry kernel's chunk
    # blocks), channel split on and off, masked channels/states, no optional inputs, bf16, the split path.
    check_split("time_last", "chunked")
    check(2, 5, 37, 6, polar=True, impl="chunked")
    check(2, 5, 37, 6, polar=True, fwd=(4, 8, 4), impl="chunked", chunked=(2, 16, 4), programs=1)
    check(1, 3, 20, 3, polar=False, optional=False, softplus=False, fwd=(4, 16, 4), impl="chunked",
          chunked=(4, 8, 4))
    check(1, 6, 75, 18, polar=True, fwd=(4, 4, 4), impl="chunked", chunked=(4, 4, 4))
    # 3 channel blocks over a split of 2: the second program's last block is past the end (fully masked).
    check(1, 10, 20, 5, polar=True, fwd=(4, 16, 4), impl="chunked", chunked=(4, 16, 4))
    check(1, 6, 75, 18, polar=True, fwd=(4, 8, 4), impl="chunked", chunked=(4, 4, 4))  # own states, 19 chunks
    check(1, 3, 40, 18, polar=True, fwd=(4, 32, 4), impl="chunked", chunked=(4, 32, 4))  # 32 padded states: chunk 16
    check(2, 8, 45, 5, polar=True, fwd=(4, 16, 4), impl="chunked", chunked=(8, 16, 4), variant="time_first")
    check(1, 4, 33, 4, polar=True, dtype=torch.bfloat16, fwd=(4, 16, 4), impl="chunked", chunked=(4, 16, 4))
    ins = [t.detach().float().requires_grad_() for t in scan_inputs(1, 2, 5, 2, seed=1)]
    default = ScanBlocks.bwd_impl
    ScanBlocks.bwd_impl = "fast"
    try:
        selective_scan_triton(*ins, delta_softplus=True).sum().backward()
    except ValueError as e:
        assert "bwd_impl='fast'" in str(e) and "'chunked', 'sequential'" in str(e), e
    else:
        raise AssertionError("an unknown ScanBlocks.bwd_impl must raise")
    ScanBlocks.bwd_impl = default
    print("ok unknown bwd_impl refused", flush=True)


class FixedTuner:
    """Stands in for a ``triton.autotune`` kernel under the interpreter: launches one given config."""

    def __init__(self, fn, block_d, warps, tm=None):
        self.fn, self.block_d, self.warps, self.extra = fn, block_d, warps, {} if tm is None else {"TM": tm}

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            g = grid({"BLOCK_D": self.block_d}) if callable(grid) else grid
            return self.fn[g](*args, BLOCK_D=self.block_d, num_warps=self.warps, **self.extra, **kwargs)
        return launch


def check_tuned(grads_cfg, adj_cfg, b=1, d=10, seq=21, n=6, chunk=16, tiles_d=4, programs=512, prefetch=False,
                time_major=False):
    """The autotuned launch path (``chunked_backward(autotune=True)``) with one config of each list forced."""
    from anybudget.ssm import scan_triton_bwd as sb
    from anybudget.ssm import scan_triton_bwd_tm as sbt
    from anybudget.ssm.scan_triton import _block_n, triton_forward

    saved = sb._GRADS_TUNED, sb._ADJOINT_TUNED, sbt.grads_any_tuned, sbt.adjoint_any_tuned
    sb._GRADS_TUNED = FixedTuner(sb._grads, *grads_cfg[:2])  # maxnreg (a ptxas option) means nothing here
    # time_major: the combined tuner's config (BLOCK_D, warps[, maxnreg][, TM]) forced, TM (default True) included.
    sbt.grads_any_tuned = FixedTuner(sbt.grads_any, *grads_cfg[:2], tm=grads_cfg[3] if len(grads_cfg) > 3 else True)
    # and the adjoint's (BLOCK_D, warps[, TM]).
    sbt.adjoint_any_tuned = FixedTuner(sbt._chunk_adjoint_any_kernel, *adj_cfg[:2],
                                       tm=adj_cfg[2] if len(adj_cfg) > 2 else True)
    sb._ADJOINT_TUNED = FixedTuner(sb._chunk_adjoint_kernel, *adj_cfg)
    try:
        ScanBlocks.fwd, ScanBlocks.variant = (4, chunk, 4), "time_first"
        ins = [t.detach().float().requires_grad_() for t in scan_inputs(b, d, seq, n, polar=True, seed=seq + d)]
        o1 = selective_scan_ref(*ins, delta_softplus=True)
        g = torch.randn(o1.shape, generator=torch.Generator().manual_seed(0))
        g1 = torch.autograd.grad((o1 * g).sum(), ins)
        x = [t.detach() for t in ins]
        out, states, _ = triton_forward(*x, True)
        torch.testing.assert_close(out, o1, rtol=1e-4, atol=1e-4)
        g2 = sb.chunked_backward(x, states, chunk, g, True, (tiles_d, chunk, 4), block_n=_block_n(n),
                                 target_programs=programs, autotune=True, prefetch=prefetch, time_major=time_major)
    finally:
        sb._GRADS_TUNED, sb._ADJOINT_TUNED, sbt.grads_any_tuned, sbt.adjoint_any_tuned = saved
    for i, a, c in zip(range(8), g1, g2):
        err = ((c.float() - a).abs().max() / a.abs().max().clamp_min(1.0)).item()
        assert err < 1e-4, f"tuned grads={grads_cfg} adjoint={adj_cfg} grad {NAMES[i]}: rel err {err:.2e}"
    print(f"ok tuned grads={grads_cfg} adjoint={adj_cfg} d={d} seq={seq} chunk={chunk} programs={programs} "
          f"prefetch={prefetch} time_major={time_major}", flush=True)


def bwd_tm_cases():
    """The time-major adjoint and grads kernels (``ScanBlocks.bwd_tm``): every autotune config, uneven channel/chunk
    splits, chunk-start states rebuilt, padded states, no optional inputs, bf16, the split path."""
    from anybudget.ssm.scan_triton_bwd import ADJOINT_CONFIGS, GRADS_CONFIGS
    from anybudget.ssm.scan_triton_bwd_tm import GRADS_TM_CONFIGS

    # 10 channels, seq 21 (see tuned_cases): partial channel blocks, a partial last chunk, a fully masked program.
    # The combined tuner's time-major configs, and two of the default kernel's through it (TM=False, prefetch on one).
    for i, gc in enumerate(GRADS_TM_CONFIGS):
        check_tuned(gc, ADJOINT_CONFIGS[i % len(ADJOINT_CONFIGS)], programs=1 if i % 2 else 512, time_major=True)
    check_tuned((*GRADS_CONFIGS[0], False), (*ADJOINT_CONFIGS[0], False), programs=512, time_major=True,
                prefetch=True)
    check_tuned((*GRADS_CONFIGS[5], False), ADJOINT_CONFIGS[-1], programs=1, time_major=True)
    # The time-major adjoint's own tile (ScanBlocks.bwd_adjoint) through the public function, chunk-start states
    # rebuilt (its STATES path) at 32 padded states.
    check(1, 10, 21, 6, polar=True, fwd=(4, 16, 4), impl="chunked", chunked=(4, 16, 4), adjoint=(16, 4),
          time_major=True)
    check(1, 3, 40, 18, polar=True, fwd=(4, 32, 4), impl="chunked", chunked=(4, 8, 4), adjoint=(2, 2),
          time_major=True)
    check(2, 5, 37, 6, polar=True, fwd=(4, 16, 4), impl="chunked", chunked=(4, 16, 4), variant="time_first",
          time_major=True)
    check(1, 10, 20, 5, polar=True, fwd=(4, 16, 4), impl="chunked", chunked=(4, 16, 4), time_major=True)
    check(2, 8, 64, 4, polar=True, fwd=(4, 16, 4), impl="chunked", chunked=(4, 16, 4), variant="time_first",
          time_major=True, fwd_prefetch=True)  # EVEN: no masks in the forward and the adjoint
    check(1, 6, 75, 18, polar=True, fwd=(4, 16, 4), impl="chunked", chunked=(4, 8, 4), time_major=True)  # own states
    check(1, 3, 20, 3, polar=False, optional=False, softplus=False, fwd=(4, 16, 4), impl="chunked",
          chunked=(2, 8, 4), time_major=True)
    check(1, 4, 21, 4, polar=True, dtype=torch.bfloat16, fwd=(4, 16, 4), impl="chunked", chunked=(2, 16, 4),
          time_major=True)
    ScanBlocks.bwd_tm = True
    try:
        check_split("time_first", "chunked")
    finally:
        ScanBlocks.bwd_tm = False


def tuned_cases():
    """Every config the autotuned backward may pick, an adjoint tile of its own, uneven channel/chunk splits."""
    from anybudget.ssm.scan_triton_bwd import ADJOINT_CONFIGS, GRADS_CONFIGS

    # 10 channels: every BLOCK_D leaves a partial block; seq 21: a partial last chunk. programs=512 splits the
    # channel blocks over 2 programs (chosen from tiles_d=4: 3 blocks), which BLOCK_D 16 leaves with a fully
    # masked program (zero partials); programs=1: no split, one program loops over every block.
    # Prefetch on every other config: the next block's loads (fully masked after the last block) change nothing.
    for i, gc in enumerate(GRADS_CONFIGS):
        check_tuned(gc, ADJOINT_CONFIGS[i % len(ADJOINT_CONFIGS)], programs=1 if i % 2 else 512,
                    prefetch=i % 3 != 1)
    check_tuned((8, 4), ADJOINT_CONFIGS[-1], d=6, seq=45, n=18, chunk=8)  # 6 chunks, 32 padded states
    # ScanBlocks.bwd_adjoint through the public function: wider and narrower than the grads' channel block.
    check(1, 10, 21, 6, polar=True, fwd=(4, 16, 4), impl="chunked", chunked=(4, 16, 4), adjoint=(16, 4))
    check(1, 5, 21, 5, polar=True, fwd=(4, 16, 4), impl="chunked", chunked=(8, 16, 4), adjoint=(2, 2),
          variant="time_first", programs=1)
    # Prefetch through the public function: no optional inputs (no z, D, bias), bf16, 2 channel blocks.
    check(1, 3, 20, 3, polar=False, optional=False, softplus=False, fwd=(4, 16, 4), impl="chunked",
          chunked=(2, 8, 4), prefetch=True)
    check(1, 4, 21, 4, polar=True, dtype=torch.bfloat16, fwd=(4, 16, 4), impl="chunked", chunked=(2, 16, 4),
          prefetch=True)
    ScanBlocks.bwd_maxnreg = ScanBlocks.fwd_maxnreg = 168  # the launches pass them on (the interpreter ignores them)
    check(1, 3, 20, 3, polar=True, fwd=(4, 16, 4), impl="chunked", chunked=(2, 16, 4), variant="time_first")
    ScanBlocks.bwd_maxnreg = ScanBlocks.fwd_maxnreg = None
    # The time_first forward's prefetch (chunk-start states from it, and rebuilt at a shorter chunk; no z).
    check(1, 5, 37, 6, polar=True, fwd=(4, 16, 4), variant="time_first", impl="chunked", chunked=(4, 16, 4),
          prefetch=True, fwd_prefetch=True)
    check(1, 3, 20, 3, polar=False, optional=False, softplus=False, fwd=(4, 16, 4), variant="time_first",
          impl="chunked", chunked=(4, 8, 4), fwd_prefetch=True)
    ins = [t.detach().float().requires_grad_() for t in scan_inputs(1, 2, 5, 2, seed=1)]
    ScanBlocks.bwd_impl, ScanBlocks.bwd_autotune = "chunked", True
    try:
        selective_scan_triton(*ins, delta_softplus=True).sum().backward()
    except ValueError as e:
        assert "bwd_autotune" in str(e) and "CUDA" in str(e), e
    else:
        raise AssertionError("bwd_autotune on CPU tensors must raise")
    finally:
        ScanBlocks.bwd_autotune = False
    print("ok bwd_autotune refused off CUDA", flush=True)


def check_fold(b, d, seq, n, fixed, optional=True, softplus=True, fwd=(4, 16, 4), chunked=(4, 16, 4),
               dtype=torch.float32, backend="triton", compiled=False, fwd_prefetch=False, bc="contiguous"):
    """ScanBlocks.fold_fixed: the polarized channels inside the time-major kernels, through the public dispatch,
    vs the reference over every column; the split path (PyTorch ops around the kernels) must not run. ``bc``: B and C
    contiguous, or "sliced" (columns of a wider tensor: rows in place at another batch stride, read without a
    copy) or "transposed" ((batch, seq, state) memory: copied once)."""
    from anybudget.ssm import scan_split
    from anybudget.ssm.scan import selective_scan
    from anybudget.ssm.scan_op import selective_scan_op

    n_ones, n_zeros = fixed
    ScanBlocks.fwd, ScanBlocks.variant, ScanBlocks.bwd_impl, ScanBlocks.bwd_chunked = fwd, "time_first", "chunked", \
        chunked
    ScanBlocks.bwd_tm, ScanBlocks.fold_fixed, ScanBlocks.fwd_prefetch = True, True, fwd_prefetch
    ins = [t.detach().float() for t in scan_inputs(b, d, seq, n, polar=False, seed=seq + n + 7 * n_zeros)]
    ins[2][:, :n_ones] = 0.0
    if n_zeros:
        ins[2][:, n - n_zeros:] = float("-inf")
    if not softplus:
        ins[1] = ins[1].abs() * 0.3
    if not optional:
        ins[5] = ins[6] = ins[7] = None
    ins = [t.requires_grad_() if t is not None else None for t in ins]
    ins_t = [t.detach().to(dtype if i in (0, 1, 3, 4, 6) else torch.float32).requires_grad_() if t is not None
             else None for i, t in enumerate(ins)]
    for i in (3, 4):  # the same values in another memory layout; gradients are taken w.r.t. these views
        if bc == "sliced":
            wide = torch.zeros(b, n + 3, seq, dtype=ins_t[i].dtype)
            wide[:, 2:n + 2] = ins_t[i].detach()
            wide.requires_grad_()
            ins_t[i] = wide[:, 2:n + 2]
        elif bc == "transposed":
            ins_t[i] = ins_t[i].detach().transpose(1, 2).contiguous().requires_grad_().transpose(1, 2)

    def split_must_not_run(*a, **k):
        raise AssertionError("fold_fixed ran the split path")

    def run(*a):
        if backend == "op":  # the custom op's Triton impl (the dispatch picks it on CUDA tensors only)
            return selective_scan_op(*a, delta_softplus=softplus, return_last_state=True, impl="triton",
                                     fixed_channels=fixed)
        return selective_scan(*a, delta_softplus=softplus, return_last_state=True, backend=backend,
                              fixed_channels=fixed)

    saved = scan_split.selective_scan_split
    scan_split.selective_scan_split = split_must_not_run
    try:
        fn = torch.compile(run, backend="aot_eager", fullgraph=True) if compiled else run
        o1, h1 = selective_scan_ref(*ins, delta_softplus=softplus, return_last_state=True)
        o2, h2 = fn(*ins_t)
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        assert o2.dtype == dtype
        torch.testing.assert_close(o2.float(), o1, rtol=tol, atol=tol)
        torch.testing.assert_close(h2, h1, rtol=tol, atol=tol)
        g = torch.randn(o1.shape, generator=torch.Generator().manual_seed(0))
        idx = [i for i, t in enumerate(ins) if t is not None]
        g1 = torch.autograd.grad((o1 * g).sum(), [ins[i] for i in idx])
        g2 = torch.autograd.grad((o2.float() * g).sum(), [ins_t[i] for i in idx])
    finally:
        scan_split.selective_scan_split = saved
        ScanBlocks.bwd_tm, ScanBlocks.fold_fixed, ScanBlocks.fwd_prefetch = False, False, False
        ScanBlocks.variant = "time_last"
    for i, a, c in zip(idx, g1, g2):
        assert c.dtype == ins_t[i].dtype and torch.isfinite(c).all(), NAMES[i]
        if i == 2:  # A's fixed columns: constants in the model, a zero gradient here (as the split path's slice)
            assert (c[:, :n_ones] == 0).all() and (c[:, n - n_zeros:] == 0).all(), "dA of a fixed column"
            a, c = a[:, n_ones:n - n_zeros], c[:, n_ones:n - n_zeros]
        err = ((c.float() - a).abs().max() / a.abs().max().clamp_min(1.0)).item()
        assert err < (1e-4 if dtype == torch.float32 else 5e-2), f"fold grad {NAMES[i]}: rel err {err:.2e}"
    print(f"ok fold b={b} d={d} seq={seq} n={n} fixed={fixed} optional={optional} softplus={softplus} fwd={fwd} "
          f"chunked={chunked} {dtype} {backend} compiled={compiled} fwd_prefetch={fwd_prefetch} bc={bc}", flush=True)


def fold_cases():
    """ScanBlocks.fold_fixed: one / zero / both polarized kinds, two zero channels, a partial last tile and masked
    channels, chunks of two forward tiles over more than one carry block, no optional inputs, bf16, the forward's
    prefetch, the custom op eager and traced; settings the fold cannot run are refused by name when asked for
    directly and run the split path through the dispatch."""
    check_fold(2, 5, 37, 6, (1, 1))
    check_fold(2, 5, 37, 6, (1, 1), bc="sliced")  # B, C columns read in place at a wider batch stride
    check_fold(1, 8, 48, 6, (1, 1), bc="transposed", fwd_prefetch=True)
    # every tile index in range (EVEN: the kernels without masks), with and without the forward's prefetch
    check_fold(2, 8, 64, 6, (1, 1))
    check_fold(1, 8, 48, 6, (1, 1), fwd_prefetch=True)
    check_fold(1, 6, 45, 7, (1, 2), chunked=(2, 32, 4))
    check_fold(1, 3, 21, 5, (0, 1), optional=False, softplus=False)
    check_fold(2, 4, 300, 5, (1, 0), fwd=(4, 8, 4), chunked=(4, 8, 4))  # 38 chunks: the carry's blocks of 16
    check_fold(1, 4, 33, 6, (1, 1), dtype=torch.bfloat16)
    check_fold(1, 5, 37, 6, (1, 1), fwd_prefetch=True)
    check_fold(2, 5, 37, 6, (1, 1), backend="op")
    check_fold(1, 5, 37, 6, (1, 1), backend="op", compiled=True)
    from anybudget.ssm import scan_split
    from anybudget.ssm.scan import selective_scan

    ins = [t.detach().float() for t in scan_inputs(1, 3, 20, 5, polar=True, seed=3)]
    ref = selective_scan_ref(*ins, delta_softplus=True)
    calls, real = [], scan_split.selective_scan_split
    scan_split.selective_scan_split = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        for setting, value, needle in (("variant", "time_last", "variant='time_last'"), ("bwd_tm", False, "bwd_tm"),
                                       ("fwd_chunk", 16, "fwd_chunk")):
            ScanBlocks.variant, ScanBlocks.bwd_tm, ScanBlocks.fold_fixed, ScanBlocks.bwd_impl = "time_first", True, \
                True, "chunked"
            setattr(ScanBlocks, setting, value)
            try:  # asked for directly: refused, naming the setting
                selective_scan_triton(*ins, delta_softplus=True, fixed_channels=(1, 1))
            except ValueError as e:
                assert needle in str(e) and "fold_fixed" in str(e), e
            else:
                raise AssertionError(f"fold with {setting}={value!r} must raise")
            # through the dispatch (what the model and ScanBlocks.preset run): the split path, same results
            n = len(calls)
            out = selective_scan(*ins, delta_softplus=True, backend="triton", fixed_channels=(1, 1))
            assert len(calls) == n + 1, setting
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    finally:
        scan_split.selective_scan_split = real
        ScanBlocks.variant, ScanBlocks.bwd_tm, ScanBlocks.fold_fixed, ScanBlocks.fwd_chunk = "time_last", False, \
            False, None
    from anybudget.ssm.scan_triton import fold_problem

    ScanBlocks.variant, ScanBlocks.bwd_tm = "time_first", True
    assert "n_ones=2" in fold_problem(6, 2, 1) and "learned column" in fold_problem(2, 1, 1)
    assert fold_problem(6, 1, 1) is None
    ScanBlocks.variant, ScanBlocks.bwd_tm = "time_last", False
    print("ok fold settings refused by name (direct) or run split (dispatch)", flush=True)


def check_op(b, d, seq, n, impl="chunked", fwd=(4, 16, 4), chunked=(4, 16, 4), transposed=False, compiled=False,
             fixed=None, dtype=torch.float32, variant="time_last"):
    """The custom op (``scan_op``, impl "triton") vs the reference: forward, last state, every gradient."""
    from anybudget.ssm.scan import selective_scan
    from anybudget.ssm.scan_op import selective_scan_op

    ScanBlocks.fwd, ScanBlocks.variant, ScanBlocks.bwd_impl, ScanBlocks.bwd_chunked = fwd, variant, impl, chunked
    ScanBlocks.bwd = fwd
    ins = [t.detach().float().requires_grad_() for t in scan_inputs(b, d, seq, n, polar=True, seed=seq + n)]
    # Non-contiguous inputs, as a (batch, seq, channel) producer gives them: the op must copy them itself.
    ins_t = [t.detach().to(dtype if i in (0, 1, 3, 4, 6) else torch.float32) for i, t in enumerate(ins)]
    if transposed:
        ins_t = [t.transpose(1, 2).contiguous().transpose(1, 2) if t.dim() == 3 else t for t in ins_t]
    ins_t = [t.requires_grad_() for t in ins_t]

    def run(*a):
        if fixed:
            return selective_scan(*a, delta_softplus=True, return_last_state=True, backend="op", fixed_channels=fixed)
        return selective_scan_op(*a, delta_softplus=True, return_last_state=True, impl="triton")

    fn = torch.compile(run, backend="aot_eager", fullgraph=True) if compiled else run
    o1, h1 = selective_scan_ref(*ins, delta_softplus=True, return_last_state=True)
    o2, h2 = fn(*ins_t)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(o2.float(), o1, rtol=tol, atol=tol)
    torch.testing.assert_close(h2, h1, rtol=tol, atol=tol)
    g = torch.randn(o1.shape, generator=torch.Generator().manual_seed(0))
    leaves = [i for i in range(8) if not (fixed and i == 2)]  # split path: A's fixed columns have no gradient
    g1 = torch.autograd.grad((o1 * g).sum(), [ins[i] for i in leaves])
    g2 = torch.autograd.grad((o2.float() * g).sum(), [ins_t[i] for i in leaves])
    for i, a, c in zip(leaves, g1, g2):
        assert c.dtype == ins_t[i].dtype and torch.isfinite(c).all(), NAMES[i]
        err = ((c.float() - a).abs().max() / a.abs().max().clamp_min(1.0)).item()
        assert err < (1e-4 if dtype == torch.float32 else 5e-2), f"op grad {NAMES[i]}: rel err {err:.2e}"
    print(f"ok op b={b} d={d} seq={seq} n={n} {impl} transposed={transposed} compiled={compiled} fixed={fixed} "
          f"{dtype} {variant}", flush=True)
    ScanBlocks.variant = "time_last"


def op_cases():
    """The custom op around the Triton kernels (what torch.compile sees): eager and traced (aot_eager)."""
    check_op(2, 5, 37, 6)
    check_op(2, 5, 37, 6, impl="sequential", transposed=True)
    check_op(1, 4, 33, 4, dtype=torch.bfloat16, transposed=True)
    check_op(2, 5, 37, 6, compiled=True, fixed=(1, 1), transposed=True)
    # train_speed's time_first variants: time-major forward tiles, chunks shorter than them (states rebuilt) or equal.
    check_op(2, 5, 37, 6, variant="time_first", fwd=(4, 16, 4), chunked=(4, 8, 4), fixed=(1, 1))
    check_op(2, 5, 37, 6, variant="time_first", fwd=(4, 16, 4), chunked=(4, 16, 4))


def check_fwd_chunk_outputs(b, d, seq, n, chunk, fwd=(4, 4, 4), polar=True, a_last=None, optional=True,
                            prefetch=False, dtype=torch.float32):
    """``ScanBlocks.fwd_chunk``'s forward outputs (y, every stored tile-start state, last state) vs the whole-sequence
    time_first forward's (what the backward reads must mean the same), float32 1e-5 / bf16 out 1e-2."""
    from anybudget.ssm.scan_triton import triton_forward

    ScanBlocks.fwd, ScanBlocks.variant, ScanBlocks.fwd_prefetch = fwd, "time_first", prefetch
    x = [t.detach().float() for t in scan_inputs(b, d, seq, n, polar=polar, seed=seq + d)]
    if a_last is not None:
        x[2][:, -1] = a_last
    if not optional:
        x[5] = x[6] = x[7] = None
    x = [t.to(dtype) if i in (0, 1, 3, 4, 6) and t is not None else t for i, t in enumerate(x)]
    try:
        ScanBlocks.fwd_chunk = None
        whole = triton_forward(*x, True)
        ScanBlocks.fwd_chunk = chunk
        chunked = triton_forward(*x, True)
    finally:
        ScanBlocks.fwd_chunk, ScanBlocks.fwd_prefetch = None, False
    assert chunked[1].shape == whole[1].shape and chunked[0].dtype == whole[0].dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, a, c in zip(("y", "states", "last"), whole, chunked):
        torch.testing.assert_close(c.float(), a.float(), rtol=tol, atol=tol, msg=lambda m, nm=name: f"{nm}: {m}")
    print(f"ok fwd_chunk outputs b={b} d={d} seq={seq} n={n} chunk={chunk} fwd={fwd} polar={polar} a_last={a_last} "
          f"optional={optional} prefetch={prefetch} {dtype}", flush=True)


def fwdchunk_cases():
    """The chunk-parallel forward (``ScanBlocks.fwd_chunk``, ``scan_triton_fwdchunk``): outputs and stored states vs
    the whole-sequence forward, then forward + every gradient vs the reference through both backwards."""
    # seq 37 over tile 4: a partial last tile; chunk 8: 5 chunks, the last holding 5 steps (a partial tile).
    # A = 0 and -inf in the kernel (no split), then the reference's A = -100; > 16 chunks (19: the carry kernel's
    # blocks of 16 chunks); one chunk (seq <= chunk: no carry); no z / D / bias / softplus; prefetch; bf16.
    check_fwd_chunk_outputs(2, 5, 37, 6, chunk=8)
    check_fwd_chunk_outputs(1, 5, 37, 6, chunk=8, a_last=-100.0, prefetch=True)
    check_fwd_chunk_outputs(1, 3, 75, 5, chunk=4)
    check_fwd_chunk_outputs(1, 3, 20, 3, chunk=32, fwd=(4, 8, 4))
    # 3 tiles of 8 in 2 chunks of 16: the last chunk's second tile is past the end (no state stored for it).
    check_fwd_chunk_outputs(2, 3, 21, 3, chunk=16, fwd=(2, 8, 4), polar=False, optional=False, prefetch=True)
    check_fwd_chunk_outputs(1, 4, 33, 4, chunk=8, dtype=torch.bfloat16)
    # Full backward through selective_scan_triton: the sequential one reads every tile-start state, the chunked one
    # every second (chunk 8 over tile 4) or every one.
    check(2, 5, 37, 6, polar=True, fwd=(4, 4, 4), bwd=(4, 4, 4), variant="time_first", fwd_chunk=8)
    check(1, 5, 37, 6, polar=True, fwd=(4, 4, 4), variant="time_first", impl="chunked", chunked=(4, 8, 4),
          fwd_chunk=8, a_last=-100.0)
    check(1, 3, 75, 5, polar=True, fwd=(4, 4, 4), variant="time_first", impl="chunked", chunked=(4, 4, 4),
          fwd_chunk=4, fwd_prefetch=True)
    check(1, 3, 21, 3, polar=False, optional=False, softplus=False, fwd=(2, 8, 4), variant="time_first",
          impl="chunked", chunked=(2, 8, 4), fwd_chunk=16)
    check(1, 4, 33, 4, polar=True, dtype=torch.bfloat16, fwd=(4, 4, 4), variant="time_first", impl="chunked",
          chunked=(4, 8, 4), fwd_chunk=8)
    ScanBlocks.fwd_chunk = 32  # over check_split's tile 16 and seq 37: 2 chunks
    try:
        check_split("time_first", "chunked")  # split_fixed's path: the learned columns only, no z / D in the kernel
        check_op(2, 5, 37, 6, variant="time_first", fwd=(4, 16, 4), chunked=(4, 16, 4))  # the custom op (compile's)
        ins = [t.detach().float() for t in scan_inputs(1, 2, 9, 2, seed=1)]
        for chunk, variant, fwd, needle in ((6, "time_first", (4, 4, 4), "multiple"), (0, "time_first", (4, 4, 4),
                                            "multiple"), (8, "time_last", (4, 4, 4), "time_first")):
            ScanBlocks.fwd_chunk, ScanBlocks.variant, ScanBlocks.fwd = chunk, variant, fwd
            try:
                selective_scan_triton(*ins, delta_softplus=True)
            except ValueError as e:
                assert f"fwd_chunk={chunk}" in str(e) and needle in str(e), e
            else:
                raise AssertionError(f"fwd_chunk={chunk} with {variant} must raise")
    finally:
        ScanBlocks.fwd_chunk, ScanBlocks.variant = None, "time_last"
    print("ok bad fwd_chunk refused", flush=True)


def carry_cases():
    """The carry kernel alone vs the recurrence in Python: E_{c-1} = X_c + exp(A S_c) E_c (REVERSE) and
    H_{c+1} = X_c + exp(A S_c) H_c, on both tile orientations (JC), with the one-channel's extra programs (A = 0),
    A = -inf columns, chunk counts over several blocks and not a multiple of them."""
    from anybudget.ssm.scan_triton_bwd import _chunk_carry_kernel

    gen = torch.Generator().manual_seed(3)
    for b, d, n, chunks, block_c, block_j, warps, jc in ((2, 5, 3, 37, 16, 8, 1, False), (2, 5, 3, 37, 8, 16, 1, True),
                                                         (1, 9, 4, 16, 16, 32, 1, True), (1, 3, 2, 5, 8, 4, 1, True)):
        A = -torch.rand(d, n, generator=gen) * 2
        A[0, 0], A[-1, -1] = float("-inf"), 0.0
        X = torch.randn(b, chunks, d, n, generator=gen)
        S = torch.rand(b, chunks, d, generator=gen)
        X1 = torch.randn(b, chunks, d, generator=gen)
        P = torch.where(torch.isinf(A), 0.0, torch.exp(A.clamp_min(-1e30)[None, None] * S[..., None]))
        for reverse in (True, False):
            E, E1 = torch.full_like(X, float("nan")), torch.full_like(X1, float("nan"))
            grid = (b, -(-d * n // block_j) + -(-d // block_j))
            _chunk_carry_kernel[grid](A, X, S, E, d, n, chunks, REVERSE=reverse, BLOCK_C=block_c, BLOCK_J=block_j,
                                      N_BLOCKS=-(-chunks // block_c), X1_ptr=X1, E1_ptr=E1, ONE=True, JC=jc,
                                      num_warps=warps)
            ref, ref1 = torch.zeros_like(X), torch.zeros_like(X1)
            order = range(chunks - 1, 0, -1) if reverse else range(chunks - 1)
            for c in order:  # the value handed to the next chunk in the scan's order
                dst = c - 1 if reverse else c + 1
                ref[:, dst] = X[:, c] + P[:, c] * ref[:, c]
                ref1[:, dst] = X1[:, c] + ref1[:, c]
            torch.testing.assert_close(E, ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(E1, ref1, rtol=1e-5, atol=1e-5)
        print(f"ok carry b={b} d={d} n={n} chunks={chunks} tiles=({block_c}, {block_j}) jc={jc}", flush=True)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("sequential", "all"):
        sequential_cases()
    if which in ("chunked", "all"):
        chunked_cases()
    if which in ("op", "all"):
        op_cases()
    if which in ("tuned", "all"):
        tuned_cases()
    if which in ("bwd_tm", "all"):
        bwd_tm_cases()
    if which in ("fwdchunk", "all"):
        fwdchunk_cases()
    if which in ("fold", "all"):
        fold_cases()
    if which in ("carry", "all"):
        carry_cases()
    print("ALL OK")
