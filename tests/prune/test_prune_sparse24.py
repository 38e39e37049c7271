import pytest
import torch

from anybudget.prune.masks import apply_mask, mask_sparsity
from anybudget.prune.sparse24 import check_24, mask_24, prune_24, to_semi_structured


def test_mask_24_keeps_the_two_largest_of_every_group_of_four():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0]])
    m = mask_24(w)
    assert m.tolist() == [[False, True, True, False, True, True, False, False]]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 16, generator=g)
    m = mask_24(w)
    assert check_24(m) and int(m.sum()) == w.numel() // 2
    grp, mg = w.abs().reshape(-1, 4), m.reshape(-1, 4)
    assert torch.all(grp[~mg].reshape(-1, 2).max(1).values <= grp[mg].reshape(-1, 2).min(1).values)
    assert not check_24(torch.ones(2, 8))
    with pytest.raises(ValueError, match="multiple of 4"):
        mask_24(torch.randn(3, 6))


def test_prune_24_model_follows_the_pattern_and_cpu_refuses_kernels(make_model):
    m = make_model()
    mask = prune_24(m)
    assert mask_sparsity(mask) == pytest.approx(0.5)
    apply_mask(m, mask)
    params = dict(m.named_parameters())
    assert all(check_24(params[n]) for n in mask)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="need CUDA"):
            to_semi_structured(m, mask)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_semi_structured_linear_matches_the_dense_masked_one():
    lin = torch.nn.Linear(256, 128).half().cuda()
    apply_mask(lin, {"weight": mask_24(lin.weight)})
    x = torch.randn(64, 256, device="cuda", dtype=torch.half)
    ref = lin(x)
    assert to_semi_structured(lin, {"weight": mask_24(lin.weight)}) == ["weight"]
    torch.testing.assert_close(lin(x), ref, rtol=1e-2, atol=1e-2)
