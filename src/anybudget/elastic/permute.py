"""Reorder heads and neurons by importance so that every sub-network is a prefix (Flextron Sec. 3.1).

A permutation of MLP neurons (rows of gate/up, columns of down) or of attention heads (rows of
q/k/v, columns of o) is a symmetry of the layer: the full model computes the same function to float
rounding. GQA: KV groups are ordered by their summed query-head importance and each query head
moves with its KV head (query heads ``g*n_rep .. (g+1)*n_rep-1`` read KV head ``g``); inside a group
the query heads are ordered by their own importance.
"""

from __future__ import annotations

import torch
from torch import nn

from anybudget.elastic.families import check_family, decoder_layers, shape_of
from anybudget.elastic.importance import Importance

__all__ = ["head_order", "neuron_order", "permute_by_importance"]


def neuron_order(scores: torch.Tensor) -> torch.Tensor:
    """(intermediate,) -> permutation, most important first (stable: ties keep their order)."""
    return torch.sort(scores.detach().cpu(), descending=True, stable=True).indices


def head_order(head_scores: torch.Tensor, group_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(heads,), (kv_heads,) -> (query-head permutation (heads,), KV-head permutation (kv_heads,))."""
    kv = group_scores.numel()
    n_rep = head_scores.numel() // kv
    groups = torch.sort(group_scores.detach().cpu(), descending=True, stable=True).indices
    q = []
    for g in groups.tolist():
        inner = torch.sort(head_scores.detach().cpu()[g * n_rep:(g + 1) * n_rep], descending=True, stable=True).indices
        q.extend((g * n_rep + inner).tolist())
    return torch.tensor(q), groups


def _rows(lin: nn.Linear, perm: torch.Tensor) -> None:
    lin.weight.data = lin.weight.data[perm.to(lin.weight.device)].contiguous()
    if lin.bias is not None:
        lin.bias.data = lin.bias.data[perm.to(lin.bias.device)].contiguous()


def _cols(lin: nn.Linear, perm: torch.Tensor) -> None:
    lin.weight.data = lin.weight.data[:, perm.to(lin.weight.device)].contiguous()


def _expand(head_perm: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Head permutation -> row permutation of a (heads*head_dim, ...) weight."""
    return (head_perm[:, None] * head_dim + torch.arange(head_dim)[None]).reshape(-1)


@torch.no_grad()
def permute_by_importance(model: nn.Module, importance: Importance, heads: bool = True, neurons: bool = True) -> nn.Module:
    """Permute ``model``'s weights in place, most important heads / neurons first; returns ``model``."""
    check_family(model)
    shp = shape_of(model)
    layers = decoder_layers(model)
    if len(importance.neurons) != len(layers) or len(importance.heads) != len(layers):
        raise ValueError(f"importance has {len(importance.neurons)} layers; the model has {len(layers)}")
    hd = shp["head_dim"]
    for i, layer in enumerate(layers):
        if neurons:
            p = neuron_order(importance.neurons[i])
            _rows(layer.mlp.gate_proj, p)
            _rows(layer.mlp.up_proj, p)
            _cols(layer.mlp.down_proj, p)
        if heads:
            q, kv = head_order(importance.heads[i], importance.kv_groups[i])
            a = layer.self_attn
            _rows(a.q_proj, _expand(q, hd))
            _rows(a.k_proj, _expand(kv, hd))
            _rows(a.v_proj, _expand(kv, hd))
            _cols(a.o_proj, _expand(q, hd))
    return model
