import pytest
import torch

from anybudget.nas.darts import (
    DARTS_EDGES,
    DARTS_OPS,
    EDGE_GROUPS,
    DartsGenotype,
    DartsSearchConfig,
    DartsSuperNet,
    darts_tenas_search,
)


def test_supernet_shapes_and_pruned_edges():
    full = torch.ones(2, 14, 8, dtype=torch.bool)
    net = DartsSuperNet(full, C=4, N=2, depth=-1)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    thin = DartsSuperNet(full, C=1, depth=2, use_stem=False)
    assert thin(torch.randn(3, 1, 3, 3)).shape == (3, 10)
    assert len(DARTS_EDGES) == 14 and [hi - lo for lo, hi in EDGE_GROUPS] == [2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"expected \(2, 14, 8\)"):
        DartsSuperNet(torch.ones(14, 8, dtype=torch.bool))


def test_genotype_from_masks_and_format():
    m = torch.zeros(2, 14, 8, dtype=torch.bool)
    for ct in range(2):
        for e, (i, j) in enumerate(DARTS_EDGES):
            if j in (0, 1):
                m[ct, e, DARTS_OPS.index("sep_conv_3x3" if ct == 0 else "max_pool_3x3")] = True
    g = DartsGenotype.from_masks(m)
    assert len(g.normal) == 8 and g.normal[0] == ("sep_conv_3x3", 0) and g.reduce[1] == ("max_pool_3x3", 1)
    assert str(g).startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1),")
    assert str(g).endswith("reduce_concat=[2, 3, 4, 5])")
    m[0, 0, 1] = True
    with pytest.raises(ValueError, match="edge 0<-0 keeps 2 ops"):
        DartsGenotype.from_masks(m)


def test_toy_darts_search_gives_two_inputs_per_node():
    cfg = DartsSearchConfig(batch_size=4, repeat=1, region_samples=100, region_batch=100, image_pool=12,
                            ops=("skip_connect", "avg_pool_3x3"))
    geno, _res = darts_tenas_search(cfg, seed=0, device="cpu", quiet=True)
    for gene in (geno.normal, geno.reduce):
        assert len(gene) == 8
        assert all(op in ("skip_connect", "avg_pool_3x3") for op, _ in gene)
        inputs = [j for _, j in gene]
        for node in range(4):  # two distinct predecessors per node, each earlier than the node
            pair = inputs[2 * node : 2 * node + 2]
            assert len(set(pair)) == 2 and max(pair) < node + 2
    with pytest.raises(ValueError, match="ops=.*must be one of"):
        DartsSearchConfig(ops=("conv_9x9",))
