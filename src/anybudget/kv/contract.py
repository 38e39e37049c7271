"""The attention contract every path checks: shapes of q, k, v, the key mask and ``colsum_out``.

Shared by the PyTorch reference (``attention.py``) and the Triton kernels (``kernels_triton.py``,
``decode_triton.py``), which import nothing else from the package: the kernel files stay leaves.
"""

from __future__ import annotations

import torch

__all__ = ["check_colsum_out", "check_qkv"]


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (batch, heads, seq, head_dim); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, Hq, Lq, D = q.shape
    if k.shape[0] != B or v.shape[:3] != k.shape[:3] or k.shape[3] != D:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    if Hq % k.shape[1]:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({k.shape[1]})")
    if Lq > k.shape[2]:
        raise ValueError(f"more queries ({Lq}) than keys ({k.shape[2]}): the queries must be the newest keys")
    if key_mask is not None and key_mask.shape not in ((B, k.shape[2]), (B, k.shape[1], k.shape[2])):
        raise ValueError(f"key_mask {tuple(key_mask.shape)} must be (batch, keys) or (batch, kv_heads, keys)")


def check_colsum_out(colsum_out: torch.Tensor, B: int, Hkv: int, Lk: int, device) -> None:
    """``colsum_out`` must be a float32 (B, Hkv, Lk) tensor on ``device`` with unit last stride."""
    if (not isinstance(colsum_out, torch.Tensor) or tuple(colsum_out.shape) != (B, Hkv, Lk)
            or colsum_out.dtype != torch.float32 or colsum_out.device != torch.device(device)
            or colsum_out.stride(-1) != 1):
        got = (f"{tuple(colsum_out.shape)} {colsum_out.dtype} on {colsum_out.device}"
               if isinstance(colsum_out, torch.Tensor) else type(colsum_out).__name__)
        raise ValueError(f"colsum_out must be a float32 ({B}, {Hkv}, {Lk}) tensor on {device} with unit stride "
                         f"in the last dimension; got {got}")
