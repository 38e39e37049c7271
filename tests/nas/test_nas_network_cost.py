import random

import pytest
import torch

from anybudget.nas.cost import arch_cost, count_flops, count_params, edge_costs
from anybudget.nas.network import NB201Network, arch_mask, mask_to_arch
from anybudget.nas.space import OPS, all_archs, arch_from_index, format_arch


def test_known_sizes_of_the_cifar10_network():
    # NAS-Bench-201 reports 1.53 MB params / 220.11 MFLOPs for the all-3x3 cell and
    # 0.073 MB / 7.78 MFLOPs for the cells without convolutions.
    full = arch_cost(("nor_conv_3x3",) * 6)
    assert full.params == 1_531_546
    assert round(full.flops / 1e6, 2) == 220.12
    empty = arch_cost(("skip_connect",) * 6)
    assert empty.params == 73_306
    assert round(empty.flops / 1e6, 2) == 7.78


@pytest.mark.parametrize("geometry", [{}, {"num_classes": 100}, {"resolution": 16, "num_classes": 120}, {"C": 8, "N": 2}])
def test_closed_form_matches_hook_counter(geometry):
    rng = random.Random(0)
    res = geometry.get("resolution", 32)
    for _ in range(6):
        arch = rng.choice(all_archs())
        kw = {k: v for k, v in geometry.items() if k != "resolution"}
        net = NB201Network(arch, **kw)
        c = arch_cost(arch, **geometry)
        assert c.params == count_params(net)
        assert c.flops == count_flops(net, (2, 3, res, res))


def test_costs_are_additive_over_edges():
    base, per = edge_costs()
    for i in (0, 17, 4000, 15624):
        arch = arch_from_index(i)
        c = arch_cost(arch)
        assert c.flops == base.flops + sum(per[o].flops for o in arch)
        assert c.params == base.params + sum(per[o].params for o in arch)


def test_single_op_mask_is_the_architecture_network():
    arch = arch_from_index(1)
    torch.manual_seed(0)
    a = NB201Network(arch, C=4, N=1)
    torch.manual_seed(0)
    b = NB201Network(arch_mask(format_arch(arch)), C=4, N=1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    assert mask_to_arch(b.mask) == arch
    assert a.is_single_path


def test_supernet_edge_is_the_mean_of_kept_ops():
    # One cell, no stem: node 3 = mean of the kept ops on each of its edges, summed.
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[:, OPS.index("skip_connect")] = True
    mask[:, OPS.index("avg_pool_3x3")] = True
    net = NB201Network(mask, C=2, N=1, depth=1, use_stem=False, in_channels=2)
    x = torch.randn(2, 2, 8, 8)
    pool = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    f = lambda t: (t + pool(t)) / 2
    n1 = f(x)
    n2 = f(x) + f(n1)
    n3 = f(x) + f(n1) + f(n2)
    assert torch.allclose(net.cells[0](x), n3, atol=1e-6)
    assert not net.is_single_path


def test_bad_masks_and_geometry_raise():
    with pytest.raises(ValueError, match=r"mask has shape \(6, 4\)"):
        NB201Network(torch.ones(6, 4, dtype=torch.bool))
    empty = torch.ones(6, 5, dtype=torch.bool)
    empty[2] = False
    with pytest.raises(ValueError, match=r"no op on edge\(s\) \['2<-1'\]"):
        NB201Network(empty)
    with pytest.raises(ValueError, match="not a single path"):
        mask_to_arch(torch.ones(6, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="C=0 must be an integer >= 1"):
        NB201Network(("none",) * 6, C=0)
    with pytest.raises(ValueError, match="resolution=30 must be a multiple of 4"):
        arch_cost(("none",) * 6, resolution=30)
    with pytest.raises(ValueError, match="unknown op 'conv'"):
        NB201Network("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|")
