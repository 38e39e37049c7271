"""Tiny random models of the four supported families (CPU, float32, a few ms per forward)."""

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def tiny_model(family: str = "llama", seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4,
               kv_heads: int = 2, intermediate: int = 64, vocab: int = 97, tied: bool = False):
    import transformers as tr

    common = {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": intermediate,
                  "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                  "max_position_embeddings": 128, "tie_word_embeddings": tied}
    cls = {"llama": (tr.LlamaConfig, tr.LlamaForCausalLM), "mistral": (tr.MistralConfig, tr.MistralForCausalLM),
           "qwen2": (tr.Qwen2Config, tr.Qwen2ForCausalLM), "qwen3": (tr.Qwen3Config, tr.Qwen3ForCausalLM)}[family]
    extra = {"head_dim": hidden // heads} if family in ("qwen3", "mistral") else {}
    cfg = cls[0](**common, **extra)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = cls[1](cfg).eval()
    # Random (not initial) norms and biases so a wrong permutation of them would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def token_batches(vocab: int = 97, n: int = 2, batch: int = 2, seq: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]
