"""The Gluon grads kernel's CPU-side contract: its tile constraints and the CUDA-only switch (``ScanBlocks.bwd_gluon``).

Gluon kernels have no CPU interpreter: their results are checked against the reference on CUDA
(``test_triton.py::test_gluon_grads_gpu_*``) and their sm_90 build on the CPU (``test_ssm_benchmarks.py``'s scan_regs).
"""

import pytest
import torch
from ssm_helpers import scan_inputs

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


def _saved():
    """(u, delta, A, B, C, D, z, delta_bias) as the backward gets them: 16 states, D and the bias absent."""
    u, delta, A, B, C, _, z, _ = (t.detach() for t in scan_inputs(1, 8, 20, 16, dtype=torch.float32, polar=False))
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
