"""evaluate_policies' progress bar reaches exactly its total: tokens of every sequence, every policy."""

import torch

from anybudget.kv.evaluate import streaming_nll


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


def test_streaming_nll_counts_every_sequence_of_the_batch():
    from transformers import LlamaConfig, LlamaForCausalLM

    from anybudget.kv import H2OCache, enable

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    enable(model)
    x = torch.randint(0, 64, (3, 9))
    bar = _Bar()
    with torch.no_grad():
        nll = streaming_nll(model, x, H2OCache("50%"), chunk=4, progress=bar)
    assert bar.n == nll.numel() == 3 * 8
