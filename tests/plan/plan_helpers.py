"""A tiny elastic folder as `anybudget elastic build` writes it (model/ + elastic.json), built in seconds:
a random small Llama with the reference LM's tokenizer, permuted by importance, no elastic training."""

from __future__ import annotations

from pathlib import Path

import torch

REFLM = Path(__file__).resolve().parents[2] / "src" / "anybudget" / "assets" / "reflm"
POL, PCT = ("h2o", "local"), (50.0, 20.0)  # the fit tests' KV policies and percentages


def small_workload():
    """The fit tests' workload: 2 sequences of 32 prompt + 4 new tokens, float32."""
    from anybudget.plan import ServingWorkload

    return ServingWorkload(prompt=32, new_tokens=4, batch=2, dtype="float32")


def tiny_llama(vocab: int = 16384, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def tiny_elastic(vocab: int = 16384):
    from anybudget.elastic import make_elastic

    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, vocab, (2, 32), generator=g) for _ in range(2)]
    return make_elastic(tiny_llama(vocab), calib)
