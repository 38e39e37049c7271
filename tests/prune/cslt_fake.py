"""A CPU stand-in for torch's cuSPARSELt 2:4 product that keeps the kernel's operand contract, so
the export path (torch.sparse's dispatch: linear -> addmm/mm -> _cslt_sparse_mm) runs on the CPU.

The contract (aten/src/ATen/native/sparse/cuda/cuSPARSELtOps.cpp, ``_cslt_sparse_mm_impl``): the
dense operand B (k, n) is described from ``B.is_contiguous()`` only: contiguous -> row-major with
leading dimension n; otherwise -> the transpose of a row-major (n, k) with leading dimension k. The
stand-in reads B's memory the same way, so a strided input is misread here as it is on the GPU."""

from __future__ import annotations

import torch


def fake_cslt_sparse_mm(packed, dense_b, bias=None, alpha=None, out_dtype=None, transpose_result=False,
                        alg_id=0, **_):
    k, n = dense_b.shape
    b = dense_b if dense_b.is_contiguous() else torch.as_strided(dense_b, (k, n), (1, k))
    res = packed @ b  # packed: here the dense 2:4-masked weight itself (m, k)
    if bias is not None:
        res = res + bias[:, None]
    return res.t().contiguous() if transpose_result else res


def fake_to_sparse(weight: torch.Tensor) -> torch.Tensor:
    """torch's cuSPARSELt semi-structured tensor around the (CPU) masked weight itself."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT as Cls

    return Cls(weight.shape, packed=weight.detach().clone(), meta=None, packed_t=None, meta_t=None,
               compressed_swizzled_bitmask=None, fuse_transpose_cusparselt=False, alg_id_cusparselt=0,
               requires_grad=False)
