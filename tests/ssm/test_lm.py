import pytest
import torch

from anybudget.ssm import AttentionLM, LMConfig, MambaConfig, MambaLM, build_lm


@pytest.mark.parametrize("mixer", ["mamba", "attention"])
def test_causal_future_tokens_do_not_change_past_logits(mixer):
    torch.manual_seed(0)
    lm = build_lm(LMConfig(vocab_size=40, d_model=16, n_layers=2, mixer=mixer, max_seq_len=32)).eval()
    ids = torch.randint(40, (2, 12))
    ids2 = ids.clone()
    ids2[:, 8:] = (ids2[:, 8:] + 1) % 40
    a, b = lm(ids), lm(ids2)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_same_width_and_tied_head():
    cfg = LMConfig(vocab_size=40, d_model=16, n_layers=2)
    m, a = MambaLM(cfg), AttentionLM(LMConfig(vocab_size=40, d_model=16, n_layers=2, mixer="attention"))
    assert m.lm_head.weight is m.embedding.weight and a.lm_head.weight is a.embedding.weight
    assert m.embedding.embedding_dim == a.embedding.embedding_dim == 16
    assert cfg.mamba.d_model == 16  # mixer width follows the LM width


def test_out_proj_rescaled_by_depth():
    torch.manual_seed(0)
    w2 = MambaLM(LMConfig(vocab_size=40, d_model=64, n_layers=1)).layers[0].mixer.out_proj.weight.std()
    w8 = MambaLM(LMConfig(vocab_size=40, d_model=64, n_layers=16)).layers[0].mixer.out_proj.weight.std()
    assert 3.0 < float((w2 / w8).detach()) < 5.0  # 1/sqrt(16) = 1/4


def test_training_step_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    lm = MambaLM(LMConfig(vocab_size=30, d_model=16, n_layers=1, mamba=MambaConfig(d_model=16, polarize="both")))
    ids = torch.randint(30, (4, 16))
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(lm(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="mixer='rnn'"):
        LMConfig(mixer="rnn")
    with pytest.raises(ValueError, match="n_layers=0"):
        LMConfig(n_layers=0)
    with pytest.raises(ValueError, match="divisible by n_heads=3"):
        LMConfig(d_model=16, n_heads=3, mixer="attention")
    lm = AttentionLM(LMConfig(vocab_size=40, d_model=8, n_layers=1, mixer="attention", max_seq_len=8))
    with pytest.raises(ValueError, match="exceeds max_seq_len=8"):
        lm(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"integer tensor \(batch, seq\)"):
        MambaLM(LMConfig(vocab_size=40, d_model=8, n_layers=1))(torch.zeros(9, dtype=torch.long))
