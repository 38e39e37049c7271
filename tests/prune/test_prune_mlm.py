import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from anybudget.prune.mlm import MLMStream, add_mlm_head, mask_tokens, mlm_accuracy


def test_mask_tokens_is_80_10_10_and_never_touches_specials():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 512), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    inputs, labels = mask_tokens(ids, special, mask_id=4, vocab_size=1000, generator=g)
    chosen = labels != -100
    assert not chosen[special].any() and torch.equal(labels[chosen], ids[chosen])
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    frac_mask = (inputs[chosen] == 4).float().mean().item()
    frac_same = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_same - 0.1) < 0.02  # (+ ~0.1% random hits)
    assert torch.equal(inputs[~chosen], ids[~chosen])
    with pytest.raises(ValueError, match="prob=1.5"):
        mask_tokens(ids, special, 4, 1000, g, prob=1.5)


def test_stream_windows_and_fixed_eval_batches_are_deterministic():
    s = MLMStream(np.arange(5, 505, dtype=np.uint16) % 60 + 5, 16, 2, 3, 4, 64)
    b = s(np.random.default_rng(0), 8)
    assert b["input_ids"].shape == (8, 16) and (b["input_ids"][:, 0] == 2).all() and (b["input_ids"][:, -1] == 3).all()
    e1, e2 = list(s.fixed_batches(20, 8)), list(s.fixed_batches(20, 8))
    assert len(e1) == 3 and all(torch.equal(a["input_ids"], c["input_ids"]) for a, c in zip(e1, e2))


def test_add_mlm_head_ties_decoder_and_freezes_the_encoder():
    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32))
    mlm = add_mlm_head(enc)
    assert mlm.cls.predictions.decoder.weight.data_ptr() == mlm.bert.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(mlm.bert.encoder.layer[0].attention.self.query.weight, enc.encoder.layer[0].attention.self.query.weight)
    trainable = {n for n, p in mlm.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("cls.") for n in trainable)
    s = MLMStream(np.arange(5, 505, dtype=np.uint16) % 59 + 5, 16, 2, 3, 4, 64)
    acc = mlm_accuracy(mlm, s, n_windows=8, batch_size=4)
    assert 0.0 <= acc["mlm_accuracy"] <= 1.0 and acc["mlm_loss"] > 0
