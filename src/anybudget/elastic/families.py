"""Which Hugging Face model families the elastic slicing supports, and how to reach their parts.

All four share the Llama decoder layout (``model.layers[i].self_attn.{q,k,v,o}_proj`` with grouped
query heads contiguous per KV head, ``mlp.{gate,up,down}_proj`` SwiGLU); Qwen2 adds q/k/v biases,
Qwen3 adds per-head ``q_norm`` / ``k_norm`` (shared over heads, so slicing heads leaves them alone).
"""

from __future__ import annotations

from torch import nn

__all__ = ["SUPPORTED_FAMILIES", "UnsupportedModelError", "check_family", "decoder_layers", "shape_of"]

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


class UnsupportedModelError(TypeError):
    """The model is not a causal LM of a supported family."""


def check_family(model: nn.Module) -> str:
    """The model's ``model_type``; UnsupportedModelError listing the supported families otherwise."""
    cfg = getattr(model, "config", None)
    family = getattr(cfg, "model_type", None)
    if family not in SUPPORTED_FAMILIES or not hasattr(getattr(model, "model", None), "layers"):
        raise UnsupportedModelError(
            f"model family {family!r} ({type(model).__name__}) is not supported; anybudget.elastic "
            f"supports causal LMs of the families {', '.join(SUPPORTED_FAMILIES)} "
            "(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)"
        )
    if getattr(cfg, "pretraining_tp", 1) not in (1, None):
        raise UnsupportedModelError(f"pretraining_tp={cfg.pretraining_tp} is not supported; it must be 1")
    return family


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def shape_of(model: nn.Module) -> dict:
    """Full sizes: layers, hidden, heads, kv_heads, head_dim, intermediate, vocab."""
    c = model.config
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    return {
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
        "heads": heads,
        "kv_heads": kv,
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // heads,
        "intermediate": c.intermediate_size,
        "vocab": c.vocab_size,
        "tied": bool(getattr(c, "tie_word_embeddings", False)),
    }
