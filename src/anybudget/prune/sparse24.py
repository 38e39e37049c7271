"""2:4 semi-structured sparsity: in every group of 4 consecutive weights along a row (the input
dimension), at most 2 are non-zero, the pattern NVIDIA's sparse tensor cores run (Mishra et al.
2021, "Accelerating Sparse Deep Neural Networks"). The CPU reference builds the magnitude 2:4
mask and checks the pattern; on CUDA ``to_semi_structured`` swaps the prunable Linear modules
for ``Linear24``: a ``torch.sparse.to_sparse_semi_structured`` weight (compressed values + metadata)
behind a forward that hands the kernel a contiguous input.

Why the contiguous input: torch's cuSPARSELt product (``torch._cslt_sparse_mm``, cuSPARSELtOps.cpp)
describes its dense operand from ``is_contiguous()`` alone: contiguous -> row-major (k, n);
otherwise the transpose of a row-major (n, k) with leading dimension k. A strided view that is
neither, such as BERT's pooler input ``hidden[:, 0]`` (row stride seq x hidden), is read from
the wrong rows, silently: every layer alone is right, the exported classifier is not.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from anybudget.prune.magnitude import BERT_PRUNABLE, prunable_names
from anybudget.prune.masks import Mask

__all__ = ["Linear24", "check_24", "mask_24", "prune_24", "to_semi_structured"]


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


class Linear24(nn.Module):
    """Inference-only Linear over a 2:4 semi-structured weight (torch.sparse); the input is made
    contiguous before the product (see the module docstring: a strided input is misread)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.contiguous(), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, 2:4 {type(self.weight).__name__}"


def _torch_to_sparse(fuse_transpose: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def convert(w: torch.Tensor) -> torch.Tensor:
        from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

        old = SparseSemiStructuredTensor._FUSE_TRANSPOSE
        SparseSemiStructuredTensor._FUSE_TRANSPOSE = fuse_transpose
        try:
            return to_sparse_semi_structured(w)
        finally:
            SparseSemiStructuredTensor._FUSE_TRANSPOSE = old

    return convert


@torch.no_grad()
def to_semi_structured(model: nn.Module, mask: Mask | None = None,
                       to_sparse: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       fuse_transpose: bool = True) -> list[str]:
    """Replace each masked Linear (2:4 pattern) by a ``Linear24`` whose weight is ``to_sparse(weight)``,
    in place; returns the converted parameter names. ``to_sparse`` defaults to
    ``torch.sparse.to_sparse_semi_structured`` (CUDA fp16/bf16 weights only); tests pass a
    CPU stand-in. ``fuse_transpose`` (cuSPARSELt): the kernel writes its product already transposed
    to the (tokens, out) row-major layout the next layer reads (torch's default, False, returns a
    transposed view that every following op reads strided). Weights whose shape the kernels refuse stay dense (left out of the return value).
    A name listed twice, or a module already converted, is refused (a weight is never converted twice).
    Run the converted model replayed from a CUDA graph: on an H100 with torch 2.11, with
    ``fuse_transpose=True`` (the default) each eager cuSPARSELt product spent ~200 ms on the host (a
    MiniLM forward 8.2-9.0 s), unfused ~2 ms (53 ms), against 2.8 and 6.2 ms replayed
    (``benchmarks/results/prune/prune_speed24_minilm*.json``)."""
    if to_sparse is None:
        to_sparse = _torch_to_sparse(fuse_transpose)
        if not torch.cuda.is_available():
            raise RuntimeError("2:4 semi-structured kernels need CUDA; on the CPU use mask_24 / "
                               "apply_mask (same numbers, dense storage)")
        need_cuda = True
    else:
        need_cuda = False
    names = list(mask) if mask is not None else prunable_names(model)
    if len(set(names)) != len(names):
        raise ValueError(f"mask names a parameter twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    mods = dict(model.named_modules())
    checked = []
    for n in names:  # every name is checked before any module is replaced: a bad one leaves the model as it was
        path = n.rsplit(".", 1)[0] if "." in n else ""
        mod = mods.get(path)
        if isinstance(mod, Linear24):
            raise ValueError(  # noqa: TRY004 (a state error, not a wrong type)
                f"{n}: already converted to 2:4 (to_semi_structured ran twice on this model)")
        if not isinstance(mod, nn.Linear) or not n.endswith(".weight") and n != "weight":
            raise ValueError(f"{n}: needs the weight of an nn.Linear, got {type(mod).__name__}")
        if not path:
            raise ValueError(f"{n}: the model itself is a Linear; wrap it in a module to convert it in place")
        w = mod.weight
        if need_cuda and (w.device.type != "cuda" or w.dtype not in (torch.float16, torch.bfloat16)):
            raise ValueError(f"{n}: needs a CUDA fp16/bf16 weight, got {w.dtype} on {w.device}")
        if not check_24(w):
            raise ValueError(f"{n}: weight does not follow the 2:4 pattern; apply prune_24's mask first")
        checked.append((n, path, mod))
    done, dense = [], []
    for n, path, mod in checked:
        try:
            sparse = to_sparse(mod.weight.detach())
        except (RuntimeError, ValueError) as err:  # e.g. a shape below the kernels' minimum: stays dense
            dense.append(f"{n} ({str(err).splitlines()[0][:120]})")
            continue
        new = Linear24(sparse, mod.bias, mod.in_features, mod.out_features)
        parent, _, attr = path.rpartition(".")
        setattr(mods[parent] if parent else model, attr, new)
        mods[path] = new
        done.append(n)
    if dense:
        warnings.warn(f"to_semi_structured: {len(dense)} weight(s) left dense, the 2:4 kernels refused them: "
                      + "; ".join(dense), stacklevel=2)
    return done
