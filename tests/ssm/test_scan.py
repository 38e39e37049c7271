import pytest
import torch
from ssm_helpers import scan_inputs

from anybudget.ssm.scan import (
    discretize,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def _grads(fn, ins, **kw):
    out, last = fn(*ins, delta_softplus=True, return_last_state=True, **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    return out, last, torch.autograd.grad((out * g).sum(), ins)


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
@pytest.mark.parametrize("polar", [False, True])
def test_chunked_equals_reference_fp64(chunk, polar):
    ins = scan_inputs(polar=polar, seed=chunk)
    o1, h1, g1 = _grads(selective_scan_ref, ins)
    o2, h2, g2 = _grads(selective_scan_chunked, ins, chunk_size=chunk)
    torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h2, h1, rtol=1e-10, atol=1e-10)
    for name, a, b in zip(NAMES, g1, g2):
        assert torch.isfinite(b).all(), name
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9, msg=name)


def test_chunked_equals_reference_fp32_and_bf16():
    ins = [t.detach().float() for t in scan_inputs(b=2, d=8, seq=100, n=18)]
    o1 = selective_scan_ref(*ins, delta_softplus=True)
    o2 = selective_scan_chunked(*ins, delta_softplus=True, chunk_size=16)
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-5)
    bf = [ins[0].bfloat16(), ins[1].bfloat16()] + ins[2:]
    o3 = selective_scan_chunked(*bf, delta_softplus=True)
    assert o3.dtype == torch.bfloat16
    torch.testing.assert_close(o3.float(), selective_scan_ref(*bf, delta_softplus=True).float(), rtol=1e-2, atol=1e-2)


def test_optional_arguments_absent():
    u, delta, A, B, C, *_ = [t.detach() for t in scan_inputs(polar=False)]
    o1 = selective_scan_ref(u, delta.abs(), A, B, C)
    o2 = selective_scan_chunked(u, delta.abs(), A, B, C, chunk_size=5)
    torch.testing.assert_close(o2, o1)


def test_polarized_one_channel_is_running_sum_and_zero_channel_is_current_token():
    u, delta, A, B, C, D, z, bias = [t.detach() for t in scan_inputs(seq=17)]
    dt = torch.nn.functional.softplus(delta + bias[None, :, None])
    for fn in (selective_scan_ref, selective_scan_chunked, selective_scan):
        for t_end in (1, 9, 17):
            sl = slice(0, t_end)
            _, h = fn(u[..., sl], delta[..., sl], A, B[..., sl], C[..., sl], D, z[..., sl], bias,
                      delta_softplus=True, return_last_state=True)
            running = (dt[..., sl] * u[..., sl] * B[:, None, 0, sl]).sum(-1)
            current = dt[..., t_end - 1] * u[..., t_end - 1] * B[:, None, -1, t_end - 1]
            torch.testing.assert_close(h[..., 0], running, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(h[..., -1], current, rtol=1e-12, atol=1e-12)
            # Rewriting every earlier token must leave the zero channel's state bit-identical.
            u2, d2, B2 = u.clone(), delta.clone(), B.clone()
            u2[..., : t_end - 1] += 3.0
            d2[..., : t_end - 1] -= 1.0
            B2[..., : t_end - 1] *= -2.0
            _, h2 = fn(u2[..., sl], d2[..., sl], A, B2[..., sl], C[..., sl], D, z[..., sl], bias,
                       delta_softplus=True, return_last_state=True)
            assert torch.equal(h2[..., -1], h[..., -1]), "A-bar = 0 must forget the past exactly"
            if t_end > 1:
                assert not torch.equal(h2[..., 0], h[..., 0])


def test_discretize_exact_zero_even_at_dt_zero():
    A = torch.tensor([[0.0, -1.0, float("-inf")]])
    a = discretize(torch.zeros(1, 1, 2), A)
    assert torch.equal(a[0, 0, 0], torch.tensor([1.0, 1.0, 0.0]))
    assert not torch.isnan(a).any()


def test_auto_backend_on_cpu_is_chunked_and_rejects_unknown_backend(inputs):
    ins = [t.detach() for t in inputs]
    torch.testing.assert_close(selective_scan(*ins, delta_softplus=True),
                               selective_scan_chunked(*ins, delta_softplus=True))
    with pytest.raises(ValueError, match="backend='cuda'"):
        selective_scan(*ins, backend="cuda")


@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked])
def test_bad_shapes_raise(fn, inputs):
    u, delta, A, B, C, D, z, _bias = [t.detach() for t in inputs]
    with pytest.raises(ValueError, match="delta shape"):
        fn(u, delta[..., :-1], A, B, C)
    with pytest.raises(ValueError, match=r"A must be \(d_inner=6, d_state\)"):
        fn(u, delta, A[:-1], B, C)
    with pytest.raises(ValueError, match="d_state=0 must be >= 1"):
        fn(u, delta, A[:, :0], B[:, :0], C[:, :0])
    with pytest.raises(ValueError, match="B shape"):
        fn(u, delta, A, B[:, :-1], C)
    with pytest.raises(ValueError, match="C shape"):
        fn(u, delta, A, B, C[..., :-1])
    with pytest.raises(ValueError, match="D shape"):
        fn(u, delta, A, B, C, D=D[:-1])
    with pytest.raises(ValueError, match="z shape"):
        fn(u, delta, A, B, C, z=z[:, :-1])
    with pytest.raises(ValueError, match="u must be"):
        fn(u[0], delta[0], A, B, C)
    with pytest.raises(ValueError, match="A must be <= 0"):
        fn(u, delta, -A.nan_to_num(neginf=-1.0) + 1, B, C)
    with pytest.raises(ValueError, match="chunk_size=0"):
        selective_scan_chunked(u, delta, A, B, C, chunk_size=0)


@pytest.mark.parametrize("ones, zeros", [(1, 1), (1, 0), (0, 1), (2, 1)])
@pytest.mark.parametrize("scan_fn", [selective_scan_ref, selective_scan_chunked])
def test_fixed_channels_in_closed_form_equal_the_full_scan(scan_fn, ones, zeros):
    from ssm_helpers import scan_inputs

    from anybudget.ssm.scan_split import selective_scan_split

    ins = scan_inputs(2, 5, 23, 4 + ones + zeros, polar=False, seed=ones * 3 + zeros)
    with torch.no_grad():  # the layout polarization promises: [ones | learned | zeros]
        ins[2][:, :ones] = 0.0
        ins[2][:, ins[2].shape[1] - zeros:] = float("-inf")
    o1, h1 = selective_scan_ref(*ins, delta_softplus=True, return_last_state=True)
    o2, h2 = selective_scan_split(scan_fn, *ins, delta_softplus=True, return_last_state=True,
                                  n_ones=ones, n_zeros=zeros)
    torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h2, h1, rtol=1e-10, atol=1e-10)
    leaves = [t for i, t in enumerate(ins) if i != 2]
    g1 = torch.autograd.grad(o1.sum(), leaves)
    g2 = torch.autograd.grad(o2.sum(), leaves)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="leave a learned column"):
        selective_scan_split(scan_fn, *ins, n_ones=ins[2].shape[1], n_zeros=0)
