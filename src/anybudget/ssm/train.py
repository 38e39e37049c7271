"""Train and evaluate an LM on MQAR, with checkpoint / resume (the reference code's recipe).

Recipe (SSM-Bottleneck ``multi_depth_mqra.py`` on Zoology): AdamW lr 1e-3, weight decay 0.1
(not on A_log, D, norms, biases), cosine decay to 0, batch 128, test batch 16, 64 epochs of the
300k-example mixture, early stop once validation accuracy reaches 0.99, seed 123. ``max_steps``
shortens the schedule (the cosine follows the shortened length), for budgets that cannot afford
64 epochs; records say which schedule ran.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anybudget.ssm.mqar import TEST_SETS, TRAIN_MIXTURE, MQARStream, multiquery_ar

__all__ = ["TrainConfig", "cosine_lr", "estimate_step_bytes", "evaluate_mqar", "labeled_logits", "mqar_accuracy", "train_mqar"]


@dataclass(frozen=True)
class TrainConfig:
    """MQAR training settings; defaults are the reference code's except two, both named here.

    ``decay_all``: False (default) keeps weight decay off ``A_log``, D, norms and biases (Mamba's own
    recipe, the ``_no_weight_decay`` marks); True decays every parameter, as the reference code's
    zoology ``train.py`` does (one AdamW group over ``model.parameters()``). The cosine schedule steps
    per batch over ``max_steps`` (the reference steps it once per epoch of a fixed dataset).
    """

    lr: float = 1e-3
    weight_decay: float = 0.1
    batch_size: int = 128
    test_batch_size: int = 16
    epochs: int = 64
    max_steps: int | None = None
    eval_every: int = 500
    early_stop_acc: float = 0.99
    seed: int = 123
    vocab_size: int = 8192
    power_a: float = 0.01
    random_non_queries: bool = False
    test_examples: int | None = None  # per test set; None = the reference's 1000
    checkpoint_every: int = 200
    grad_clip: float | None = None
    decay_all: bool = False

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1 or None")
        for name in ("batch_size", "test_batch_size", "epochs", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1")


def estimate_step_bytes(model_cfg, batch_size: int, seq_len: int, scan: str = "chunked") -> int:
    """Peak memory of one training step of a MambaLM (bytes, an upper estimate), before any allocation.

    The PyTorch scans keep ~20 tensors of (batch, d_inner, seq, d_state_total) float32 per layer
    for the backward (the chunked scan's log2(64) doubling levels); the Triton scan keeps none of
    that size. Both keep ~24 (batch, seq, d_inner) tensors per layer. Fitted on a CPU to the peak
    RSS of a step (d_model 128, seq 256-512, batch 4-8: within 10%), plus 0.4 GB for the rest.
    """
    m = model_cfg.mamba
    per_token_layer = 24 * m.d_inner * 4
    if scan != "triton":
        per_token_layer += 20 * m.d_inner * m.d_state_total * 4
    return int(batch_size * seq_len * model_cfg.n_layers * per_token_layer + 0.4 * 2**30)


def labeled_logits(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor):
    """Logits at labeled positions only: (n_labeled, vocab), and their labels (n_labeled,)."""
    mask = labels != -100
    if hasattr(model, "features"):
        return model.lm_head(model.features(inputs)[mask]), labels[mask]
    return model(inputs)[mask], labels[mask]


def mqar_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over positions whose label is not -100. logits (b, l, V), labels (b, l)."""
    mask = labels != -100
    pred = logits.argmax(-1)
    return int((pred[mask] == labels[mask]).sum()), int(mask.sum())


@torch.no_grad()
def evaluate_mqar(model: nn.Module, test_sets=TEST_SETS, vocab_size: int = 8192, batch_size: int = 16,
                  seed: int = 123, num_examples: int | None = None, power_a: float = 0.01,
                  random_non_queries: bool = False, device=None) -> dict[str, float]:
    """Accuracy per test set, keyed ``"kv<num_kv_pairs>"`` (plus ``"avg"``). Test data use seeds
    disjoint from the training stream's."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {}
    for j, seg in enumerate(test_sets):
        n = num_examples or seg.num_examples
        inputs, labels = multiquery_ar(vocab_size, seg.seq_len, seg.num_kv_pairs, n,
                                       seed=10_000_019 + 7 * seed + j, power_a=power_a,
                                       random_non_queries=random_non_queries, device=device)
        correct = total = 0
        for i in range(0, n, batch_size):
            lg, lb = labeled_logits(model, inputs[i:i + batch_size], labels[i:i + batch_size])
            c, t = int((lg.argmax(-1) == lb).sum()), lb.numel()
            correct, total = correct + c, total + t
        out[f"kv{seg.num_kv_pairs}"] = correct / max(total, 1)
    out["avg"] = sum(out.values()) / len(out)
    model.train(was_training)
    return out


def _param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False):
    """AdamW groups: (decayed, not decayed); ``decay_all`` puts every parameter in the first (``TrainConfig``)."""
    decay, no_decay = [], []
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if not decay_all and (getattr(p, "_no_weight_decay", False) or p.dim() < 2):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_lr(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate of (0-based) step ``step``: cosine decay from ``cfg.lr`` to 0 over ``total``."""
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def train_mqar(
    model: nn.Module,
    cfg: TrainConfig = TrainConfig(),
    segments=TRAIN_MIXTURE,
    test_sets=TEST_SETS,
    checkpoint: str | Path | None = None,
    time_budget_s: float | None = None,
    quiet: bool = False,
    log=None,
    step: str = "reference",
) -> dict:
    """Train ``model`` on the MQAR mixture; returns ``{"history", "final", "step", "done"}``.

    Each history record holds the test accuracies and ``loss``: the mean training loss over the
    steps since the previous record.

    ``step``: ``"reference"`` (the original step: masked labeled positions, one host read per
    step) or a fast static-shape step (``fast_step.STEP_MODES``: ``"auto"``, ``"eager"``,
    ``"compile"``, ``"cudagraph"``, ``"compile+cudagraph"``): same batches, same loss up to
    summation order, no host sync between records.

    With ``checkpoint`` the state (model, optimizer, step, history, and the run's configuration)
    is saved atomically every ``checkpoint_every`` steps and when ``time_budget_s`` runs out; a
    later call with the same path resumes where it stopped, and refuses a checkpoint written with
    another configuration (:class:`checkpoint.CheckpointMismatch`, naming the differing keys).
    ``done`` is False when stopped by the time budget.
    """
    from tqdm.auto import tqdm

    from anybudget.io import atomic_path
    from anybudget.ssm.checkpoint import load_checkpoint, run_config

    device = next(model.parameters()).device
    fast = None
    if step != "reference":
        from anybudget.ssm.fast_step import FastStep, FastStepConfig

        fast_cfg = FastStepConfig.from_mode(step, device)  # validates the name before any work
    torch.manual_seed(cfg.seed)
    stream = MQARStream(segments, cfg.batch_size, cfg.vocab_size, cfg.seed, cfg.power_a,
                        cfg.random_non_queries, device=device)
    steps_per_epoch = math.ceil(stream.examples_per_epoch / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    run_cfg = run_config(model, cfg, segments, test_sets)
    ck = load_checkpoint(checkpoint, run_cfg, device) if checkpoint is not None and Path(checkpoint).exists() else None
    if ck is not None:
        model.load_state_dict(ck["model"])
    if step == "reference":
        opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay, cfg.decay_all), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(cfg, s, total) / cfg.lr)
    else:
        fast = FastStep(model, _param_groups(model, cfg.weight_decay, cfg.decay_all), cfg.lr, cfg.grad_clip, fast_cfg)
        opt = fast.opt
    it, history, stopped_early = 0, [], False
    # Each batch is one segment (seq 64 / 4 pairs up to seq 1024 / 256 pairs), and their losses
    # differ by ~ln(256): a single batch's loss says which segment came last, not how training
    # goes (the 4.1 -> 2.9 -> 8.0 "blow-up" of the first GPU Table 2 run), so records average.
    loss_sum, loss_n = 0.0, 0
    if ck is not None:
        if fast is not None:
            fast.load_state_dict(ck["opt"])
        else:
            opt.load_state_dict(ck["opt"])
            if ck.get("sched") is not None:
                sched.load_state_dict(ck["sched"])
            else:  # written by a fast step, which keeps no scheduler: set the schedule's position
                sched.last_epoch = ck["step"]
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(cfg, ck["step"], total)
        it, history, stopped_early = ck["step"], ck["history"], ck.get("stopped_early", False)
        loss_sum, loss_n = ck.get("interval_loss", (0.0, 0))

    def interval_loss():
        if fast is None:
            return float(loss_sum), loss_n
        s, n = fast.take_loss()  # one device read per record
        return loss_sum + s, loss_n + n

    def save():
        nonlocal loss_sum, loss_n
        if checkpoint is None:
            return
        if fast is not None:
            loss_sum, loss_n = interval_loss()
        with atomic_path(checkpoint) as tmp:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict() if fast is None else None,
                        "step": it, "history": history, "stopped_early": stopped_early,
                        "interval_loss": (float(loss_sum), loss_n),
                        "config": asdict(cfg), "run_config": run_cfg}, tmp)

    def evaluate():
        return evaluate_mqar(model, test_sets, cfg.vocab_size, cfg.test_batch_size, cfg.seed,
                             cfg.test_examples, cfg.power_a, cfg.random_non_queries)

    t0 = time.monotonic()
    model.train()
    bar = tqdm(total=total, initial=it, disable=quiet, desc="mqar", dynamic_ncols=True)
    loss_ema = None
    while it < total and not stopped_early:
        if time_budget_s is not None and time.monotonic() - t0 > time_budget_s:
            save()
            bar.close()
            return {"history": history, "final": None, "step": it, "done": False}
        if fast is not None:
            inputs, positions, values, _ = stream.batch_queries(it)
            fast.step(inputs, positions, values, cosine_lr(cfg, it, total))
        else:
            inputs, labels, _ = stream.batch(it)
            logits, lab = labeled_logits(model, inputs, labels)
            loss = F.cross_entropy(logits.float(), lab)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            loss_sum, loss_n = loss_sum + loss.detach(), loss_n + 1  # a tensor: no device sync per step
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
        it += 1
        bar.update(1)
        if fast is None and (it % 20 == 0 or it == total):
            cur = loss.item()
            loss_ema = cur if loss_ema is None else 0.9 * loss_ema + 0.1 * cur
            bar.set_postfix(loss=f"{loss_ema:.3f}")
        if it % cfg.eval_every == 0 or it == total:
            acc = evaluate()
            s, n = interval_loss()
            history.append({"step": it, "loss": s / n if n else None, "elapsed_s": time.monotonic() - t0, **acc})
            loss_sum, loss_n = 0.0, 0
            if fast is not None:
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
            if log:
                log(history[-1])
            if acc["avg"] >= cfg.early_stop_acc:
                stopped_early = True
        if it % cfg.checkpoint_every == 0:
            save()
    bar.close()
    final = history[-1] if history and history[-1]["step"] == it else None
    if final is None:
        acc = evaluate()
        s, n = interval_loss()
        final = {"step": it, "loss": s / n if n else None, "elapsed_s": time.monotonic() - t0, **acc}
        loss_sum, loss_n = 0.0, 0
        history.append(final)
    save()
    return {"history": history, "final": final, "step": it, "done": True}
