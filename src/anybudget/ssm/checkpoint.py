"""MQAR training checkpoints that know which run they belong to.

A checkpoint stores the run's configuration (model, training settings, train segments, test sets)
beside the weights. Resuming with another configuration would silently mix two runs (the
optimizer state of one, the schedule length or model of another), so :func:`check_run_config`
refuses it with one message naming every key that differs. Keys that do not change the trained
weights (how often to checkpoint, the eval batch size, the scan backend) may differ.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch

__all__ = ["CheckpointMismatch", "check_run_config", "load_checkpoint", "load_model_weights", "run_config"]

# Free to change between a run and its resume: they decide speed or bookkeeping, not the weights.
IGNORED_KEYS = frozenset({"train.checkpoint_every", "train.test_batch_size", "model.mamba.scan_backend"})
# Settings added later, with the value every checkpoint written before them implies.
ADDED_KEYS = {"train.decay_all": False}


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a run with another configuration."""


def _plain(obj):
    if is_dataclass(obj):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def run_config(model, train_cfg, segments, test_sets) -> dict:
    """The configuration a checkpoint records: ``{"model", "train", "segments", "test_sets"}``."""
    model_cfg = getattr(model, "config", None)
    return {
        "model": _plain(model_cfg) if model_cfg is not None else {"class": type(model).__name__},
        "train": _plain(train_cfg),
        "segments": _plain(list(segments)),
        "test_sets": _plain(list(test_sets)),
    }


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_run_config(saved: dict | None, current: dict, path) -> None:
    """Raise :class:`CheckpointMismatch` naming the keys where ``saved`` and ``current`` differ.

    A checkpoint without a recorded configuration (written before configurations were stored)
    is refused too: nothing says which run it belongs to.
    """
    if saved is None or "model" not in saved:
        raise CheckpointMismatch(
            f"checkpoint {path} records no run configuration (an older format); delete it or pass another "
            "--checkpoint to start a new run"
        )
    a, b = _flatten(_plain(saved)), _flatten(_plain(current))
    a = {**ADDED_KEYS, **a}  # keys added after older checkpoints were written, at the value those ran with
    diff = [k for k in sorted(set(a) | set(b)) if k not in IGNORED_KEYS and a.get(k) != b.get(k)]
    if diff:
        shown = "; ".join(f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in diff[:6])
        more = f" (and {len(diff) - 6} more)" if len(diff) > 6 else ""
        raise CheckpointMismatch(
            f"checkpoint {path} belongs to another run: {shown}{more}; resume with the same settings, "
            "or pass another --checkpoint to start a new run"
        )


def load_checkpoint(path: str | Path, current: dict, device) -> dict:
    """Load a training checkpoint after checking that it belongs to the run ``current`` describes."""
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # damaged or foreign file: one line, not a pickle traceback
        raise CheckpointMismatch(f"checkpoint {path} cannot be read as a training checkpoint: {e}") from e
    if not isinstance(ck, dict) or "model" not in ck or "step" not in ck:
        raise CheckpointMismatch(f"checkpoint {path} is not an MQAR training checkpoint (no model / step)")
    check_run_config(ck.get("run_config"), current, path)
    return ck


def load_model_weights(model, path: str | Path, device) -> None:
    """Load the weights of a training checkpoint into ``model``, refusing one of another model.

    The model settings recorded in the checkpoint are compared first (differing keys named); a
    checkpoint without them is loaded if its tensors fit, else refused in one line.
    """
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise CheckpointMismatch(f"checkpoint {path} cannot be read as a training checkpoint: {e}") from e
    if not isinstance(ck, dict) or "model" not in ck:
        raise CheckpointMismatch(f"checkpoint {path} is not an MQAR training checkpoint (no model weights)")
    saved = (ck.get("run_config") or {}).get("model")
    if saved is not None:
        a, b = _flatten({"model": saved}), _flatten({"model": _plain(getattr(model, "config", {}))})
        diff = [k for k in sorted(set(a) | set(b)) if k not in IGNORED_KEYS and a.get(k) != b.get(k)]
        if diff:
            shown = "; ".join(f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in diff[:6])
            raise CheckpointMismatch(f"checkpoint {path} holds another model: {shown}; give the model flags it was "
                                     "trained with (--layers, --d-model, --d-state, --polarize, ...)")
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise CheckpointMismatch(f"checkpoint {path} does not fit this model ({first[0].strip()}); give the "
                                 "model flags it was trained with") from e
