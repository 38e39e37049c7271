import pytest
import torch

from anybudget.prune.magnitude import (
    full_mask,
    geometric_sparsity,
    linear_sparsity,
    magnitude_prune,
    schedule,
)
from anybudget.prune.masks import mask_sparsity


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(10, 7, generator=g), "b": torch.randn(13, generator=g) * 3,
            "c": torch.randn(4, 4, generator=g) * 0.1}


def test_linear_schedule_is_10_percent_of_the_original_each_round():
    assert schedule("linear", 9) == pytest.approx([0.1 * i for i in range(1, 10)])
    assert linear_sparsity(3) == pytest.approx(0.3)
    w = _weights()
    mask = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
    n = sum(v.numel() for v in w.values())
    pruned_per_round = []
    prev = 0
    for s in schedule("linear", 9):
        mask = magnitude_prune(w, mask, s)
        pruned = sum(int((~m).sum()) for m in mask.values())
        assert pruned == round(s * n)  # exact count
        pruned_per_round.append(pruned - prev)
        prev = pruned
    assert max(pruned_per_round) - min(pruned_per_round) <= 1  # ~n/10 each round


def test_geometric_schedule_prunes_a_fraction_of_what_remains():
    s = schedule("geometric", 3, 0.2)
    assert s == pytest.approx([0.2, 0.36, 0.488])
    assert geometric_sparsity(2, 0.5) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="schedule='cubic' is unknown"):
        schedule("cubic", 3)
    with pytest.raises(ValueError, match="out of range"):
        schedule("linear", 10)  # 100% sparsity


def test_global_prunes_the_smallest_magnitudes_across_tensors():
    w = _weights()
    mask = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
    new = magnitude_prune(w, mask, 0.25)
    allw = torch.cat([v.abs().flatten() for v in w.values()])
    allm = torch.cat([m.flatten() for m in new.values()])
    assert allw[~allm].max() <= allw[allm].min()
    assert int((~allm).sum()) == round(0.25 * allw.numel())
    # small-scale tensor c is pruned hardest under the global threshold
    assert mask_sparsity({"c": new["c"]}) > mask_sparsity({"b": new["b"]})


def test_layerwise_prunes_each_tensor_to_the_target_and_never_regrows():
    w = _weights()
    mask = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
    m1 = magnitude_prune(w, mask, 0.5, scope="layerwise")
    for k, m in m1.items():
        assert int((~m).sum()) == round(0.5 * m.numel())
    # new weights where pruned entries became large: they stay pruned
    w2 = {k: torch.where(m, v, torch.full_like(v, 100.0)) for (k, v), m in zip(w.items(), m1.values())}
    m2 = magnitude_prune(w2, m1, 0.6, scope="layerwise")
    for k in m1:
        assert not torch.any(m2[k] & ~m1[k])
    with pytest.raises(ValueError, match="below the mask's current sparsity"):
        magnitude_prune(w, m2, 0.3, scope="layerwise")
    with pytest.raises(ValueError, match="scope='blockwise' is unknown"):
        magnitude_prune(w, mask, 0.3, scope="blockwise")


def test_full_mask_covers_the_prunable_set(make_model):
    m = make_model()
    mask = full_mask(m)
    assert mask_sparsity(mask) == 0.0 and len(mask) == 13
    with pytest.raises(ValueError, match="patterns=.* match no parameter"):
        full_mask(m, patterns=(r"^nothing$",))
