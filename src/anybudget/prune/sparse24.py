"""2:4 semi-structured sparsity: in every group of 4 consecutive weights along a row (the input
dimension), at most 2 are non-zero, the pattern NVIDIA's sparse tensor cores run (Mishra et al.
2021, "Accelerating Sparse Deep Neural Networks"). The CPU reference builds the magnitude 2:4
mask and checks the pattern; on CUDA ``to_semi_structured`` swaps the prunable Linear weights
for ``torch.sparse.to_sparse_semi_structured`` tensors (compressed values + metadata).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from anybudget.prune.magnitude import BERT_PRUNABLE, prunable_names
from anybudget.prune.masks import Mask

__all__ = ["check_24", "mask_24", "prune_24", "to_semi_structured"]


def mask_24(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of each group of 4 along the last dim. weight: (out, in), in % 4 == 0.
    Ties: the earlier position is kept."""
    if weight.ndim != 2 or weight.shape[1] % 4:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; 2:4 needs a matrix whose "
                         "second dimension is a multiple of 4")
    g = weight.detach().abs().float().reshape(-1, 4)
    order = torch.argsort(-g, dim=1, stable=True)
    keep = torch.zeros_like(g, dtype=torch.bool)
    keep.scatter_(1, order[:, :2], True)
    return keep.reshape(weight.shape).cpu()


def check_24(t: torch.Tensor) -> bool:
    """True if every group of 4 along the last dim has at most 2 non-zeros (a bool mask: kept)."""
    nz = (t != 0) if t.dtype != torch.bool else t
    if nz.shape[-1] % 4:
        return False
    return bool((nz.reshape(-1, 4).sum(1) <= 2).all())


def prune_24(model: nn.Module, patterns: Iterable[str] = BERT_PRUNABLE) -> Mask:
    """The 2:4 magnitude mask (50% sparsity) of every prunable matrix."""
    params = dict(model.named_parameters())
    return {n: mask_24(params[n]) for n in prunable_names(model, patterns)}


@torch.no_grad()
def to_semi_structured(model: nn.Module, mask: Mask | None = None) -> list[str]:
    """Replace each masked Linear weight (2:4 pattern, fp16/bf16, on CUDA) by a semi-structured
    sparse tensor, in place; returns the converted parameter names. Weights whose shape the
    kernels refuse stay dense (listed out of the return value). Inference only."""
    from torch.sparse import to_sparse_semi_structured

    if not torch.cuda.is_available():
        raise RuntimeError("2:4 semi-structured kernels need CUDA; on the CPU use mask_24 / "
                           "apply_mask (same numbers, dense storage)")
    names = list(mask) if mask is not None else prunable_names(model)
    mods = dict(model.named_modules())
    done = []
    for n in names:
        mod = mods[n.rsplit(".", 1)[0] if "." in n else ""]
        w = mod.weight
        if not isinstance(mod, nn.Linear) or w.device.type != "cuda" or w.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"{n}: needs an nn.Linear with a CUDA fp16/bf16 weight, got "
                             f"{type(mod).__name__} {w.dtype} on {w.device}")
        if not check_24(w):
            raise ValueError(f"{n}: weight does not follow the 2:4 pattern; apply prune_24's mask first")
        try:
            mod.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
        except (RuntimeError, ValueError):
            continue  # shape below the kernels' minimum: stays dense
        done.append(n)
    return done
