import json

import pytest
import torch
import torch.nn.functional as F

from anybudget.ssm import LMConfig, MambaConfig, MambaLM
from anybudget.ssm.diagnostics import (
    feature_sharpness,
    influence_scores,
    layer_sharpness,
    plot_influence,
    plot_sharpness,
)
from anybudget.ssm.mqar import MQARSegment
from anybudget.ssm.train import TrainConfig, evaluate_mqar, train_mqar

SEGS = (MQARSegment(32, 100, 2), MQARSegment(64, 100, 4))
TESTS = (MQARSegment(64, 8, 4), MQARSegment(64, 8, 8))


def tiny_lm(polarize="both", seed=0, layers=2):
    torch.manual_seed(seed)
    return MambaLM(LMConfig(vocab_size=96, d_model=16, n_layers=layers,
                            mamba=MambaConfig(d_model=16, d_state=4, polarize=polarize)))


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path, monkeypatch):
    import anybudget.ssm.train as tr

    cfg = TrainConfig(batch_size=4, max_steps=6, eval_every=3, vocab_size=96, test_examples=8,
                      checkpoint_every=3)
    a = tiny_lm()
    ra = train_mqar(a, cfg, SEGS, TESTS, quiet=True)
    assert ra["done"] and ra["final"]["step"] == 6 and set(ra["final"]) >= {"kv4", "kv8", "avg"}

    ck = tmp_path / "ck.pt"
    # The time budget runs out after a few steps (a clock that jumps ahead), as on a device call.
    real, calls = tr.time.monotonic, {"n": 0}

    def jumping_clock():
        calls["n"] += 1
        return real() + (1e6 if calls["n"] > 4 else 0.0)

    monkeypatch.setattr(tr.time, "monotonic", jumping_clock)
    r1 = train_mqar(tiny_lm(), cfg, SEGS, TESTS, checkpoint=ck, time_budget_s=100.0, quiet=True)
    monkeypatch.setattr(tr.time, "monotonic", real)
    assert not r1["done"] and 0 < r1["step"] < 6 and ck.exists()
    b = tiny_lm(seed=99)  # a different init: everything must come back from the checkpoint
    r2 = train_mqar(b, cfg, SEGS, TESTS, checkpoint=ck, quiet=True)
    assert r2["done"] and r2["step"] == 6
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=n)


def test_recorded_loss_is_the_mean_over_the_interval_not_the_last_batch():
    import copy

    from anybudget.ssm.mqar import MQARStream
    from anybudget.ssm.train import labeled_logits

    # Batches come from segments of different difficulty (as in the reference mixture), so a
    # record must average them. lr ~ 0 keeps the model at its init, so the losses can be replayed.
    segs = (MQARSegment(16, 100, 1), MQARSegment(64, 100, 16))
    cfg = TrainConfig(lr=1e-12, batch_size=4, max_steps=8, eval_every=4, vocab_size=96, test_examples=4)
    lm = tiny_lm()
    init = copy.deepcopy(lm)
    hist = train_mqar(lm, cfg, segs, TESTS, quiet=True)["history"]
    stream = MQARStream(segs, cfg.batch_size, cfg.vocab_size, cfg.seed, cfg.power_a)
    with torch.no_grad():
        per_step = [F.cross_entropy(*labeled_logits(init, *stream.batch(s)[:2])).item() for s in range(8)]
    assert [h["step"] for h in hist] == [4, 8]
    for h, chunk in zip(hist, (per_step[:4], per_step[4:])):
        assert h["loss"] == pytest.approx(sum(chunk) / 4, rel=1e-4)
    assert hist[-1]["loss"] != pytest.approx(per_step[-1], rel=1e-4)  # not the last batch alone


class _RecallOracle(torch.nn.Module):
    """Predicts, at every position, the token that followed the first earlier copy of the current
    token: the right answer at every MQAR query. ``wrong_rows`` shifts the answer for odd rows."""

    def __init__(self, vocab, wrong_rows=False):
        super().__init__()
        self.vocab, self.wrong_rows = vocab, wrong_rows
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        n = ids.shape[1]
        t = torch.arange(n)
        earlier = (ids[:, :, None] == ids[:, None, :]) & (t[None, :] < t[:, None])[None]
        first = torch.where(earlier.any(-1), earlier.float().argmax(-1), torch.zeros_like(ids))
        pred = ids.gather(1, (first + 1).clamp(max=n - 1))
        if self.wrong_rows:
            pred[1::2] = (pred[1::2] + 1) % self.vocab
        return F.one_hot(pred, self.vocab).float()


def test_accuracy_is_the_fraction_of_queries_answered_right():
    acc = evaluate_mqar(_RecallOracle(96), TESTS, vocab_size=96, batch_size=4, num_examples=8)
    assert acc == {"kv4": 1.0, "kv8": 1.0, "avg": 1.0}
    # Every row has the same number of queries, so getting odd rows wrong is exactly one half.
    acc = evaluate_mqar(_RecallOracle(96, wrong_rows=True), TESTS, vocab_size=96, batch_size=4, num_examples=8)
    assert acc == {"kv4": 0.5, "kv8": 0.5, "avg": 0.5}


def test_evaluate_counts_only_labeled_positions():
    lm = tiny_lm()
    acc = evaluate_mqar(lm, TESTS, vocab_size=96, batch_size=4, num_examples=8)
    assert set(acc) == {"kv4", "kv8", "avg"} and all(0.0 <= v <= 1.0 for v in acc.values())


def test_train_config_errors():
    with pytest.raises(ValueError, match="lr=0"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="max_steps=0"):
        TrainConfig(max_steps=0)


def test_feature_sharpness_known_values():
    f = torch.zeros(1, 3, 2)
    assert feature_sharpness(f).item() == 0.0  # identical tokens: fully smoothed
    f = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
    assert feature_sharpness(f).item() == pytest.approx(5.0)
    assert feature_sharpness(f, normalize=True).item() == pytest.approx(5.0 / 2.5)
    with pytest.raises(ValueError, match=r"\(batch, seq >= 2, d\)"):
        feature_sharpness(torch.zeros(1, 1, 2))


def test_influence_matches_brute_force_jacobian():
    lm = tiny_lm(layers=1).eval()
    ids = torch.randint(96, (1, 7))
    scores = influence_scores(lm, ids, position=5)
    x = lm.embedding(ids).detach()
    J = torch.autograd.functional.jacobian(lambda e: lm.forward_embeddings(e, return_hidden=True)[1][-1][0, 5], x)
    brute = J[:, 0].norm(dim=(0, 2)).log()[:6]  # (d_out, seq, d_in) -> per s
    torch.testing.assert_close(scores, brute.float(), rtol=1e-4, atol=1e-4)
    assert scores.shape == (6,)
    with pytest.raises(ValueError, match="position=9"):
        influence_scores(lm, ids, position=9)


def test_one_polarized_channel_keeps_a_floor_on_distant_influence():
    # With a small learned A-bar the default model forgets distant tokens; the A-bar = 1 channel
    # passes gradient from every earlier position undamped.
    torch.manual_seed(0)
    ids = torch.randint(96, (2, 48))
    far = {}
    for pol in (None, "one"):
        lm = tiny_lm(polarize=pol, layers=1)
        with torch.no_grad():
            lm.layers[0].mixer.A_log.add_(3.0)  # A = -20..-80: fast decay on the learned channels
            lm.layers[0].mixer.dt_proj.bias.fill_(1.0)
        sc = influence_scores(lm, ids)
        far[pol] = sc[:8].mean().item()
    assert far["one"] > far[None] + 5.0


def test_layer_sharpness_and_plots(tmp_path):
    lm = tiny_lm()
    ids = torch.randint(96, (2, 16))
    sh = layer_sharpness(lm, ids)
    assert len(sh) == 3 and all(s > 0 for s in sh)
    p1 = plot_influence({"a": influence_scores(lm, ids)}, tmp_path / "i.png")
    p2 = plot_sharpness({"a": sh}, tmp_path / "s.png")
    assert p1.read_bytes()[:4] == b"\x89PNG" and p2.read_bytes()[:4] == b"\x89PNG"


def test_cli_mqar_writes_json_and_png(tmp_path, monkeypatch):
    from anybudget.cli import main

    seen = []
    try:  # --scan-kernels: the preset set for the run and restored after it (no effect on the CPU's scan)
        from anybudget.ssm.scan_triton import ScanBlocks

        real_preset = ScanBlocks.preset.__func__
        monkeypatch.setattr(ScanBlocks, "preset", classmethod(lambda c, n: seen.append(n) or real_preset(c, n)))
    except ImportError:
        ScanBlocks = None
    rc = main(["ssm", "mqar", "--polarize", "both", "--layers", "1", "--d-model", "16", "--d-state", "4",
               "--vocab-size", "96", "--max-seq-len", "64", "--steps", "3", "--batch-size", "4",
               "--test-examples", "4", "--eval-every", "3", "--device", "cpu", "--quiet",
               "--out", str(tmp_path), "--scan-kernels", "fastest"])
    assert rc == 0
    if ScanBlocks is not None:  # the preset was set (it changes these, test_triton) and undone after the run
        assert seen == ["fastest"]
        assert ScanBlocks.variant == "time_last" and not ScanBlocks.fold_fixed
    rec = json.loads((tmp_path / "ssm_mqar_mamba_both_L1_d16.json").read_text())
    assert rec["metrics"]["final"]["step"] == 3 and "kv16" in rec["metrics"]["final"]
    assert (tmp_path / "ssm_mqar_mamba_both_L1_d16.png").exists()
    # training checkpointed into the output folder by default (no --checkpoint given)
    ck = tmp_path / "ssm_mqar_mamba_both_L1_d16.ckpt.pt"
    import torch

    assert torch.load(ck, map_location="cpu", weights_only=False)["step"] == 3


def test_cli_diagnose_and_bad_args(tmp_path, capsys):
    from anybudget.cli import main

    rc = main(["ssm", "diagnose", "--layers", "1", "--d-model", "16", "--d-state", "4", "--vocab-size", "96",
               "--seq-len", "32", "--batch", "1", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 0 and (tmp_path / "ssm_diagnose_mamba_none_L1_d16_influence.png").exists()
    with pytest.raises(SystemExit):
        main(["ssm", "mqar", "--polarize", "two"])
    with pytest.raises(SystemExit) as e:  # argparse: one line naming the argument and its choices, exit 2
        main(["ssm", "mqar", "--scan-kernels", "turbo", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--scan-kernels" in err and "'default', 'fastest'" in err and "Traceback" not in err
    with pytest.raises(SystemExit, match="--vocab-size 60 must be > --max-seq-len 64"):
        main(["ssm", "mqar", "--vocab-size", "60", "--d-model", "16", "--max-seq-len", "64", "--steps", "1",
              "--device", "cpu", "--quiet", "--out", str(tmp_path)])


def test_decay_all_puts_every_parameter_under_weight_decay_as_the_reference_code():
    from anybudget.ssm.train import _param_groups

    lm = tiny_lm()
    n_params = len({id(p) for p in lm.parameters()})
    ours = _param_groups(lm, 0.1)
    a_logs = {id(m.A_log) for m in lm.modules() if hasattr(m, "A_log")}
    assert a_logs and a_logs <= {id(p) for p in ours[1]["params"]}  # Mamba's recipe: A_log not decayed
    assert ours[1]["weight_decay"] == 0.0 and len(ours[0]["params"]) + len(ours[1]["params"]) == n_params
    ref = _param_groups(lm, 0.1, decay_all=True)
    assert len(ref[0]["params"]) == n_params and ref[0]["weight_decay"] == 0.1 and not ref[1]["params"]


def test_checkpoint_without_decay_all_resumes_as_false_and_refuses_true():
    from anybudget.ssm.checkpoint import CheckpointMismatch, check_run_config, run_config

    lm = tiny_lm()
    old = run_config(lm, TrainConfig(), SEGS, TESTS)
    del old["train"]["decay_all"]  # a checkpoint written before the setting existed
    check_run_config(old, run_config(lm, TrainConfig(), SEGS, TESTS), "ck.pt")
    with pytest.raises(CheckpointMismatch, match=r"train\.decay_all: checkpoint False, now True"):
        check_run_config(old, run_config(lm, TrainConfig(decay_all=True), SEGS, TESTS), "ck.pt")
