"""Fine-tuning and evaluation for one IMP round: a task (classification / regression) or the
masked-LM objective. Single process, or data-parallel under ``torchrun`` (WORLD_SIZE > 1).

Each round builds a fresh AdamW and linear-decay schedule (the reference code re-creates both
after every pruning step) and draws its batch order from ``seed`` alone, so a round's result
depends only on (weights at its start, mask, seed): what makes a resumed IMP run exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from anybudget.measure import default_device
from anybudget.prune.masks import Mask, MaskEnforcer
from anybudget.prune.tasks import TaskData, metric

__all__ = ["FineTuneConfig", "evaluate", "finetune", "world"]


@dataclass(frozen=True)
class FineTuneConfig:
    """One fine-tuning run. Defaults: the paper's GLUE setting (3 epochs, lr 2e-5, batch 32,
    AdamW, linear decay, no warm-up, no weight decay, max grad norm 1.0: HF run_glue's)."""

    epochs: float = 3.0
    lr: float = 2e-5
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    eval_batch_size: int = 256
    bf16: bool = True  # autocast on CUDA only

    def __post_init__(self):
        for f in ("lr", "batch_size", "eval_batch_size"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f}={getattr(self, f)!r} must be > 0")
        if self.epochs <= 0 and not self.max_steps:
            raise ValueError(f"epochs={self.epochs!r} must be > 0 (or set max_steps)")


def world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _optimizer(model: nn.Module, cfg: FineTuneConfig, total: int):
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    fused = all(p.is_cuda for p in decay + other)  # one kernel per step: small models are launch-bound
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, fused=fused or None)
    warm = int(cfg.warmup_ratio * total)

    def lam(step):
        if step < warm:
            return (step + 1) / max(1, warm)
        return max(0.0, (total - step) / max(1, total - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lam)


def _loss(model: nn.Module, batch: dict, kind: str) -> torch.Tensor:
    labels = batch.pop("labels")
    if kind == "mlm":
        logits = model(**batch).logits
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    logits = model(**batch).logits.float()
    if kind == "regression":
        return nn.functional.mse_loss(logits.squeeze(-1), labels.float())
    return nn.functional.cross_entropy(logits, labels.long())


def finetune(
    model: nn.Module,
    data: TaskData | Callable[[np.random.Generator, int], dict],
    kind: str,
    cfg: FineTuneConfig,
    seed: int,
    mask: Mask | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
    progress: bool = False,
    desc: str = "fine-tune",
) -> dict:
    """Train ``model`` in place; returns ``{"steps", "loss"}`` (mean of the last 50 steps).

    data: a ``TaskData`` (kind "binary" / "regression"), or for kind "mlm" a function
    ``(rng, batch_size) -> batch dict`` (see ``mlm.mlm_batches``). The mask is re-applied after
    every optimizer step. Under DDP each rank takes its share of every global batch.
    """
    device = next(model.parameters()).device
    rank, ws = world()
    n = len(data) if isinstance(data, TaskData) else None
    steps_per_epoch = max(1, n // cfg.batch_size) if n is not None else 1
    total = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
    if kind == "mlm" and not cfg.max_steps:
        raise ValueError("kind='mlm' trains by steps: set FineTuneConfig.max_steps")
    opt, sched = _optimizer(model, cfg, total)
    enforcer = MaskEnforcer(model, mask, opt, strict=False) if mask is not None else None
    net = model
    if ws > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout: a round must not depend on what ran before it
    order = np.empty(0, dtype=np.int64)
    amp = cfg.bf16 and device.type == "cuda"
    losses = []
    model.train()
    bar = tqdm(range(total), desc=desc, disable=not progress or rank != 0, leave=False)
    for step in bar:
        if n is not None:
            if len(order) < cfg.batch_size:
                order = np.concatenate([order, rng.permutation(n)])
            idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
            per = -(-len(idx) // ws)
            batch = data.batch(idx[rank * per:(rank + 1) * per], device=device)
        else:
            batch = {k: v.to(device) for k, v in data(rng, cfg.batch_size).items()}
            per = -(-batch["input_ids"].shape[0] // ws)
            batch = {k: v[rank * per:(rank + 1) * per] for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = _loss(net, batch, kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()  # the mask is re-applied by the enforcer's post-step hook
        sched.step()
        losses.append(loss.detach())  # no .item() here: a sync per step stalls the launch queue
        if len(losses) > 50:
            losses.pop(0)
        if on_step is not None:
            on_step(step + 1, model)
    if enforcer is not None:
        enforcer.remove()
    model.eval()
    return {"steps": total, "loss": float(torch.stack(losses).float().mean()) if losses else float("nan")}


@torch.no_grad()
def evaluate(model: nn.Module, data: TaskData, kind: str, batch_size: int = 256) -> dict[str, float]:
    """Task metrics on ``data`` (accuracy; or Pearson and Spearman for regression)."""
    device = next(model.parameters()).device
    model.eval()
    preds = []
    amp = device.type == "cuda"
    for s in range(0, len(data), batch_size):
        b = data.batch(np.arange(s, min(s + batch_size, len(data))), device=device)
        b.pop("labels")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(**b).logits.float()
        preds.append(logits.squeeze(-1) if kind == "regression" else logits.argmax(-1))
    p = torch.cat(preds).cpu().numpy()
    return metric(kind, p, data.labels)


def dist_setup(device: str | None = None) -> torch.device:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1); the device."""
    import torch.distributed as dist

    ws = int(os.environ.get("WORLD_SIZE", "1"))
    device = default_device(device)
    if ws > 1 and not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return torch.device(device)
