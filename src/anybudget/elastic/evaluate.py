"""Language-model loss and perplexity of a sub-network on held-out windows."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from anybudget.elastic.model import ElasticLlama, SubnetConfig

__all__ = ["autocast_for", "lm_loss", "perplexity"]


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; nothing on the CPU (fp32 reference path)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lm_loss(logits: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits (B, S, V) for windows[:, :-1], targets windows[:, 1:]."""
    return F.cross_entropy(logits.float().flatten(0, 1), windows[:, 1:].flatten())


@torch.no_grad()
def perplexity(em_or_model, windows: list[torch.Tensor], subnet: SubnetConfig | None = None) -> float:
    """exp(mean next-token loss) over ``windows`` (each (B, S+1)); token-weighted."""
    model = em_or_model.model if isinstance(em_or_model, ElasticLlama) else em_or_model
    dev = next(model.parameters()).device
    ctx = em_or_model.use(subnet) if isinstance(em_or_model, ElasticLlama) else contextlib.nullcontext()
    total, count = 0.0, 0
    was = model.training
    model.eval()
    try:
        with ctx, autocast_for(dev):
            for w in windows:
                w = w.to(dev)
                logits = model(input_ids=w[:, :-1], use_cache=False).logits
                n = w[:, 1:].numel()
                total += float(lm_loss(logits, w)) * n
                count += n
    finally:
        model.train(was)
    return math.exp(total / count)
