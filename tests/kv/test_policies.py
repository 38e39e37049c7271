import pytest
import torch

from anybudget.kv import (
    full_keep_indices, h2o_keep_indices, local_keep_indices, random_keep_indices, split_budget,
    streaming_keep_indices,
)


def test_h2o_keeps_heavy_hitters_and_recent_window():
    scores = torch.tensor([[5.0, 0.1, 3.0, 0.2, 4.0, 0.3, 0.0, 0.0]])
    # recent = last 2 (6, 7); heavy = top-3 of positions 0..5 by score: 0 (5.0), 4 (4.0), 2 (3.0)
    assert h2o_keep_indices(scores, 3, 2).tolist() == [[0, 2, 4, 6, 7]]
    assert h2o_keep_indices(scores, 0, 3).tolist() == [[5, 6, 7]]
    assert h2o_keep_indices(scores, 2, 0).tolist() == [[0, 4]]


def test_h2o_ties_go_to_earlier_positions_and_neg_inf_never_preferred():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 9.0, 9.0]])
    assert h2o_keep_indices(scores, 2, 2).tolist() == [[0, 1, 4, 5]]
    s = torch.tensor([[float("-inf"), 0.0, float("-inf"), 0.5, 0.0, 0.0]])
    assert h2o_keep_indices(s, 2, 2).tolist() == [[1, 3, 4, 5]]


def test_h2o_batched_per_head_and_fits_means_full():
    torch.manual_seed(0)
    scores = torch.rand(2, 3, 10)
    keep = h2o_keep_indices(scores, 3, 2)
    assert keep.shape == (2, 3, 5)
    for b in range(2):
        for h in range(3):
            expect = sorted(torch.topk(scores[b, h, :8], 3).indices.tolist()) + [8, 9]
            assert keep[b, h].tolist() == expect
    assert h2o_keep_indices(scores, 6, 4).tolist() == full_keep_indices(10, (2, 3)).tolist()


def test_streaming_local_random_full():
    assert streaming_keep_indices(10, 2, 3).tolist() == [0, 1, 7, 8, 9]
    assert streaming_keep_indices(4, 2, 3).tolist() == [0, 1, 2, 3]
    assert local_keep_indices(10, 3).tolist() == [7, 8, 9]
    g = torch.Generator().manual_seed(1)
    r = random_keep_indices(20, 4, 3, generator=g)
    assert r[-3:].tolist() == [17, 18, 19] and len(set(r[:4].tolist())) == 4 and r[:4].max() < 17
    g2 = torch.Generator().manual_seed(1)
    assert torch.equal(r, random_keep_indices(20, 4, 3, generator=g2))
    assert full_keep_indices(4).tolist() == [0, 1, 2, 3]


def test_split_budget_and_bad_input():
    assert split_budget(205, 0.5) == (103, 102)
    assert split_budget(10, 0.0) == (10, 0) and split_budget(10, 1.0) == (0, 10)
    with pytest.raises(ValueError, match=r"recent_ratio=1.5 is out of range; it must be in \[0, 1\]"):
        split_budget(10, 1.5)
    with pytest.raises(ValueError, match="heavy_budget=-1 must be an integer >= 0"):
        h2o_keep_indices(torch.rand(5), -1, 2)
    with pytest.raises(ValueError, match="recent_budget=2.5"):
        streaming_keep_indices(10, 2, 2.5)
