"""Elastic continued training (Flextron Sec. 3.2): every step trains several nested sub-networks at once.

Each step draws ``subnets_per_step`` sub-networks: always the full and the smallest (the sandwich
rule), the rest either ``uniform`` (each layer's choices drawn uniformly, Flextron's "random in
between") or by ``budget`` (Nemotron Elastic Sec. 3: draw a target parameter fraction from
``budget_fractions`` with ``budget_probs``, then the random config closest to it). The loss of a
sub-network is ``kd_weight * KL(p_teacher || p_student) + lm_weight * CE`` with the teacher = the
frozen full model (by default a copy of the model before training; pass the un-permuted original
to use it, both compute the same function). The per-step mean weighs every sub-network equally (the
sandwich rule; ``full_weight`` > 1 is an option of ours, off by default, that leans it toward the
full model). Megatron's Flextron code differs: one budget per step (the full model with probability
0.33) and, with a teacher loaded, the KD loss alone (here ``lm_weight=0``). The teacher's softmax is computed once per step and the KL and CE terms share one
log-sum-exp of the student (:func:`kd_lm_loss`, equal to ``forward_kl + lm_loss`` to float
rounding). Under ``torchrun`` (WORLD_SIZE > 1) every rank draws
its own data windows and the same sub-networks, and gradients are averaged with all-reduce after
the backward pass (DDP's reducer is not used because a step runs several forwards of one module).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anybudget.elastic.evaluate import autocast_for
from anybudget.elastic.latency import params_table
from anybudget.elastic.model import ElasticLlama, SubnetConfig

__all__ = ["ElasticTrainConfig", "forward_kl", "kd_lm_loss", "sample_subnets", "step_backward", "teacher_targets", "train_elastic"]


@dataclass(frozen=True)
class ElasticTrainConfig:
    """Elastic training settings.

    Args:
        steps: optimizer steps (the paper spends 7.63% of the pre-training tokens in total).
        lr: AdamW learning rate (Nemotron Elastic: 9e-5 for the model); linear warm-up over
            ``warmup_steps`` then cosine to ``0.1 * lr``.
        weight_decay, grad_clip: AdamW weight decay; global gradient-norm clip (0 = off).
        subnets_per_step: sub-networks per step, >= 2 (full + smallest + the rest sampled).
        sampling: ``uniform`` (Flextron) or ``budget`` (Nemotron Elastic budget sampling).
        budget_fractions, budget_probs: target parameter fractions and their probabilities for
            ``budget`` sampling (Nemotron Elastic stage 2 uses p = 0.5/0.3/0.2 over its budgets).
        homogeneous: sampled sub-networks use one choice for all layers.
        kd_weight, lm_weight: loss = kd_weight * forward KL from the frozen full model +
            lm_weight * next-token CE (Flextron distils; the LM term keeps the full model learning).
        kd_temperature: softmax temperature of the distillation (1 = plain KL).
        full_weight: weight of the full model's loss in the step's weighted mean, the others 1
            (1 = equal weights, the paper's sandwich training; ours, off by default: > 1 trades
            small-sub-network quality for less drift of the full model, which shares every weight).
        seed: sub-network sampling seed (data has its own).
        checkpoint_every: steps between checkpoints when a checkpoint folder is given.
    """

    steps: int = 1000
    lr: float = 9e-5
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    subnets_per_step: int = 4
    sampling: str = "uniform"
    budget_fractions: tuple[float, ...] = (1.0, 0.75, 0.5)
    budget_probs: tuple[float, ...] = (0.5, 0.3, 0.2)
    homogeneous: bool = False
    kd_weight: float = 1.0
    lm_weight: float = 1.0
    kd_temperature: float = 1.0
    full_weight: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self):
        if self.steps < 0 or self.subnets_per_step < 2:
            raise ValueError(f"steps={self.steps} must be >= 0 and subnets_per_step={self.subnets_per_step} >= 2")
        if self.sampling not in ("uniform", "budget"):
            raise ValueError(f"sampling={self.sampling!r} must be 'uniform' or 'budget'")
        if len(self.budget_fractions) != len(self.budget_probs) or abs(sum(self.budget_probs) - 1) > 1e-6:
            raise ValueError(f"budget_probs={self.budget_probs} must match budget_fractions={self.budget_fractions} and sum to 1")
        if self.lr <= 0 or self.kd_weight < 0 or self.lm_weight < 0 or self.kd_weight + self.lm_weight == 0:
            raise ValueError(f"lr={self.lr} must be > 0; kd_weight={self.kd_weight}, lm_weight={self.lm_weight} >= 0, not both 0")
        if not self.full_weight > 0:
            raise ValueError(f"full_weight={self.full_weight} must be > 0")


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over tokens of KL(p_teacher || p_student), logits (..., V); float32 inside."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


def teacher_targets(teacher_logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher probabilities ``p`` (..., V) at ``temperature`` and the constant ``mean sum p log p``."""
    logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    p = logp.exp()
    return p, (p * logp).sum(-1).mean()


def kd_lm_loss(student_logits: torch.Tensor, teacher: tuple[torch.Tensor, torch.Tensor], windows: torch.Tensor,
               kd_weight: float = 1.0, lm_weight: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """``kd_weight * forward_kl + lm_weight * lm_loss`` from one log-sum-exp of the student.

    KL(p || softmax(z)) = sum p log p - sum p z + logsumexp(z) (since sum p = 1) and CE = logsumexp(z) - z_y,
    so no (..., V) log-softmax of the student is materialised; ``teacher`` from :func:`teacher_targets`.
    """
    z = student_logits.float()
    loss = z.new_zeros(())
    lse = None
    if kd_weight:
        p, neg_entropy = teacher
        zt = z / temperature if temperature != 1 else z
        lse_t = torch.logsumexp(zt, dim=-1)
        kl = neg_entropy - ((p * zt).sum(-1) - lse_t).mean()
        loss = loss + kd_weight * kl * temperature**2
        lse = lse_t if temperature == 1 else None
    if lm_weight:
        lse = torch.logsumexp(z, dim=-1) if lse is None else lse
        ce = (lse - z.gather(-1, windows[:, 1:, None]).squeeze(-1)).mean()
        loss = loss + lm_weight * ce
    return loss


def _random_subnet(em: ElasticLlama, g: torch.Generator, homogeneous: bool) -> SubnetConfig:
    n = 1 if homogeneous else em.num_layers
    a = torch.randint(0, len(em.kv_choices), (n,), generator=g).tolist()
    m = torch.randint(0, len(em.mlp_choices), (n,), generator=g).tolist()
    if homogeneous:
        a, m = a * em.num_layers, m * em.num_layers
    return em.from_indices(a, m)


def sample_subnets(em: ElasticLlama, cfg: ElasticTrainConfig, step: int) -> list[SubnetConfig]:
    """The sub-networks of ``step``: [full, smallest, sampled...]; the same on every rank and on resume."""
    g = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
    out = [em.full(), em.smallest()]
    table = params_table(em) if cfg.sampling == "budget" else None
    full_params = table.cost(em.full()) if table else 0
    for _ in range(cfg.subnets_per_step - 2):
        if table is None:
            out.append(_random_subnet(em, g, cfg.homogeneous))
            continue
        k = int(torch.multinomial(torch.tensor(cfg.budget_probs), 1, generator=g))
        target = cfg.budget_fractions[k] * full_params
        cands = [_random_subnet(em, g, cfg.homogeneous) for _ in range(32)] + [em.full(), em.smallest()]
        out.append(min(cands, key=lambda c: abs(table.cost(c) - target)))
    return out


def _lr_at(cfg: ElasticTrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _world() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _any_rank(flag: bool, world: int, dev: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (ranks must stop at the same step)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    i = 0
    for gr in grads:
        gr.copy_(flat[i:i + gr.numel()].view_as(gr))
        i += gr.numel()


def _save(path: Path, model, opt, step: int, tokens: int, history: list) -> None:
    from safetensors.torch import save_file

    from anybudget.io import atomic_path, atomic_write_json

    path.mkdir(parents=True, exist_ok=True)
    weights, seen = {}, set()
    for k, v in model.state_dict().items():  # tied weights (embedding = LM head) are stored once
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            weights[k] = v.detach().contiguous()
    with atomic_path(path / "model.safetensors") as tmp:
        save_file(weights, str(tmp))
    state, names = {}, {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                state[f"{names[id(p)]}::{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
    with atomic_path(path / "optimizer.safetensors") as tmp:
        save_file(state, str(tmp))
    atomic_write_json(path / "state.json", {"step": step, "tokens": tokens, "history": history})


def _load(path: Path, model, opt) -> tuple[int, int, list]:
    from safetensors.torch import load_file

    dev = next(model.parameters()).device
    sd = load_file(str(path / "model.safetensors"), device=str(dev))
    model.load_state_dict(sd, strict=False)
    state = load_file(str(path / "optimizer.safetensors"), device=str(dev))
    params = dict(model.named_parameters())
    for key, v in state.items():
        name, k = key.split("::")
        opt.state[params[name]][k] = v.cpu() if k == "step" else v  # AdamW keeps its step on the CPU
    meta = json.loads((path / "state.json").read_text())
    return meta["step"], meta["tokens"], meta["history"]


def step_backward(em: ElasticLlama, teacher: torch.nn.Module, w: torch.Tensor, cfg: ElasticTrainConfig,
                  step: int) -> list[float]:
    """Accumulate one step's gradients for window ``w`` (B, S+1); returns each sub-network's loss.

    The step's loss is the weighted mean over ``sample_subnets(em, cfg, step)`` of
    ``kd_weight * KL(teacher || sub) + lm_weight * CE(sub)``, weight ``full_weight`` for the full model, 1 otherwise.
    """
    dev = w.device
    inp = w[:, :-1]
    t_targets = None
    if cfg.kd_weight:
        with torch.no_grad(), autocast_for(dev):
            t_targets = teacher_targets(teacher(input_ids=inp, use_cache=False).logits, cfg.kd_temperature)
    losses = []
    total_weight = cfg.full_weight + cfg.subnets_per_step - 1
    for i, sub in enumerate(sample_subnets(em, cfg, step)):
        with em.use(sub), autocast_for(dev):
            logits = em.model(input_ids=inp, use_cache=False).logits
        loss = kd_lm_loss(logits, t_targets, w, cfg.kd_weight, cfg.lm_weight, cfg.kd_temperature)
        (loss * ((cfg.full_weight if i == 0 else 1.0) / total_weight)).backward()
        del logits
        losses.append(float(loss.detach()))
    return losses


def train_elastic(
    em: ElasticLlama,
    batches: Callable[[int, int], torch.Tensor],
    config: ElasticTrainConfig | None = None,
    teacher: torch.nn.Module | None = None,
    checkpoint: str | os.PathLike | None = None,
    time_budget_s: float | None = None,
    stop_after: int | None = None,
    quiet: bool = True,
) -> dict:
    """Train ``em`` in place; ``batches(step, rank)`` gives ``(B, S+1)`` token windows.

    Resumes from ``checkpoint`` if it holds a run (a resumed run equals an uninterrupted one: data
    and sub-networks are functions of the step). Under torchrun every rank must pass the same
    ``config`` (the step count sets the schedule). ``time_budget_s`` / ``stop_after`` (steps in this
    call) end the call early with a checkpoint; calling again continues. Returns ``{"steps", "tokens", "history", ...}``.
    """
    cfg = config or ElasticTrainConfig()
    rank, world = _world()
    model = em.model
    dev = next(model.parameters()).device
    if teacher is None:
        teacher = copy.deepcopy(model)
    teacher.eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    step, tokens, history = 0, 0, []
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt and (ckpt / "state.json").is_file():
        step, tokens, history = _load(ckpt, model, opt)
    model.train()
    start, stopped = time.perf_counter(), "steps"
    bar = tqdm(total=cfg.steps, initial=step, desc="elastic training", disable=quiet or rank != 0)
    first = step
    while step < cfg.steps:
        if time_budget_s is not None and _any_rank(time.perf_counter() - start > time_budget_s, world, dev):
            stopped = "time"
            break
        if stop_after is not None and step - first >= stop_after:
            stopped = "stop_after"
            break
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        w = batches(step, rank).to(dev)
        opt.zero_grad(set_to_none=True)
        losses = step_backward(em, teacher, w, cfg, step)
        if world > 1:
            average_gradients(params, world)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        tokens += w[:, 1:].numel() * world
        history.append([step, losses[0], losses[1], sum(losses) / len(losses)])
        bar.update()
        bar.set_postfix(full=f"{losses[0]:.3f}", smallest=f"{losses[1]:.3f}")
        if ckpt and rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            _save(ckpt, model, opt, step, tokens, history)
    bar.close()
    if ckpt and rank == 0 and stopped != "steps":
        _save(ckpt, model, opt, step, tokens, history)
    model.eval()
    return {"steps": step, "tokens": tokens, "history": history, "stopped": stopped,
            "seconds": time.perf_counter() - start, "world_size": world, "config": asdict(cfg)}


def config_fields() -> list[str]:
    return [f.name for f in fields(ElasticTrainConfig)]
