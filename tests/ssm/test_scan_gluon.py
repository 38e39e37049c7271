"""The Gluon grads kernel's CPU-side contract: its tile constraints and the CUDA-only switch (``ScanBlocks.bwd_gluon``).

Gluon kernels have no CPU interpreter: their results are checked against the reference on CUDA
(``test_triton.py::test_gluon_grads_gpu_*``) and their sm_90 build on the CPU (``test_ssm_benchmarks.py``'s scan_regs).
"""

import pytest
import torch

pytest.importorskip("triton.experimental.gluon")


@pytest.mark.parametrize("tiles", [(8, 16, 16, 4), (4, 16, 16, 2), (16, 8, 16, 4), (4, 32, 16, 4), (16, 16, 8, 8)])
def test_check_tiles_accepts_a_warp_of_state_lanes(tiles):
    from anybudget.ssm.scan_gluon_bwd import check_tiles

    check_tiles(*tiles)


@pytest.mark.parametrize("tiles, match", [((8, 64, 16, 4), "BLOCK_N=64"), ((8, 12, 16, 4), "BLOCK_N=12"),
                                          ((8, 16, 64, 4), "BLOCK_T=64"), ((4, 16, 16, 4), "BLOCK_D=4"),
                                          ((16, 16, 16, 4), "= 8")])
def test_check_tiles_rejects_tiles_the_layouts_cannot_hold(tiles, match):
    from anybudget.ssm.scan_gluon_bwd import check_tiles

    with pytest.raises(ValueError, match=match):
        check_tiles(*tiles)


def _saved(d=8, seq=20, n=16):
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(1, d, seq, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g) - 0.1
    B, C = (torch.randn(1, n, seq, generator=g) for _ in range(2))
    return (u, delta, A, B, C, None, z, None)


def test_bwd_gluon_needs_cuda_tensors(monkeypatch):
    from anybudget.ssm import scan_triton
    from anybudget.ssm.scan_triton import ScanBlocks

    monkeypatch.setattr(ScanBlocks, "bwd_gluon", True)
    monkeypatch.setattr(ScanBlocks, "bwd_chunked", (8, 16, 4))
    saved = _saved()
    with pytest.raises(ValueError, match="bwd_gluon=True needs CUDA tensors"):
        scan_triton._chunked(16, None, True, saved, torch.ones_like(saved[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bwd_gluon_rejects_tiles_before_any_launch(monkeypatch):
    from anybudget.ssm import scan_triton
    from anybudget.ssm.scan_triton import ScanBlocks

    monkeypatch.setattr(ScanBlocks, "bwd_gluon", True)
    monkeypatch.setattr(ScanBlocks, "bwd_chunked", (4, 16, 4))  # 16 states: BLOCK_D must be 8 at 4 warps
    saved = tuple(t.cuda() if t is not None else None for t in _saved())
    with pytest.raises(ValueError, match="BLOCK_D=4"):
        scan_triton._chunked(16, None, True, saved, torch.ones_like(saved[0]))
