"""The static decoding step's attention as one PyTorch custom op around the Triton decode kernel.

``torch.ops.anybudget.slot_decode_triton(q, k, v, key_mask, scale, colsum)`` attends one query
per sequence over unordered slots (key mask, no causal mask) and returns the output and the
attention each slot received (H2O's score increments, Zhang et al. 2023, Alg. 1), reading K and V once
(``decode_triton.py``: split-K flash decoding at every shape, see :data:`FUSED_FROM_WAVES`; the
split count is a function of the shapes and the SM count only).

Registered with ``torch.library.custom_op`` and a fake (shape-only) implementation, so
``torch.compile`` (``fullgraph=True``, dynamic shapes, ``mode="reduce-overhead"``) keeps it as one
node of the graph: no graph break, and the kernel launches are recorded into the CUDA graph like
any other kernel. The op does no ``.item()``, no host sync and allocates only shape-sized
workspace. It mutates nothing: the caller adds the column sums to the scores in its graph.

A second registration of the same computation, ``torch.ops.anybudget.slot_decode_triton_op``
(``decode_products="triton_op"``), uses ``torch.library.triton_op``: its body (host-side Python on
shapes plus the launches through ``torch.library.wrap_triton``) is traced at compile time, so the
compiled graph holds the Triton kernels themselves (inductor emits them into its generated code)
instead of one extern call into this module's Python wrapper at every step. Eager it runs the same
kernels directly. Under Triton's interpreter it runs eagerly only: ``wrap_triton`` cannot trace an
interpreted kernel, so compile it on a plain CPU (the matmul fallback is traced) or on CUDA.

Where it runs: CUDA with triton -> the kernels; CPU with ``TRITON_INTERPRET=1`` and triton -> the
same kernels under Triton's interpreter (tests); any other CPU tensor -> the PyTorch reference
(``slot_decode_attention(products="matmul")``), so a compiled CPU graph still runs. On CUDA
without triton it raises the ImportError naming ``pip install 'anybudget[gpu]'``.
"""

from __future__ import annotations

import os

import torch

__all__ = ["slot_decode_triton", "slot_decode_triton_op", "takes_fused", "uses_kernel"]

# The op takes split-K at every shape: in CUDA graphs (no host launches to save) it was faster than
# the one-launch form at each shape benchmarks/kv/decode_step.py timed (kernel_choice, H200, 16 KV
# heads of 128, 20% of prompt + 128 slots; ms fused / split-K): batch 64 prompt 2k 0.082 / 0.073,
# batch 1024 prompt 2k 1.019 / 0.931, batch 16 prompt 8k 0.087 / 0.072; batch 8 prompt 2k 0.0160 /
# 0.0167 (within noise). The one-launch form's column sums run in one program per (row, KV head)
# after its key loop; split-K's combine spreads them over key blocks. None: never the one-launch
# form; an int n: from n waves of (row, KV head) programs (the rule before: 4).
FUSED_FROM_WAVES: int | None = None


def takes_fused(batch: int, kv_heads: int, sms: int) -> bool:
    """Whether the op runs the one-launch form (else split-K) for this many (row, KV head) pairs."""
    return FUSED_FROM_WAVES is not None and batch * kv_heads >= FUSED_FROM_WAVES * sms


def uses_kernel(t: torch.Tensor) -> bool:
    """Whether the op runs the Triton kernel for tensors like ``t`` (else the PyTorch reference)."""
    if t.device.type == "cuda":
        return True
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@torch.library.custom_op("anybudget::slot_decode_triton", mutates_args=())
def slot_decode_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                       scale: float, colsum: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q: (B, Hq, 1, D); k, v: (B, Hkv, S, D); key_mask: (B, Hkv, S) bool, at least one True per
    row. Softmax and score sums in float32. Returns the output (B, Hq, 1, D) in q.dtype and, with
    ``colsum``, a new float32 (B, Hkv, S) tensor of the attention each slot received (else an
    empty one). The caller adds the column sums to the scores in its own graph, where inductor
    fuses that add into the eviction's reduction (see :func:`_slot_decode`)."""
    return _slot_decode(q, k, v, key_mask, scale, colsum, None)


def _slot_decode(q, k, v, key_mask, scale, colsum, wrap):
    """Both registrations' body: the kernel (launched through ``wrap`` when given) or the reference.

    The column sums come back as a new tensor, not added in place to the cache's scores: with an
    in-place op, inductor (2.13) lost the eviction's reads of the slot buffers mutated earlier in
    the step (its coalescing analysis looks them up under their pre-mutation names), saw only the
    (batch, head)-shaped outputs and tiled the eviction's amin/argmax (batch, head) x slots with
    R0_BLOCK 4: 2.28 ms per step, 99 us a layer, on an H200 at batch 64, prompt 2k (serving
    run8). Read from a fresh tensor, the add and the eviction fuse into one reduction tiled over
    (row, head) pairs with the slots contiguous (R0_BLOCK 512), as on the matmul path."""
    if uses_kernel(q):
        from anybudget.kv.decode_triton import _num_sms, decode_attention_with_colsum_triton

        fused = takes_fused(int(k.shape[0]), int(k.shape[1]), _num_sms(q.device))
        out, col = decode_attention_with_colsum_triton(q, k, v, scale=scale, causal=False, key_mask=key_mask,
                                                       fused=fused, wrap=wrap)
        return out, (col if colsum else col.new_empty(0))
    from anybudget.kv.attention import slot_decode_attention

    col = torch.zeros(k.shape[:3], dtype=torch.float32, device=q.device) if colsum else None
    out = slot_decode_attention(q, k, v, scale=scale, key_mask=key_mask, colsum_out=col, products="matmul")
    return out, (col if colsum else q.new_empty(0, dtype=torch.float32))


@slot_decode_triton.register_fake
def _slot_decode_triton_fake(q, k, v, key_mask, scale, colsum):
    out = q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[-1])
    col = q.new_empty(k.shape[:3] if colsum else (0,), dtype=torch.float32)
    return out, col


@torch.library.triton_op("anybudget::slot_decode_triton_op", mutates_args=())
def slot_decode_triton_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                          scale: float, colsum: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`slot_decode_triton` registered with ``torch.library.triton_op`` (same contract): this
    body is also its fake implementation and is traced into compiled graphs, the kernel launches
    as ``wrap_triton`` nodes (the interpreter's kernels are launched directly: eager only)."""
    return _slot_decode(q, k, v, key_mask, scale, colsum, torch.library.wrap_triton)
