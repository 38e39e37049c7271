"""The static-shape fast step against the reference step, sync-free MQAR batches, checked checkpoints."""

import pytest
import torch
import torch.nn.functional as F

from anybudget.ssm import LMConfig, MambaConfig, MambaLM
from anybudget.ssm.checkpoint import CheckpointMismatch
from anybudget.ssm.fast_step import FastStepConfig, static_mqar_loss
from anybudget.ssm.mqar import MQARSegment, MQARStream, mqar_queries, multiquery_ar
from anybudget.ssm.train import TrainConfig, labeled_logits, train_mqar

SEGS = (MQARSegment(32, 100, 2), MQARSegment(64, 100, 4))
TESTS = (MQARSegment(64, 8, 4), MQARSegment(64, 8, 8))


def tiny_lm(polarize="both", seed=0, layers=2):
    torch.manual_seed(seed)
    return MambaLM(LMConfig(vocab_size=96, d_model=16, n_layers=layers,
                            mamba=MambaConfig(d_model=16, d_state=4, polarize=polarize)))


def test_sync_free_sampler_draws_what_torch_multinomial_draws():
    # multiquery_ar now samples gaps with the exponential race; torch.multinomial (no replacement)
    # uses the same race after a host-side check, so the same generator gives the same gaps.
    i = torch.arange(1, 31, dtype=torch.float64)
    p = (0.01 * i ** (0.01 - 1)).float().expand(5, 30)
    from anybudget.ssm.mqar import _sample_without_replacement

    for seed in range(3):
        a = torch.multinomial(p, 7, replacement=False, generator=torch.Generator().manual_seed(seed))
        b = _sample_without_replacement(p, 7, torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)


def test_mqar_queries_are_the_labels_of_multiquery_ar():
    x, pos, val = mqar_queries(96, 64, 8, 5, seed=3, random_non_queries=True)
    x2, y = multiquery_ar(96, 64, 8, 5, seed=3, random_non_queries=True)
    assert torch.equal(x, x2) and pos.shape == val.shape == (5, 8)
    assert torch.equal(y.gather(1, pos), val)
    assert ((y != -100).sum(1) == 8).all()  # exactly the k query positions are labeled
    s = MQARStream(SEGS, 4, 96, seed=1)
    for step in (0, 5):
        xa, ya, sa = s.batch(step)
        xb, pb, vb, sb = s.batch_queries(step)
        assert sa == sb and torch.equal(xa, xb) and torch.equal(ya.gather(1, pb), vb)


def test_static_loss_equals_the_masked_reference_loss_and_gradients():
    lm = tiny_lm()
    x, pos, val = mqar_queries(96, 64, 8, 3, seed=0)
    _, y = multiquery_ar(96, 64, 8, 3, seed=0)
    ref = F.cross_entropy(*labeled_logits(lm, x, y))
    g_ref = torch.autograd.grad(ref, list(lm.parameters()))
    fast = static_mqar_loss(lm, x, pos, val)
    g_fast = torch.autograd.grad(fast, list(lm.parameters()))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_ref, g_fast):  # includes the tied embedding (index_add backward)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_fast_step_follows_the_reference_loss_curve(mode, monkeypatch):
    # Fixed seed, same batches: the recorded interval losses agree within float noise and the
    # weights end up equal. "compile" runs torch.compile's tracing with the eager backend (CPU).
    if mode == "compile":
        from anybudget.ssm import fast_step

        orig = fast_step.FastStepConfig.from_mode
        monkeypatch.setattr(fast_step.FastStepConfig, "from_mode", staticmethod(
            lambda m, d: FastStepConfig(compile=True, compile_backend="eager") if m == "compile" else orig(m, d)))
    cfg = TrainConfig(lr=3e-3, batch_size=8, max_steps=24, eval_every=8, vocab_size=96, test_examples=8,
                      grad_clip=1.0)
    a, b = tiny_lm(), tiny_lm()
    ra = train_mqar(a, cfg, SEGS, TESTS, quiet=True)
    rb = train_mqar(b, cfg, SEGS, TESTS, quiet=True, step=mode)
    la, lb = [h["loss"] for h in ra["history"]], [h["loss"] for h in rb["history"]]
    assert len(la) == len(lb) == 3
    assert la[0] > la[-1]  # it learns: the comparison is not between two flat lines
    assert lb == pytest.approx(la, rel=1e-4)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5, msg=n)


def test_fast_step_resume_equals_uninterrupted_run_and_crosses_step_modes(tmp_path, monkeypatch):
    import anybudget.ssm.train as tr

    cfg = TrainConfig(batch_size=4, max_steps=6, eval_every=3, vocab_size=96, test_examples=8, checkpoint_every=2)
    a = tiny_lm()
    train_mqar(a, cfg, SEGS, TESTS, quiet=True, step="eager")
    ck = tmp_path / "ck.pt"
    real, calls = tr.time.monotonic, {"n": 0}

    def jumping_clock():
        calls["n"] += 1
        return real() + (1e6 if calls["n"] > 4 else 0.0)

    monkeypatch.setattr(tr.time, "monotonic", jumping_clock)
    r1 = train_mqar(tiny_lm(), cfg, SEGS, TESTS, checkpoint=ck, time_budget_s=100.0, quiet=True, step="eager")
    monkeypatch.setattr(tr.time, "monotonic", real)
    assert not r1["done"] and 0 < r1["step"] < 6
    b = tiny_lm(seed=99)
    r2 = train_mqar(b, cfg, SEGS, TESTS, checkpoint=ck, quiet=True, step="reference")  # resumed by the other path
    assert r2["done"] and r2["step"] == 6
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=n)


def test_checkpoint_of_another_run_is_refused_naming_the_keys(tmp_path):
    ck = tmp_path / "ck.pt"
    cfg = TrainConfig(batch_size=4, max_steps=2, eval_every=2, vocab_size=96, test_examples=4)
    train_mqar(tiny_lm(), cfg, SEGS, TESTS, checkpoint=ck, quiet=True)
    before = ck.read_bytes()
    with pytest.raises(CheckpointMismatch, match=r"train\.lr: checkpoint 0\.001, now 0\.002"):
        train_mqar(tiny_lm(), TrainConfig(lr=2e-3, batch_size=4, max_steps=2, eval_every=2, vocab_size=96,
                                          test_examples=4), SEGS, TESTS, checkpoint=ck, quiet=True)
    with pytest.raises(CheckpointMismatch, match=r"model\.mamba\.polarize: checkpoint .both., now .one.; model\.n_layers: checkpoint 2, now 1"):
        train_mqar(tiny_lm(polarize="one", layers=1), cfg, SEGS, TESTS, checkpoint=ck, quiet=True)
    assert ck.read_bytes() == before  # a refused resume writes nothing
    # Settings that do not change the weights may differ.
    r = train_mqar(tiny_lm(), TrainConfig(batch_size=4, max_steps=2, eval_every=2, vocab_size=96, test_examples=4,
                                          checkpoint_every=7), SEGS, TESTS, checkpoint=ck, quiet=True)
    assert r["done"] and r["step"] == 2
    old = tmp_path / "old.pt"  # a checkpoint without a recorded configuration (the older format)
    sd = torch.load(ck, weights_only=True)
    sd.pop("run_config")
    torch.save(sd, old)
    with pytest.raises(CheckpointMismatch, match="records no run configuration"):
        train_mqar(tiny_lm(), cfg, SEGS, TESTS, checkpoint=old, quiet=True)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="cannot be read"):
        train_mqar(tiny_lm(), cfg, SEGS, TESTS, checkpoint=bad, quiet=True)


def test_step_mode_errors():
    with pytest.raises(ValueError, match="step='fastest'; allowed"):
        FastStepConfig.from_mode("fastest", "cpu")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FastStepConfig.from_mode("cudagraph", "cpu")
    assert FastStepConfig.from_mode("auto", "cpu") == FastStepConfig()
    with pytest.raises(ValueError, match="compile_options=.*compile_mode='max-autotune-no-cudagraphs'"):
        FastStepConfig(compile_options=(("coordinate_descent_tuning", True),), compile_mode="max-autotune-no-cudagraphs")
    with pytest.raises(ValueError, match=r"compile_options=\('combo_kernels', True\) must be \(name, value\) pairs"):
        FastStepConfig(compile_options=("combo_kernels", True))


def test_cli_mqar_refuses_a_step_that_does_not_fit_before_allocating(tmp_path, monkeypatch):
    from anybudget.cli import main
    from anybudget.ssm import lm

    built = []
    monkeypatch.setattr(lm, "build_lm", lambda cfg: built.append(cfg))
    with pytest.raises(SystemExit, match=r"--batch-size 128 at --max-seq-len 1024 needs ~\d+ GB .*"
                                         r"more than the 2\.0 GB allowed .*try --batch-size \d+"):
        main(["ssm", "mqar", "--device", "cpu", "--quiet", "--max-memory", "2", "--out", str(tmp_path)])
    assert built == [] and not any(tmp_path.iterdir())  # nothing built, nothing written


def test_step_memory_estimate_grows_with_batch_seq_depth_and_state():
    from anybudget.ssm.train import estimate_step_bytes

    cfg = LMConfig(d_model=128, n_layers=2, mamba=MambaConfig(d_model=128, polarize="both"))
    base = estimate_step_bytes(cfg, 8, 256)
    # Measured peak RSS of this step on a CPU: 1.9 GB (batch 8, seq 256, depth 2, d_model 128).
    assert 1.6e9 < base < 2.6e9
    assert estimate_step_bytes(cfg, 128, 1024) > 40 * base  # the reference default: ~100 GB on a CPU
    assert estimate_step_bytes(cfg, 8, 256, scan="triton") < base / 3


def test_cli_mqar_fast_step_runs(tmp_path):
    import json

    from anybudget.cli import main

    rc = main(["ssm", "mqar", "--layers", "1", "--d-model", "16", "--d-state", "4", "--vocab-size", "96",
               "--max-seq-len", "64", "--steps", "3", "--batch-size", "4", "--test-examples", "4",
               "--eval-every", "3", "--device", "cpu", "--quiet", "--step", "auto", "--out", str(tmp_path)])
    assert rc == 0
    rec = json.loads((tmp_path / "ssm_mqar_mamba_none_L1_d16.json").read_text())
    assert rec["metrics"]["final"]["step"] == 3 and rec["metrics"]["final"]["loss"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_bf16_step_on_gpu_runs_and_stays_near_the_reference():
    # compile+cudagraph+bf16 once failed at its first step: the compiled backward asserted a stride of the
    # polarized channels' bf16 -> fp32 cast (scan_split) that the compiled forward had laid out differently.
    pytest.importorskip("triton")
    cfg = TrainConfig(lr=3e-3, batch_size=8, max_steps=16, eval_every=8, vocab_size=96, test_examples=8)
    ra = train_mqar(tiny_lm().cuda(), cfg, SEGS, TESTS, quiet=True)
    rb = train_mqar(tiny_lm().cuda(), cfg, SEGS, TESTS, quiet=True, step="compile+cudagraph+bf16")
    assert [h["loss"] for h in rb["history"]] == pytest.approx([h["loss"] for h in ra["history"]], rel=5e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["eager", "cudagraph", "compile+cudagraph"])
@pytest.mark.parametrize("variant", ["time_last", "time_first"])
def test_fast_step_on_gpu_follows_the_reference(mode, variant):
    # The fast steps use TF32 matmuls (FastStepConfig.tf32): 5e-3 instead of float32's 1e-3.
    pytest.importorskip("triton")
    from anybudget.ssm.scan_triton import ScanBlocks

    saved = ScanBlocks.variant
    ScanBlocks.variant = variant
    try:
        cfg = TrainConfig(lr=3e-3, batch_size=8, max_steps=24, eval_every=8, vocab_size=96, test_examples=8)
        a, b = tiny_lm().cuda(), tiny_lm().cuda()
        ra = train_mqar(a, cfg, SEGS, TESTS, quiet=True)
        rb = train_mqar(b, cfg, SEGS, TESTS, quiet=True, step=mode)
    finally:
        ScanBlocks.variant = saved
    assert [h["loss"] for h in rb["history"]] == pytest.approx([h["loss"] for h in ra["history"]], rel=5e-3)


def test_fast_step_loads_optimizer_state_in_place_once_graphs_exist():
    import copy

    from anybudget.ssm.fast_step import FastStep
    from anybudget.ssm.train import _param_groups

    lm = tiny_lm()
    fs = FastStep(lm, _param_groups(lm, 0.1), 1e-3)
    x, pos, val = mqar_queries(96, 32, 2, 4, seed=0)
    fs.step(x, pos, val, 1e-3)
    sd = copy.deepcopy(fs.state_dict())
    fs.step(x, pos, val, 1e-3)
    tensors = [v for p in fs.params for v in fs.opt.state[p].values()]
    fs._graphs = {"captured": None}  # as after a capture: the graph holds these tensors' addresses
    fs.load_state_dict(sd)
    now = [v for p in fs.params for v in fs.opt.state[p].values()]
    assert all(a is b for a, b in zip(tensors, now))
    for i, p in enumerate(fs.params):
        for k, v in sd["state"][i].items():
            assert torch.equal(fs.opt.state[p][k], v), (i, k)
    s, n = fs.take_loss()
    assert n == 2 and s > 0 and fs.take_loss() == (0.0, 0)


def test_cli_diagnose_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    from anybudget.cli import main

    common = ["--d-model", "16", "--d-state", "4", "--vocab-size", "96", "--device", "cpu", "--quiet"]
    assert main(["ssm", "mqar", "--layers", "1", *common, "--max-seq-len", "64", "--steps", "1",
                 "--batch-size", "2", "--test-examples", "2", "--eval-every", "1", "--out", str(tmp_path)]) == 0
    ck = tmp_path / "ssm_mqar_mamba_none_L1_d16.ckpt.pt"
    diag = ["ssm", "diagnose", "--seq-len", "16", "--batch", "1", "--out", str(tmp_path / "d"),
            "--checkpoint", str(ck), "--d-model", "16", "--d-state", "4", "--vocab-size", "96", "--device", "cpu"]
    assert main([*diag, "--layers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.n_layers: checkpoint 1, now 2" in err and "Traceback" not in err
    assert main([*diag, "--layers", "1"]) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("extras, options", [
    ({"bwd_adjoint": (32, 4)}, ()),
    ({"bwd_programs": 4096}, ()),
    ({"bwd_autotune": True}, ()),
    ({"bwd_prefetch": True, "fwd_prefetch": True}, ()),
    ({"bwd_maxnreg": 168, "bwd_adjoint": (32, 8), "fwd_maxnreg": 80}, ()),
    ({"bwd_autotune": True, "fwd_prefetch": True},
     (("triton.prefer_nd_tiling", True), ("coordinate_descent_tuning", True))),
    pytest.param({"bwd_tm": True}, (), id="bwd_tm"),
    pytest.param({"bwd_tm": True, "bwd_autotune": True}, (), id="bwd_tm_tuned"),
    pytest.param({"bwd_tm": True, "bwd_chunked": (4, 16, 2), "bwd_maxnreg": 200, "bwd_adjoint": (16, 4)}, (),
                 id="bwd_tm42"),
])
def test_tuned_compiled_step_on_gpu_follows_the_reference(extras, options, monkeypatch):
    # train_speed's compile+cudagraph+tf16+{adj32,split,tuned,prefetch,reg168,fast,bwdtm,tuned+bwdtm}: time-first forward tiles, chunk 16, the
    # backward's extra settings (autotune runs in the warm-up before each capture), inductor options.
    pytest.importorskip("triton")
    from anybudget.ssm import fast_step
    from anybudget.ssm.scan_triton import ScanBlocks

    for k, v in {"variant": "time_first", "fwd": (8, 16, 4), "bwd": (8, 16, 4), "bwd_chunked": (8, 16, 4),
                 **extras}.items():
        monkeypatch.setattr(ScanBlocks, k, v)
    monkeypatch.setattr(fast_step.FastStepConfig, "from_mode", staticmethod(
        lambda m, d: FastStepConfig(compile=True, cuda_graph=True, compile_options=options)))
    cfg = TrainConfig(lr=3e-3, batch_size=8, max_steps=24, eval_every=8, vocab_size=96, test_examples=8)
    ra = train_mqar(tiny_lm().cuda(), cfg, SEGS, TESTS, quiet=True)
    rb = train_mqar(tiny_lm().cuda(), cfg, SEGS, TESTS, quiet=True, step="compile+cudagraph")
    assert [h["loss"] for h in rb["history"]] == pytest.approx([h["loss"] for h in ra["history"]], rel=5e-3)
