"""Masks as plain data: ``{parameter name: bool tensor}`` (True = kept), saved as safetensors.

A mask is applied by zeroing the pruned weights in place (``apply_mask``); during training a
removable optimizer hook re-applies it after every step (``MaskEnforcer``), so the model stays a
plain ``nn.Module`` with no ``torch.nn.utils.prune`` re-parametrisation: ``bake`` returns a copy
that is an ordinary model (its ``state_dict`` has the original keys, pruned entries exactly 0).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from anybudget.io import atomic_path

__all__ = [
    "Mask",
    "MaskEnforcer",
    "apply_mask",
    "bake",
    "check_mask",
    "check_sparsity",
    "load_mask",
    "mask_sparsity",
    "save_mask",
    "sparsity_report",
]

Mask = dict[str, torch.Tensor]


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Sparsity is the pruned fraction; allowed: 0 <= s < 1 (pruning everything is refused)."""
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"{name}={sparsity!r} is out of range; a sparsity is a fraction in [0, 1)")
    return s


def check_mask(model: nn.Module, mask: Mask, strict: bool = True) -> None:
    """Raise a ValueError naming ``mask`` if a name is unknown or a shape or dtype is wrong."""
    if not isinstance(mask, dict):
        raise TypeError(f"mask must be a dict {{parameter name: bool tensor}}, not {type(mask).__name__}")
    params = dict(model.named_parameters())
    unknown = sorted(k for k in mask if k not in params)
    if unknown and strict:
        raise ValueError(
            f"mask has {len(unknown)} unknown parameter name(s), e.g. {unknown[:3]}; the model's "
            f"prunable names look like {sorted(params)[:2]}"
        )
    for k, m in mask.items():
        if k not in params:
            continue
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise ValueError(f"mask[{k!r}] must be a bool tensor, not {getattr(m, 'dtype', type(m))}")
        if tuple(m.shape) != tuple(params[k].shape):
            raise ValueError(
                f"mask[{k!r}] has shape {tuple(m.shape)} but the parameter has shape "
                f"{tuple(params[k].shape)}"
            )


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask, strict: bool = True) -> nn.Module:
    """Zero the pruned entries of ``model`` in place (w <- m * w); returns ``model``.

    ``strict=False`` skips names the model does not have (a mask found with the MLM head applied
    to a classifier: the names of the shared encoder match, the rest are ignored).
    """
    check_mask(model, mask, strict=strict)
    params = dict(model.named_parameters())
    for k, m in mask.items():
        if k in params:
            p = params[k]
            p.mul_(m.to(device=p.device, dtype=p.dtype))
    return model


class MaskEnforcer:
    """Re-apply a mask after every ``optimizer.step()``; ``remove()`` detaches it.

    Zeroing after the step (rather than masking gradients) also undoes AdamW's weight decay and
    momentum on pruned entries, so they stay exactly 0 (the reference code gets the same effect
    from torch.nn.utils.prune's forward pre-hook, which we avoid so no hook reaches an export).
    """

    def __init__(self, model: nn.Module, mask: Mask, optimizer: torch.optim.Optimizer, strict=True):
        check_mask(model, mask, strict=strict)
        params = dict(model.named_parameters())
        kept = [k for k in mask if k in params]
        self._params = [params[k] for k in kept]
        self._masks = [mask[k].to(params[k].device, params[k].dtype) for k in kept]
        self._handle = optimizer.register_step_post_hook(lambda *_: self.enforce())
        self.enforce()

    @torch.no_grad()
    def enforce(self) -> None:
        if self._params:
            torch._foreach_mul_(self._params, self._masks)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def bake(model: nn.Module, mask: Mask | None = None, strict: bool = True) -> nn.Module:
    """A deep copy with the mask multiplied in and no pruning hooks: a plain exportable model.

    If the model carries ``torch.nn.utils.prune`` re-parametrisations (``weight_orig`` +
    ``weight_mask``), they are made permanent first so the copy has its original keys.
    """
    from torch.nn.utils import prune as tprune

    for mod in model.modules():  # prune's computed `weight` is a non-leaf: deepcopy refuses it
        for h in mod._forward_pre_hooks.values():
            if isinstance(h, tprune.BasePruningMethod):
                setattr(mod, h._tensor_name, getattr(mod, h._tensor_name).detach())
    out = copy.deepcopy(model)
    for mod in out.modules():
        for name in [h._tensor_name for h in mod._forward_pre_hooks.values()
                     if isinstance(h, tprune.BasePruningMethod)]:
            tprune.remove(mod, name)
    if mask is not None:
        apply_mask(out, mask, strict=strict)
    return out


def mask_sparsity(mask: Mask) -> float:
    """Overall pruned fraction of the masked tensors."""
    total = sum(m.numel() for m in mask.values())
    kept = sum(int(m.sum()) for m in mask.values())
    return 1.0 - kept / total if total else 0.0


def sparsity_report(mask: Mask) -> dict:
    """``{"overall": s, "total": n, "pruned": k, "layers": {name: {"sparsity", "numel", "pruned"}}}``."""
    layers = {}
    for k, m in mask.items():
        n, kept = m.numel(), int(m.sum())
        layers[k] = {"sparsity": 1.0 - kept / n if n else 0.0, "numel": n, "pruned": n - kept}
    total = sum(v["numel"] for v in layers.values())
    pruned = sum(v["pruned"] for v in layers.values())
    return {"overall": pruned / total if total else 0.0, "total": total, "pruned": pruned,
            "layers": layers}


def save_mask(path: str | os.PathLike, mask: Mask, metadata: dict | None = None) -> Path:
    """Write the mask as safetensors (bool tensors) with JSON ``metadata`` in the header."""
    from safetensors.torch import save_file

    meta = {"format": "anybudget.prune.mask", "sparsity": f"{mask_sparsity(mask):.6f}"}
    if metadata:
        meta["anybudget"] = json.dumps(metadata, sort_keys=True)
    tensors = {k: v.detach().to("cpu", torch.bool).contiguous() for k, v in mask.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_mask(path: str | os.PathLike) -> tuple[Mask, dict]:
    """Read a mask written by ``save_mask``: ``(mask, metadata)``."""
    from safetensors import safe_open

    mask = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            t = f.get_tensor(k)
            if t.dtype != torch.bool:
                raise ValueError(f"mask file {path}: tensor {k!r} is {t.dtype}, expected bool")
            mask[k] = t
    extra = json.loads(meta["anybudget"]) if "anybudget" in meta else {}
    return mask, extra
