"""A sub-network as a plain, smaller model of the source family (``LlamaForCausalLM`` etc.).

transformers' Llama / Mistral / Qwen2 / Qwen3 configs hold one ``intermediate_size`` and one head
count for all layers (checked on transformers 5.24: only Gemma3n takes per-layer sizes), so a
*uniform* sub-network exports as a plain model that ``from_pretrained`` loads with no custom code.
A heterogeneous one (different widths per layer) cannot be expressed: ``export`` raises, or with
``heterogeneous="cover"`` exports the smallest uniform sub-network that contains it (each axis at
its widest layer; real weights, no zero padding), whose cost is then at least the original's.
"""

from __future__ import annotations

import torch
from torch import nn

from anybudget.elastic.model import ElasticLlama, LayerConfig, SubnetConfig

__all__ = ["export", "uniform_cover"]


def uniform_cover(subnet: SubnetConfig) -> SubnetConfig:
    """The smallest uniform config containing ``subnet``: every layer at the widest layer's choice."""
    x = LayerConfig(max(layer.kv_groups for layer in subnet.layers), max(layer.mlp_width for layer in subnet.layers))
    return SubnetConfig((x,) * len(subnet.layers))


@torch.no_grad()
def export(em: ElasticLlama, subnet: SubnetConfig, heterogeneous: str = "error", dtype: torch.dtype | None = None) -> nn.Module:
    """A new model of ``type(em.model)`` with the weights of ``subnet``; its logits equal ``em`` under ``subnet``.

    Args:
        heterogeneous: ``"error"`` (default) raises for a config whose layers differ; ``"cover"``
            exports :func:`uniform_cover` of it instead.
        dtype: dtype of the new model (default: the source's).
    """
    em.validate(subnet)
    if heterogeneous not in ("error", "cover"):
        raise ValueError(f"heterogeneous={heterogeneous!r} must be 'error' or 'cover'")
    if not subnet.is_uniform:
        if heterogeneous == "error":
            raise ValueError(
                f"subnet {subnet} has different widths per layer; a plain {type(em.model).__name__} config "
                "holds one intermediate_size and one head count for all layers. Route with uniform=True, "
                "or export(..., heterogeneous='cover') for the smallest uniform model that contains it")
        subnet = uniform_cover(subnet)
    x, hd = subnet.layers[0], em.shape["head_dim"]
    q, kv, w = x.kv_groups * em.n_rep * hd, x.kv_groups * hd, x.mlp_width
    src = em.model
    cfg = src.config.__class__.from_dict(src.config.to_dict())
    cfg.num_attention_heads = x.kv_groups * em.n_rep
    cfg.num_key_value_heads = x.kv_groups
    cfg.head_dim = hd
    cfg.intermediate_size = w
    sd = {}
    for name, t in src.state_dict().items():
        if ".layers." in name:
            part = name.split(".layers.", 1)[1].split(".", 1)[1]
            if part.startswith("self_attn.q_proj."):
                t = t[:q]
            elif part.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                t = t[:kv]
            elif part == "self_attn.o_proj.weight":
                t = t[:, :q]
            elif part.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
                t = t[:w]
            elif part == "mlp.down_proj.weight":
                t = t[:, :w]
        sd[name] = t.detach().clone()
    dtype = dtype or next(src.parameters()).dtype
    cfg.dtype = dtype
    new = type(src)(cfg)
    missing, unexpected = new.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"export: state dict mismatch, missing {missing}, unexpected {unexpected}")
    if getattr(cfg, "tie_word_embeddings", False):
        new.tie_weights()
    new.to(dtype=dtype, device=next(src.parameters()).device)
    if hasattr(src.config, "_attn_implementation"):
        new.config._attn_implementation = src.config._attn_implementation
    return new.eval()
