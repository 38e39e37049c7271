"""``serving.py``'s loop rows: greedy decoding through ``kv.greedy_generate`` (one CUDA graph per
generation, replayed with no host sync per token) instead of ``model.generate``.

Rows:
  hf_static_loop         transformers' StaticCache through the loop: the same-loop full cache
  h2o_20_loop            ``H2OCache("20%", static=True, decode_products="triton")`` through the
                         loop, its step captured eagerly (no torch.compile: the Triton decode op
                         and cuBLAS run as they are, the rest as PyTorch's eager kernels)
  h2o_20_loop_compiled   the same with the step torch.compiled (inductor, default mode) before
                         the capture: fused elementwise kernels, compile time in ``warmup_s``

Decode ms/step: CUDA events around the replays (steps after the warm-up steps and the capture),
total / replays. ``warmup_s``: a first whole call (Triton JIT, cuBLAS, compile; the timed call
reuses its cache, which greedy_generate resets in place) plus the
timed call's own warm-up steps and capture (``capture_s``). End-to-end tok/s: batch x new tokens
/ the timed call's wall time (prefill, warm-up, capture, replays, the final sync).
"""

from __future__ import annotations

import time

import torch

from anybudget import kv
from anybudget.plan.device import hf_static_cache

ROWS = ("hf_static_loop", "h2o_20_loop", "h2o_20_loop_compiled")


def loop_cache(model, row: str, B: int, P: int, N: int):
    if row == "hf_static_loop":
        return hf_static_cache(model, B, P + N + 1, mark_dynamic=False)
    return kv.make_cache("h2o", "20%", static=True, max_new_tokens=N, decode_products="triton")


def run_loop_row(model, cfg, row, B, P, N, warm_cap, guard):
    """One (row, batch, prompt) of the loop rows: (result fields, the timed call's cache)."""
    g = torch.Generator().manual_seed(B * 7 + P)
    ids = torch.randint(1, cfg.vocab_size, (B, P), generator=g).to(model.device)
    cuda = ids.device.type == "cuda"
    # --smoke (CPU): the compiled row traces its step with the cheap eager backend
    opts = ({"compile": {"mode": "default"} if cuda else {"backend": "eager"}, "warmup_steps": 3}
            if row.endswith("_compiled") else {})
    cache, stats = loop_cache(model, row, B, P, N), {}
    t0 = time.perf_counter()
    with guard.warmup_limit(warm_cap):  # the same cache and length as the timed call: no recompilation there
        kv.greedy_generate(model, ids, cache, N, eos_token_id=[], **opts)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = kv.greedy_generate(model, ids, cache, N, eos_token_id=[], stats=stats, **opts)
    if cuda:
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    step = stats["decode_ms_per_step"]
    res = {"row": row, "batch": B, "prompt": P, "new_tokens": out.shape[1] - P, "decode_ms_per_step": step,
           "decode_tok_per_s": B / step * 1e3, "end_to_end_tok_per_s": B * N / total, "total_s": total,
           "warmup_s": warm + stats["capture_s"], "prefill_s": stats["prefill_s"], "capture_s": stats["capture_s"],
           "replays": stats["replays"], "loop_warmup_steps": stats["warmup_steps"],
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    return res, cache
