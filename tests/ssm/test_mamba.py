import pytest
import torch

from anybudget.ssm import LMConfig, Mamba, MambaConfig, MambaLM

POLARIZE = [None, "one", "zero", "both"]


@pytest.mark.parametrize("form", ["exact", "reference"])
@pytest.mark.parametrize("polarize", POLARIZE)
def test_step_equals_forward(polarize, form):
    torch.manual_seed(0)
    m = Mamba(MambaConfig(d_model=16, d_state=4, polarize=polarize, polar_form=form))
    x = torch.randn(2, 9, 16)
    y, st = m(x, return_state=True)
    s = m.init_state(2)
    ys = []
    for t in range(9):
        o, s = m.step(x[:, t], s)
        ys.append(o)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.ssm, st.ssm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.conv, st.conv, rtol=1e-5, atol=1e-6)


def test_step_continues_after_prefill_with_short_prompt():
    torch.manual_seed(1)
    m = Mamba(MambaConfig(d_model=8, d_state=3, polarize="both", d_conv=4))
    x = torch.randn(1, 6, 8)
    full = m(x)
    _, st = m(x[:, :2], return_state=True)  # shorter than d_conv: conv cache is left-padded
    outs = []
    for t in range(2, 6):
        o, st = m.step(x[:, t], st)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1), full[:, 2:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("polarize", POLARIZE)
def test_chunked_backend_equals_reference_with_grads(polarize):
    torch.manual_seed(2)
    cfg = MambaConfig(d_model=8, d_state=4, polarize=polarize, scan_backend="ref")
    ref = Mamba(cfg).double()
    fast = Mamba(MambaConfig(d_model=8, d_state=4, polarize=polarize, scan_backend="chunked")).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    y1, y2 = ref(x), fast(x)
    torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-10)
    g1 = torch.autograd.grad(y1.square().sum(), list(ref.parameters()))
    g2 = torch.autograd.grad(y2.square().sum(), list(fast.parameters()))
    for (name, _), a, b in zip(ref.named_parameters(), g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9, msg=name)


def test_polarized_channels_layout_fixed_and_not_trainable():
    m = Mamba(MambaConfig(d_model=8, d_state=4, polarize="both", d_ones=2, d_zeros=1))
    assert m.config.d_state_total == 7
    assert m.x_proj.out_features == m.config.rank + 2 * 7
    assert m.A_log.shape == (16, 4)  # only the learned channels are parameters
    A = m.A()
    assert A.shape == (16, 7)
    assert torch.equal(A[:, :2], torch.zeros(16, 2))
    assert torch.isneginf(A[:, -1]).all()
    torch.testing.assert_close(A[:, 2:6], -torch.arange(1.0, 5.0).repeat(16, 1))
    ref = Mamba(MambaConfig(d_model=8, d_state=4, polarize="both", polar_form="reference")).A()
    assert torch.equal(ref[:, 0], torch.zeros(16)) and torch.equal(ref[:, -1], torch.full((16,), -100.0))
    # A gradient step leaves the fixed channels where they are.
    m(torch.randn(1, 5, 8)).sum().backward()
    assert m.A_log.grad is not None and torch.equal(m.A()[:, :2], torch.zeros(16, 2))


def test_one_only_and_zero_only_sizes():
    assert MambaConfig(d_model=8, polarize="one").d_state_total == 17
    assert MambaConfig(d_model=8, polarize="zero").d_state_total == 17
    assert MambaConfig(d_model=8, polarize=None, d_ones=3).d_state_total == 16


def test_dt_init_range():
    m = Mamba(MambaConfig(d_model=64))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"d_state": 0}, "d_state=0 must be an integer >= 1"),
        ({"polarize": "two"}, "polarize='two'"),
        ({"polar_form": "approx"}, "polar_form='approx'"),
        ({"d_ones": -1}, "d_ones=-1"),
        ({"value_zeros": 5.0}, "must be <= 0"),
        ({"scan_backend": "cuda"}, "scan_backend='cuda'"),
        ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min=0.5"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MambaConfig(d_model=8, **kwargs)


def test_bad_hidden_shape_raises():
    m = Mamba(MambaConfig(d_model=8))
    with pytest.raises(ValueError, match=r"must be \(batch, seq, d_model=8\)"):
        m(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"must be \(batch, d_model=8\)"):
        m.step(torch.randn(2, 5, 8), m.init_state(2))


def test_lm_step_equals_forward():
    torch.manual_seed(3)
    cfg = LMConfig(vocab_size=50, d_model=16, n_layers=2, mamba=MambaConfig(d_model=16, d_state=4, polarize="both"))
    lm = MambaLM(cfg).eval()
    ids = torch.randint(50, (2, 7))
    full = lm(ids)
    st = lm.init_states(2)
    steps = []
    for t in range(7):
        lo, st = lm.step(ids[:, t], st)
        steps.append(lo)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)
    _, states = lm(ids, return_states=True)
    for a, b in zip(states, st):
        torch.testing.assert_close(a.ssm, b.ssm, rtol=1e-5, atol=1e-6)


def test_polarize_none_string_means_vanilla():
    cfg = MambaConfig(d_model=8, d_state=3, polarize="none")
    assert cfg.polarize is None and cfg == MambaConfig(d_model=8, d_state=3, polarize=None)
    with pytest.raises(ValueError, match="polarize='two'.*'none'"):
        MambaConfig(d_model=8, polarize="two")
