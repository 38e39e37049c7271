"""Triton selective scan against the reference: interpreter on CPU (subprocess), real kernel on GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ssm_helpers import scan_inputs

HERE = Path(__file__).parent


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_triton(), reason="triton not installed (pip install 'anybudget[gpu]')")
@pytest.mark.parametrize("which", ["sequential", "chunked", "op", "tuned", "bwd_tm", "fwdchunk", "fold", "carry"])
def test_triton_scan_interpreter_matches_reference(which):
    """Forward, last state and every gradient vs the sequential reference (float32 1e-4, bf16 5e-2)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, str(HERE / "triton_interpret_check.py"), which], check=False, env=env,
                       capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ALL OK" in r.stdout


@pytest.mark.skipif(not _has_triton(), reason="triton not installed (pip install 'anybudget[gpu]')")
def test_fwd_chunk_extra_bytes_counts_the_rereads_and_the_chunk_arrays():
    from anybudget.ssm.scan_triton_fwdchunk import extra_bytes

    assert extra_bytes(16, 256, 16, 256, 256) == 0  # one chunk: the whole-sequence forward's traffic
    # 3 chunks of 100 over seq 250: u, delta and B re-read for the first two (200 steps), Y / H / S once each way
    assert extra_bytes(2, 8, 4, 250, 100) == 2 * 200 * (2 * 8 + 4) * 4 + 2 * 3 * (4 * 8 * 4 + 2 * 8) * 4
    assert extra_bytes(2, 8, 4, 250, 100, elem=2) < extra_bytes(2, 8, 4, 250, 100)  # bf16 inputs


@pytest.mark.skipif(not _has_triton(), reason="triton not installed (pip install 'anybudget[gpu]')")
def test_scan_presets_set_every_field_and_restore():
    """``ScanBlocks.preset``: "fastest" sets the measured fastest step's settings (Gluon where Triton has it),
    returns the old values, ``restore`` puts them back; unknown names raise naming the allowed ones."""
    from anybudget.ssm.scan_triton import SCAN_PRESETS, ScanBlocks, _gluon_available

    before = {k: getattr(ScanBlocks, k) for k in SCAN_PRESETS["default"]}
    old = ScanBlocks.preset("fastest")
    try:
        assert old == before
        assert (ScanBlocks.variant, ScanBlocks.fwd, ScanBlocks.bwd_chunked) == ("time_first", (8, 16, 4), (8, 16, 4))
        assert ScanBlocks.bwd_tm and ScanBlocks.fold_fixed and ScanBlocks.fwd_prefetch
        assert ScanBlocks.bwd_gluon == ("auto" if _gluon_available() else False)  # Gluon where its tiles fit
        assert ScanBlocks.bwd_maxnreg == (168 if _gluon_available() else None)
        from anybudget.ssm.scan_triton import fold_problem

        assert fold_problem(18, 1, 1) is None  # the preset runs the model's polarized layout folded
        ScanBlocks.preset("default")
        assert {k: getattr(ScanBlocks, k) for k in before} == SCAN_PRESETS["default"]
    finally:
        ScanBlocks.restore(old)
    assert {k: getattr(ScanBlocks, k) for k in before} == before
    with pytest.raises(ValueError, match="allowed 'default', 'fastest'"):
        ScanBlocks.preset("turbo")
    with pytest.raises(ValueError, match="unknown settings"):
        ScanBlocks.restore({"warp_speed": 9})


@pytest.mark.skipif(not _has_triton(), reason="triton not installed (pip install 'anybudget[gpu]')")
def test_bad_bwd_prefetch_is_refused_naming_its_values(monkeypatch):
    """``ScanBlocks.bwd_prefetch`` other than False, True or "async" raises before the backward launches anything
    (a typo would otherwise run as the register prefetch)."""
    from anybudget.ssm import scan_triton
    from anybudget.ssm.scan_triton import ScanBlocks

    monkeypatch.setattr(ScanBlocks, "bwd_prefetch", "asynch")
    saved = [t.detach().float() for t in scan_inputs(1, 2, 8, 4, seed=0)]
    with pytest.raises(ValueError, match="bwd_prefetch='asynch'; allowed: False, True, 'async'"):
        scan_triton._chunked(8, None, True, saved, torch.zeros(1, 2, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and triton")
@pytest.mark.parametrize("seq, n", [(1, 3), (100, 18), (1031, 18), (4096, 17)])
@pytest.mark.parametrize("variant, split", [("time_last", False), ("time_first", False), ("time_last", True),
                                            ("time_first", True)])
@pytest.mark.parametrize("impl", ["chunked", "chunked16", "sequential"])
def test_triton_scan_gpu_matches_reference(seq, n, variant, split, impl, monkeypatch):
    from anybudget.ssm.scan_triton import ScanBlocks

    monkeypatch.setattr(ScanBlocks, "variant", variant)
    monkeypatch.setattr(ScanBlocks, "bwd_impl", "chunked" if impl.startswith("chunked") else impl)
    if impl == "chunked16":  # chunks shorter than the forward's tiles: chunk-start states rebuilt in the backward
        monkeypatch.setattr(ScanBlocks, "bwd_chunked", (4, 16, 4))
    _assert_triton_matches_chunked(scan_inputs(2, 64, seq, n, seed=seq), split)


def _assert_triton_matches_chunked(inputs, split):
    """The Triton scan (as ``ScanBlocks`` is set) vs the chunked reference on CUDA: outputs, last state, gradients."""
    from anybudget.ssm.scan import selective_scan, selective_scan_chunked

    ins = [t.detach().float().cuda().requires_grad_() for t in inputs]
    o1, h1 = selective_scan_chunked(*ins, delta_softplus=True, return_last_state=True)
    # scan_inputs puts A = 0 in the first column and -inf in the last: the polarized layout.
    o2, h2 = selective_scan(*ins, delta_softplus=True, return_last_state=True, backend="triton",
                            fixed_channels=(1, 1) if split else None)
    torch.testing.assert_close(o2, o1, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(h2, h1, rtol=1e-3, atol=1e-3)
    g = torch.randn_like(o1)
    g1 = list(torch.autograd.grad((o1 * g).sum(), ins))
    g2 = list(torch.autograd.grad((o2 * g).sum(), ins))
    if split:  # the model builds A's polarized columns as constants: only the learned columns have a gradient
        g1[2], g2[2] = g1[2][:, 1:-1], g2[2][:, 1:-1]
    for i, (a, b) in enumerate(zip(g1, g2)):
        assert (b - a).abs().max() / a.abs().max().clamp_min(1.0) < 1e-3, i


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and triton")
@pytest.mark.parametrize("seq, n, d", [(100, 18, 64), (1031, 18, 256), (4096, 17, 200)])
@pytest.mark.parametrize("extras", [{"bwd_adjoint": (32, 4)}, {"bwd_adjoint": (64, 8), "bwd_programs": 4096},
                                    {"bwd_autotune": True}, {"bwd_prefetch": True, "fwd_prefetch": True},
                                    {"bwd_autotune": True, "bwd_prefetch": True, "bwd_programs": 4096},
                                    {"bwd_maxnreg": 168, "bwd_adjoint": (32, 8), "fwd_maxnreg": 80},
                                    {"fwd_chunk": 256, "bwd_tm": True}, {"fwd_chunk": 64, "fwd_prefetch": True}])
def test_tuned_chunked_backward_gpu_matches_reference(seq, n, d, extras, monkeypatch):
    """The chunked backward's own adjoint tile, a wider channel split, triton.autotune, the prefetches
    (grads kernel, time_first forward), a register cap and the chunk-parallel forward, at train_speed's tiles."""
    from anybudget.ssm.scan import selective_scan, selective_scan_chunked
    from anybudget.ssm.scan_triton import ScanBlocks

    for k, v in {"variant": "time_first", "bwd_impl": "chunked", "fwd": (8, 16, 4), "bwd_chunked": (8, 16, 4),
                 **extras}.items():
        monkeypatch.setattr(ScanBlocks, k, v)
    ins = [t.detach().float().cuda().requires_grad_() for t in scan_inputs(2, d, seq, n, seed=seq)]
    o1 = selective_scan_chunked(*ins, delta_softplus=True)
    o2 = selective_scan(*ins, delta_softplus=True, backend="triton", fixed_channels=(1, 1))
    torch.testing.assert_close(o2, o1, rtol=1e-3, atol=1e-3)
    g = torch.randn_like(o1)
    g1 = list(torch.autograd.grad((o1 * g).sum(), ins))
    g2 = list(torch.autograd.grad((o2 * g).sum(), ins))
    g1[2], g2[2] = g1[2][:, 1:-1], g2[2][:, 1:-1]  # the polarized columns of A are constants
    for a, b in zip(g1, g2):
        assert (b - a).abs().max() / a.abs().max().clamp_min(1.0) < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and triton")
@pytest.mark.parametrize("seq, n, d", [(100, 18, 64), (1031, 18, 256), (4096, 17, 200)])
@pytest.mark.parametrize("chunk", [64, 256, 1008])
@pytest.mark.parametrize("split", [False, True])
def test_fwd_chunk_gpu_matches_reference(seq, n, d, chunk, split, monkeypatch):
    """The chunk-parallel forward (``ScanBlocks.fwd_chunk``) on CUDA, with the time-major backward behind it:
    outputs, last state and gradients vs the chunked reference; uneven last chunks included."""
    from anybudget.ssm.scan_triton import ScanBlocks

    for k, v in {"variant": "time_first", "bwd_impl": "chunked", "fwd": (8, 16, 4), "bwd_chunked": (8, 16, 4),
                 "bwd_tm": True, "fwd_chunk": chunk}.items():
        monkeypatch.setattr(ScanBlocks, k, v)
    _assert_triton_matches_chunked(scan_inputs(2, d, seq, n, seed=seq + chunk), split)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and triton")
@pytest.mark.parametrize("seq, n, d", [(1, 3, 8), (100, 18, 64), (1031, 18, 256), (4096, 17, 200), (388, 18, 256)])
@pytest.mark.parametrize("extras", [{}, {"bwd_autotune": True}, {"bwd_programs": 4096},
                                    {"bwd_maxnreg": 168, "bwd_adjoint": (32, 8)}, {"bwd_chunked": (4, 16, 2)},
                                    {"bwd_chunked": (8, 8, 4)},
                                    {"bwd_chunked": (4, 16, 2), "bwd_maxnreg": 200, "bwd_adjoint": (16, 4)}],
                         ids=["plain", "tuned", "split", "reg168", "d4w2", "chunk8", "tm42"])
def test_bwd_tm_chunked_backward_gpu_matches_reference(seq, n, d, extras, monkeypatch):
    """The time-major adjoint and grads kernels (``ScanBlocks.bwd_tm``) on CUDA: alone, autotuned among both
    layouts' configs, channel blocks split over programs, a register cap with the adjoint's own tile, a narrower
    tile, chunks shorter than the forward's tiles (states rebuilt); vs the reference and vs the default kernels."""
    _assert_switch_on_matches_reference_and_off(seq, n, d, {"bwd_chunked": (8, 16, 4), **extras}, "bwd_tm",
                                                monkeypatch)


def _assert_switch_on_matches_reference_and_off(seq, n, d, settings, switch, monkeypatch):
    """The model's path (polarized channels in closed form), time_first forward (8, 16, 4), chunked backward with
    ``settings``, with the ScanBlocks flag ``switch`` off then on: the output within 1e-3 of the chunked PyTorch scan
    both times; with it on, every gradient finite, within 1e-3 of the scan's (of the largest) and within 1e-4 of the
    gradients with it off (two implementations of one algorithm agree closer than either to the reference)."""
    from anybudget.ssm.scan import selective_scan, selective_scan_chunked
    from anybudget.ssm.scan_triton import ScanBlocks

    for k, v in {"variant": "time_first", "bwd_impl": "chunked", "fwd": (8, 16, 4), **settings}.items():
        monkeypatch.setattr(ScanBlocks, k, v)
    ins = [t.detach().float().cuda().requires_grad_() for t in scan_inputs(2, d, seq, n, seed=seq + d)]
    o1 = selective_scan_chunked(*ins, delta_softplus=True)
    g = torch.randn_like(o1)
    g1 = list(torch.autograd.grad((o1 * g).sum(), ins))
    grads = {}
    for on in (False, True):
        monkeypatch.setattr(ScanBlocks, switch, on)
        o2 = selective_scan(*ins, delta_softplus=True, backend="triton", fixed_channels=(1, 1))
        torch.testing.assert_close(o2, o1, rtol=1e-3, atol=1e-3)
        grads[on] = list(torch.autograd.grad((o2 * g).sum(), ins))
        grads[on][2] = grads[on][2][:, 1:-1]  # the polarized columns of A are constants
    g1[2] = g1[2][:, 1:-1]
    for i, (a, b, c) in enumerate(zip(g1, grads[True], grads[False])):
        scale = a.abs().max().clamp_min(1.0)
        assert torch.isfinite(b).all(), i
        assert (b - a).abs().max() / scale < 1e-3, i
        assert (b - c).abs().max() / scale < 1e-4, i


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and triton")
@pytest.mark.parametrize("seq, n, d", [(1, 18, 8), (100, 18, 60), (1031, 18, 256), (388, 18, 256), (4096, 18, 200)])
@pytest.mark.parametrize("extras", [{"bwd_chunked": (8, 16, 4)}, {"bwd_chunked": (4, 16, 2)},
                                    {"bwd_chunked": (8, 16, 4), "bwd_programs": 4096},
                                    {"bwd_chunked": (8, 16, 4), "bwd_maxnreg": 168}],
                         ids=["d8w4", "d4w2", "split", "reg168"])
def test_gluon_grads_gpu_matches_reference_and_time_major(seq, n, d, extras, monkeypatch):
    """The Gluon grads kernel (``ScanBlocks.bwd_gluon``) on the model's path (polarized channels in closed form,
    16 learned states): every gradient vs the chunked PyTorch scan (1e-3 of the largest) and vs the time-major
    Triton kernel, the same algorithm (1e-4): uneven channel blocks and chunks, one step, a channel split."""
    launches = _count_gluon_launches(monkeypatch)
    _assert_switch_on_matches_reference_and_off(seq, n, d, {"bwd_tm": True, **extras}, "bwd_gluon", monkeypatch)
    assert launches == [(2, -(-seq // extras["bwd_chunked"][1]))]  # the Gluon kernel ran, once, only when asked


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and triton")
@pytest.mark.parametrize("seq, n, tiles", [(37, 6, (16, 16, 4)), (300, 18, (4, 16, 4)), (64, 16, (8, 16, 4)),
                                           (50, 12, (16, 8, 8))])
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("prefetch", [False, True, "async"])
def test_gluon_grads_gpu_every_input_matches_reference(seq, n, tiles, softplus, prefetch, monkeypatch):
    """The Gluon grads kernel with D, z and delta_bias in the kernel and A = -inf in it (no closed-form split), state
    counts that pad (6 -> 8 lanes, 18 -> 32: a warp holds 1 or 4 channels), a chunk shorter than the state tile
    (the transpose crosses warps), with the next channel block's reads prefetched in registers or copied ahead
    into shared memory ("async"): output and every gradient vs the sequential reference (float32, 1e-4)."""
    from anybudget.ssm.scan import selective_scan_ref
    from anybudget.ssm.scan_triton import ScanBlocks, selective_scan_triton

    for k, v in {"variant": "time_first", "bwd_impl": "chunked", "fwd": (8, tiles[1], 4), "bwd_chunked": tiles,
                 "bwd_tm": True, "bwd_gluon": True, "bwd_prefetch": prefetch}.items():
        monkeypatch.setattr(ScanBlocks, k, v)
    ins = [t.detach().float() for t in scan_inputs(3, 20, seq, n, seed=seq + n)]
    if not softplus:  # dt >= 0 without softplus: delta and its bias non-negative (else A-bar > 1 overflows)
        ins[1], ins[7] = ins[1].abs() * 0.3, ins[7].abs() * 0.1
    ins_c = [t.cuda().requires_grad_() for t in ins]
    ins = [t.requires_grad_() for t in ins]
    flags = []
    launches = _count_gluon_launches(monkeypatch, flags)
    o1 = selective_scan_ref(*ins, delta_softplus=softplus)
    o2 = selective_scan_triton(*ins_c, delta_softplus=softplus)
    torch.testing.assert_close(o2.cpu(), o1, rtol=1e-4, atol=1e-4)
    g = torch.randn(o1.shape, generator=torch.Generator().manual_seed(0))
    g1 = torch.autograd.grad((o1 * g).sum(), ins)
    g2 = torch.autograd.grad((o2 * g.cuda()).sum(), ins_c)
    for i, (a, c) in enumerate(zip(g1, g2)):
        c = c.cpu()
        assert torch.isfinite(c).all(), i
        assert (c - a).abs().max() / a.abs().max().clamp_min(1.0) < 1e-4, i
    assert len(launches) == 1
    assert flags == [(prefetch is True, prefetch == "async")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and triton")
@pytest.mark.parametrize("seq, n, d", [(1, 18, 8), (100, 18, 60), (1031, 18, 256), (4096, 18, 200), (1024, 18, 256)])
@pytest.mark.parametrize("grads", ["triton_tm", "gluon", "gluon_reg168", "gluon_reg168_async", "gluon_prefetch"])
def test_fold_fixed_gpu_matches_reference_and_split(seq, n, d, grads, monkeypatch):
    """``ScanBlocks.fold_fixed`` on CUDA: the polarized channels, D and z inside the kernels (time-major Triton or
    Gluon grads kernel) vs the chunked PyTorch scan (1e-3) and vs the split path (closed form in PyTorch, 1e-4);
    the split path runs only with the flag off and the Gluon kernel once a backward when asked. Shapes: a partial
    last chunk and channel block (masks), 4096 x 200 and 1024 x 256 with every index in range (EVEN; at 1024 the
    channel blocks split over programs)."""
    from anybudget.ssm import scan_split

    calls, real = [], scan_split.selective_scan_split
    monkeypatch.setattr(scan_split, "selective_scan_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    launches = _count_gluon_launches(monkeypatch)
    settings = {"bwd_tm": True, "bwd_chunked": (8, 16, 4), "bwd_gluon": grads != "triton_tm",
                "bwd_maxnreg": 168 if grads.startswith("gluon_reg168") else None,
                "bwd_prefetch": "async" if grads.endswith("async") else grads == "gluon_prefetch"}
    _assert_switch_on_matches_reference_and_off(seq, n, d, settings, "fold_fixed", monkeypatch)
    assert calls == [1]  # the closed form in PyTorch ran with the flag off only
    assert len(launches) == (0 if grads == "triton_tm" else 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and triton")
@pytest.mark.parametrize("gluon", [False, True])
def test_fold_fixed_gpu_compiled_and_captured_matches_reference(gluon, monkeypatch):
    """The folded scan as the training step runs it: the custom op under torch.compile (inductor), captured in a
    CUDA graph and replayed on new inputs written in place: output and gradients vs the chunked PyTorch scan."""
    from anybudget.cudagraph import capture
    from anybudget.ssm.scan import selective_scan, selective_scan_chunked
    from anybudget.ssm.scan_triton import ScanBlocks

    for k, v in {"variant": "time_first", "bwd_impl": "chunked", "fwd": (8, 16, 4), "bwd_chunked": (8, 16, 4),
                 "bwd_tm": True, "bwd_gluon": gluon, "fold_fixed": True}.items():
        monkeypatch.setattr(ScanBlocks, k, v)
    torch._dynamo.reset()
    fn = torch.compile(lambda *x: selective_scan(*x, delta_softplus=True, fixed_channels=(1, 1)), fullgraph=True)
    ins = [t.detach().float().cuda().requires_grad_() for t in scan_inputs(2, 64, 300, 18, seed=5)]
    g = torch.randn(2, 64, 300, device="cuda")
    held = []

    def step():
        out = fn(*ins)
        held[:] = [out.detach(), *torch.autograd.grad(out, ins, g)]

    graph = capture(step, warmup=2)
    new = [t.detach().float().cuda() for t in scan_inputs(2, 64, 300, 18, seed=6)]
    with torch.no_grad():
        for t, v in zip(ins, new):
            t.copy_(v)
    graph.replay()
    ref_ins = [t.clone().requires_grad_() for t in new]
    o1 = selective_scan_chunked(*ref_ins, delta_softplus=True)
    g1 = torch.autograd.grad(o1, ref_ins, g)
    torch.testing.assert_close(held[0], o1, rtol=1e-3, atol=1e-3)
    for i, (a, b) in enumerate(zip(g1, held[1:])):
        if i == 2:  # A's polarized columns are constants
            assert (b[:, 0] == 0).all() and (b[:, -1] == 0).all()
            a, b = a[:, 1:-1], b[:, 1:-1]
        assert (b - a).abs().max() / a.abs().max().clamp_min(1.0) < 1e-3, i


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and triton")
@pytest.mark.parametrize("learned", [4, 16, 40])
def test_fastest_preset_runs_any_state_count_on_gpu(learned):
    """``ScanBlocks.preset("fastest")`` on the model's path (polarized channels (1, 1)) at learned state counts the
    Gluon tiles cannot hold (4: the Triton grads kernel runs), can (16), and the fold cannot (40: chunks of 8 under
    the forward's 16-step tiles, the split path runs): output, last state and every gradient as the chunked
    PyTorch scan's."""
    from anybudget.ssm.scan_triton import ScanBlocks

    old = ScanBlocks.preset("fastest")
    try:  # output, last state and every gradient (A's learned columns) within 1e-3; NaN fails the comparison
        _assert_triton_matches_chunked(scan_inputs(2, 32, 200, learned + 2, seed=learned), split=True)
    finally:
        ScanBlocks.restore(old)


def _count_gluon_launches(monkeypatch, flags=None):
    """Record the (batch, chunks) grid of every launch of the Gluon grads kernel (it is looked up at each backward);
    ``flags``: a list that gets each launch's (PREFETCH, ASYNC)."""
    from anybudget.ssm import scan_gluon_bwd

    seen, kernel = [], scan_gluon_bwd.grads_gluon

    class Counting:
        def __getitem__(self, grid):
            seen.append(grid[:2])
            launch = kernel[grid]

            def run(*args, **kw):
                if flags is not None:
                    flags.append((kw.get("PREFETCH"), kw.get("ASYNC")))
                return launch(*args, **kw)

            return run

    monkeypatch.setattr(scan_gluon_bwd, "grads_gluon", Counting())
    return seen


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and triton")
def test_mamba_lm_trains_on_gpu_with_triton_backend():
    from anybudget.ssm import LMConfig, MambaConfig, MambaLM

    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=64, d_model=32, n_layers=2, mamba=MambaConfig(d_model=32, polarize="both"))
    ref = MambaLM(LMConfig(vocab_size=64, d_model=32, n_layers=2,
                           mamba=MambaConfig(d_model=32, polarize="both", scan_backend="chunked"))).cuda()
    fast = MambaLM(cfg).cuda()
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(64, (2, 300), device="cuda")
    torch.testing.assert_close(fast(ids), ref(ids), rtol=1e-3, atol=1e-3)
