"""Importance of attention heads, MLP neurons, embedding channels and layers from activations.

Forward hooks only, no gradients (Flextron Sec. 3.1 / Minitron Sec. 2.2: activation magnitude on a
small calibration set; Nemotron Elastic Sec. 3 for embedding channels and depth):

- MLP neuron i of layer l: ``|a_i|`` where ``a = act(x W_gate^T) * (x W_up^T)`` is the input to
  ``down_proj`` (for a plain MLP this is the neuron's activation, Nemotron Elastic's ``|X W1_i^T|``).
- Attention head h: ``||o_h||_2`` of the head's output (the input to ``o_proj``, per head).
  A KV group's score is the sum over its query heads (GQA: a group is kept or dropped whole).
- Embedding channel c: ``sum |RMSNorm(X)_c|`` over every RMSNorm output of the network.
- Depth: layer j's score = ``MSE(logits, logits without layer j) / mean(logits^2)`` (one shot;
  Nemotron Elastic removes layers iteratively, which needs a pruning loop this library leaves out).

Aggregation over tokens (Minitron's best choice): mean over the sequence, then L2 over the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from anybudget.elastic.families import check_family, decoder_layers, shape_of

__all__ = ["Importance", "activation_importance", "as_input_ids", "layer_importance"]


@dataclass
class Importance:
    """Scores per layer: ``heads[l] (heads,)``, ``kv_groups[l] (kv_heads,)``, ``neurons[l] (intermediate,)``;
    ``embedding (hidden,)`` and ``layers (num_layers,)`` when asked for. Higher = more important."""

    heads: list[torch.Tensor]
    kv_groups: list[torch.Tensor]
    neurons: list[torch.Tensor]
    embedding: torch.Tensor | None = None
    layers: torch.Tensor | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        d = {}
        for name in ("heads", "kv_groups", "neurons"):
            for i, t in enumerate(getattr(self, name)):
                d[f"{name}.{i}"] = t.contiguous()
        for name in ("embedding", "layers"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name).contiguous()
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor]) -> Importance:
        def seq(name):
            n = sum(1 for k in d if k.startswith(name + "."))
            return [d[f"{name}.{i}"] for i in range(n)]
        return cls(seq("heads"), seq("kv_groups"), seq("neurons"), d.get("embedding"), d.get("layers"))


def as_input_ids(batch) -> torch.Tensor:
    """A calibration batch as ``input_ids (batch, seq)``: a tensor, a dict with input_ids, or a list of ints."""
    if isinstance(batch, dict):
        batch = batch["input_ids"]
    if not torch.is_tensor(batch):
        batch = torch.as_tensor(batch)
    if batch.dim() == 1:
        batch = batch[None]
    if batch.dim() != 2 or batch.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"a calibration batch must be integer token ids (batch, seq); got {tuple(batch.shape)} {batch.dtype}")
    return batch.long()


def _token_magnitude(x: torch.Tensor) -> torch.Tensor:
    """(batch, seq, n) -> (n,): sum over the batch of (mean over seq)^2; sqrt taken at the end."""
    return x.float().abs().mean(dim=1).pow(2).sum(dim=0)


@torch.no_grad()
def activation_importance(
    model: nn.Module,
    batches: Iterable,
    embedding: bool = False,
    depth: bool = False,
    quiet: bool = True,
) -> Importance:
    """Head, KV-group and neuron importance (and optionally embedding channels, depth) of ``model``."""
    check_family(model)
    shp = shape_of(model)
    H, KV, hd = shp["heads"], shp["kv_heads"], shp["head_dim"]
    layers = decoder_layers(model)
    dev = next(model.parameters()).device
    heads = [torch.zeros(H, device=dev) for _ in layers]
    neurons = [torch.zeros(shp["intermediate"], device=dev) for _ in layers]
    emb = torch.zeros(shp["hidden"], device=dev)
    handles = []

    def head_hook(i):
        def hook(mod, args):
            x = args[0]
            per_head = x.reshape(*x.shape[:-1], -1, hd).float().norm(dim=-1)  # (b, s, heads)
            heads[i] += _token_magnitude(per_head)
        return hook

    def neuron_hook(i):
        def hook(mod, args):
            neurons[i] += _token_magnitude(args[0])
        return hook

    def norm_hook(mod, args, out):
        emb.add_(out.float().abs().sum(dim=(0, 1)))

    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook(i)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(neuron_hook(i)))
        if embedding:
            handles.append(layer.input_layernorm.register_forward_hook(norm_hook))
            handles.append(layer.post_attention_layernorm.register_forward_hook(norm_hook))
    if embedding:
        handles.append(model.model.norm.register_forward_hook(norm_hook))
    was_training = model.training
    model.eval()
    batches = [as_input_ids(b) for b in batches]
    if not batches:
        raise ValueError("batches is empty; importance needs at least one calibration batch")
    try:
        for ids in tqdm(batches, desc="importance", disable=quiet):
            model(input_ids=ids.to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    heads = [h.sqrt() for h in heads]
    groups = [h.view(KV, H // KV).sum(dim=1) for h in heads]
    out = Importance(heads, groups, [n.sqrt() for n in neurons], emb if embedding else None)
    if depth:
        out.layers = layer_importance(model, batches, quiet=quiet)
    return out


@contextlib.contextmanager
def skip_layer(model: nn.Module, j: int):
    """Run with decoder layer ``j`` replaced by the identity (its output is its input)."""
    def hook(mod, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        return (x, *output[1:]) if isinstance(output, tuple) else x
    h = decoder_layers(model)[j].register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        h.remove()


@torch.no_grad()
def layer_importance(model: nn.Module, batches: Iterable, quiet: bool = True) -> torch.Tensor:
    """Depth importance (num_layers,): normalised MSE of the logits with each layer removed (Nemotron Elastic)."""
    batches = [as_input_ids(b) for b in batches]
    dev = next(model.parameters()).device
    n = len(decoder_layers(model))
    scores = torch.zeros(n)
    was_training = model.training
    model.eval()
    try:
        ref = [model(input_ids=b.to(dev), use_cache=False).logits.float() for b in batches]
        for j in tqdm(range(n), desc="depth importance", disable=quiet):
            with skip_layer(model, j):
                err = sum(((model(input_ids=b.to(dev), use_cache=False).logits.float() - r) ** 2).mean() / r.pow(2).mean()
                          for b, r in zip(batches, ref))
            scores[j] = float(err) / len(batches)
    finally:
        model.train(was_training)
    return scores
