import copy
import math

import pytest
import torch
from torch import nn

from anybudget.nas.network import NB201Network
from anybudget.nas.proxies import (
    activation_patterns,
    grad_norm,
    init_model,
    linear_regions,
    naswot,
    ntk_condition_number,
    ntk_gram,
    snip,
    synflow,
)
from anybudget.nas.space import arch_from_index

ARCHS = [arch_from_index(i) for i in (1, 2, 77)] + [("nor_conv_3x3",) * 6]


def tiny(arch, seed=0, **kw):
    torch.manual_seed(seed)
    net = NB201Network(arch, **{"C": 2, "N": 1, **kw})
    return init_model(net, "kaiming_normal_fanout", seed=seed)


def reference_gram(model, x):
    """TE-NAS get_ntk_n: one forward of the batch, one backward per sample's summed logits,
    grads of every '*weight*' parameter that received one."""
    model.train()
    logit = model(x)
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        logit[i : i + 1].backward(torch.ones_like(logit[i : i + 1]), retain_graph=True)
        rows.append(torch.cat([w.grad.reshape(-1) for n, w in model.named_parameters() if "weight" in n and w.grad is not None]))
    j = torch.stack(rows)
    return j @ j.T


@pytest.mark.parametrize("arch", ARCHS)
def test_ntk_gram_matches_one_backward_per_sample(arch):
    # fp32 tolerance: 1e-4 relative to the largest kernel entry.
    for seed in range(2):
        net = tiny(arch, seed)
        x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
        ref = reference_gram(copy.deepcopy(net), x)
        for method in ("jacrev", "loop"):
            got = ntk_gram(net, x, method=method)
            assert torch.allclose(got, ref, rtol=0, atol=1e-4 * ref.abs().max()), method


def test_train_mode_ntk_keeps_the_batch_coupling_of_bn():
    # Scoring each sample alone (its own BN statistics) gives a different kernel: the proxy must
    # reproduce the shared-forward semantics, not per-sample independence.
    net = tiny(ARCHS[-1], 3)
    x = torch.randn(5, 3, 32, 32)
    shared = ntk_gram(net, x)
    alone = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        net(torch.cat([xi[None], xi[None]]))[0].sum(), [p for n, p in net.named_parameters() if "weight" in n],
        allow_unused=True, materialize_grads=True)]) for xi in x])
    assert not torch.allclose(shared, alone @ alone.T, rtol=1e-2)
    assert torch.allclose(ntk_gram(net, x, train_mode=False), reference_gram_eval(net, x), rtol=1e-4, atol=1e-6)


def reference_gram_eval(net, x):
    net = copy.deepcopy(net).eval()
    rows = []
    for xi in x:
        out = net(xi[None]).sum()
        gs = torch.autograd.grad(out, [p for n, p in net.named_parameters() if "weight" in n], allow_unused=True, materialize_grads=True)
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    j = torch.stack(rows)
    return j @ j.T


def test_condition_number_is_the_eigenvalue_ratio_and_leaves_the_model_alone():
    net = tiny(ARCHS[0], 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    x = torch.randn(8, 3, 32, 32)
    kappa = ntk_condition_number(net, x)
    ev = torch.linalg.eigvalsh(ntk_gram(net, x).double())
    assert math.isclose(kappa, float(ev[-1] / ev[0]), rel_tol=1e-9)
    assert not net.training  # mode restored
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats untouched
    dup = torch.cat([x[:3], x[:3]])
    assert ntk_condition_number(net, dup, train_mode=False) > 1e5  # identical rows: singular kernel


def test_linear_regions_count_distinct_patterns_exactly():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.tensor([3.0, -1.0, 0.0, 2.0, -5.0]).view(5, 1, 1, 1)  # patterns 10, 01, 00, 10, 01
    assert linear_regions(model, x, train_mode=False) == 3


@pytest.mark.parametrize("arch", ARCHS)
def test_linear_regions_match_set_of_codes_and_reference_matmul(arch):
    torch.manual_seed(0)
    thin = init_model(NB201Network(arch, C=1, N=1, depth=1, use_stem=False, in_channels=1), "kaiming_normal_fanin", seed=0)
    x = torch.randn(600, 1, 3, 3)
    codes = activation_patterns(thin, x, batch_size=200)
    want = len({tuple(r.tolist()) for r in codes})
    assert linear_regions(thin, x, batch_size=200) == want
    # The reference's calc_LR (exact while codes are short): sum_i 1 / #(rows equal to row i).
    a = codes.float()
    res = a @ (1 - a).T
    res = res + res.T
    assert round(float((1.0 / (1 - torch.sign(res)).sum(1)).sum())) == want


def test_naswot_is_logdet_of_hamming_kernel():
    net = tiny(ARCHS[-1], 0)
    x = torch.randn(10, 3, 32, 32)
    codes = []
    hooks = [m.register_forward_hook(lambda m, i, o: codes.append((i[0] > 0).flatten(1).double()))
             for m in net.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        net.train()(x)
    for h in hooks:
        h.remove()
    c = torch.cat(codes, 1)
    k = c @ c.T + (1 - c) @ (1 - c).T
    assert math.isclose(naswot(net, x), float(torch.linalg.slogdet(k)[1]), rel_tol=1e-9)


def test_synflow_uses_abs_weights_no_bn_float64_and_copies_the_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    before = copy.deepcopy(net.state_dict())
    got = synflow(net, (3, 8, 8))
    w1 = net[0].weight.detach().double().abs().requires_grad_()
    w2 = net[5].weight.detach().double().abs().requires_grad_()
    b2 = net[5].bias.detach().double().abs()
    h = torch.relu(nn.functional.conv2d(torch.ones(1, 3, 8, 8, dtype=torch.float64), w1, padding=1))
    r = (h.mean((2, 3)) @ w2.T + b2).sum()
    g1, g2 = torch.autograd.grad(r, [w1, w2])
    assert math.isclose(got, float((w1 * g1).sum().detach() + (w2 * g2).sum().detach()), rel_tol=1e-9)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_snip_and_grad_norm_match_manual_gradients():
    net = tiny(ARCHS[1], 0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    net.train()
    grads = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), [m.weight for m in layers])
    want_snip = sum(float((m.weight.detach() * g).abs().sum()) for m, g in zip(layers, grads))
    want_gn = sum(float(g.norm()) for g in grads)
    assert math.isclose(snip(net, x, y), want_snip, rel_tol=1e-5)
    assert math.isclose(grad_norm(net, x, y), want_gn, rel_tol=1e-5)


def test_init_model_kaiming_fan_modes_and_errors():
    conv = nn.Conv2d(64, 256, 3)
    init_model(nn.Sequential(conv), "kaiming_normal_fanout", seed=0)
    assert abs(conv.weight.std().item() / math.sqrt(2 / (256 * 9)) - 1) < 0.05
    init_model(nn.Sequential(conv), "kaiming_normal_fanin", seed=0)
    assert abs(conv.weight.std().item() / math.sqrt(2 / (64 * 9)) - 1) < 0.05
    with pytest.raises(ValueError, match="init='xavier' is not known"):
        init_model(conv, "xavier")
    with pytest.raises(ValueError, match=r"inputs must be a tensor \(batch >= 2"):
        ntk_condition_number(conv, torch.randn(1, 64, 5, 5))
    with pytest.raises(ValueError, match="no parameter name of the model contains param_filter='nothing'"):
        ntk_gram(nn.Sequential(conv), torch.randn(2, 64, 5, 5), param_filter="nothing")
    with pytest.raises(ValueError, match="method='svd' must be 'jacrev', 'loop' or 'auto'"):
        ntk_gram(nn.Sequential(conv), torch.randn(2, 64, 5, 5), method="svd")
