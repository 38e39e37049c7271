"""Loading a local Hugging Face causal LM (the embedded reference LM by default), for any module.

Library code, not CLI code: a missing folder raises :class:`FileNotFoundError` naming it (the CLI's
error boundary prints it as one line), so ``demo.py`` and the technique CLIs share one loader.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REFLM_DIR", "load_causal_lm"]

REFLM_DIR = Path(__file__).resolve().parent / "assets" / "reflm"


def load_causal_lm(model_dir: str | os.PathLike | None = None, device=None, dtype: str | None = None):
    """``(model, tokenizer, device)`` of a local causal LM folder, in eval mode.

    ``model_dir=None`` loads the embedded reference LM. ``device``: default
    :func:`anybudget.measure.default_device`. ``dtype``: ``"float32"``, ``"bfloat16"`` or
    ``"float16"``; default bfloat16 on CUDA, float32 elsewhere. Models load from local paths only.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anybudget.measure import default_device

    p = Path(model_dir) if model_dir is not None else REFLM_DIR
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"--model {str(p)!r} is not a local model folder (no config.json); models load from local paths only"
        )
    dev = torch.device(default_device(device))
    if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={dtype!r} is not allowed; use float32, bfloat16 or float16")
    dt = getattr(torch, dtype) if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    tok = AutoTokenizer.from_pretrained(p)
    model = AutoModelForCausalLM.from_pretrained(p, dtype=dt).to(dev).eval()
    return model, tok, dev
