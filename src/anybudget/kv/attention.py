"""Attention that also returns how much attention each cached key received (H2O's scores).

H2O ranks cached tokens by the accumulated softmax attention they receive (Zhang et al. 2023,
Sec. 3.2). SDPA / FlashAttention never materialize the probabilities, and the usual workaround
(eager attention with ``output_attentions``) holds the whole (batch, heads, n, n) matrix. Here the
column sums are accumulated chunk by chunk over queries: extra memory O(chunk * n), never n x n.

``attention_with_colsum`` dispatches: on CUDA with triton installed (``pip install
'anybudget[gpu]'``) the decode kernels (``decode_triton.py``) for one query per sequence, the
two-pass kernels (``kernels_triton.py``) otherwise; elsewhere the PyTorch reference. The kernel
files import only ``contract.py`` and ``triton_blocks.py`` (leaves). ``budget_attention`` is what a
budgeted cache's layer runs: a prompt (causal, with column sums when the policy needs scores) or
a static decoding step over slots (``slot_decode_attention``, plain PyTorch that compiles).
"""

from __future__ import annotations

import torch

from anybudget.kv.contract import check_colsum_out as _check_colsum_out
from anybudget.kv.contract import check_qkv as _check
from anybudget.kv.slot_decode_op import slot_decode_triton as _register_op  # noqa: F401  (torch.ops.anybudget)

__all__ = [
    "attention_with_colsum",
    "attention_with_colsum_reference",
    "budget_attention",
    "masked_sdpa",
    "slot_decode_attention",
    "triton_attention_with_colsum",
]


def _matmul_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with float32 output. On CUDA with 16-bit inputs, cuBLAS accumulates and writes in
    float32 straight from the bf16/fp16 operands (no float32 copy of the whole cache per step)."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and b.dtype == a.dtype:
        try:
            lead = a.shape[:-2]
            out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.expand(*lead, *b.shape[-2:]).reshape(-1, *b.shape[-2:]),
                            out_dtype=torch.float32)
            return out.view(*lead, a.shape[-2], b.shape[-1])
        except (TypeError, RuntimeError):
            pass
    return torch.matmul(a.float(), b.float())


def attention_with_colsum_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    key_mask: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and the per-key column sums of its probabilities.

    q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D) with Hq a multiple of Hkv (GQA: query heads
    ``g*G .. g*G+G-1`` share KV head g, as in Hugging Face ``repeat_kv``).
    causal: query i sits at key position ``Lk - Lq + i`` and sees keys ``j <= Lk - Lq + i``.
    key_mask: (B, Lk) or (B, Hkv, Lk) bool; False = padding or evicted: never attended, colsum 0.
    A query that sees no key outputs zeros and adds nothing to colsum.
    Returns out (B, Hq, Lq, D) in q.dtype and colsum (B, Hkv, Lk) float32: the sum over the
    group's query heads and all queries of ``softmax(q k^T * scale)`` (probabilities in float32).
    """
    _check(q, k, v, key_mask)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = D**-0.5 if scale is None else scale
    qg = q.view(B, Hkv, G, Lq, D)
    out = torch.empty(B, Hkv, G, Lq, D, dtype=q.dtype, device=q.device)
    colsum = torch.zeros(B, Hkv, Lk, dtype=torch.float32, device=q.device)
    if key_mask is not None:
        km = key_mask.view(B, 1 if key_mask.dim() == 2 else Hkv, 1, 1, Lk)
    key_pos = torch.arange(Lk, device=q.device)
    for s in range(0, Lq, chunk_size):
        e = min(Lq, s + chunk_size)
        # (B, Hkv, G*c, D) @ (B, Hkv, D, Lk): the group's query heads share one read of K.
        qc = qg[:, :, :, s:e].reshape(B, Hkv, G * (e - s), D)
        logits = (_matmul_f32(qc, k.transpose(-1, -2)) * scale).view(B, Hkv, G, e - s, Lk)
        visible = torch.ones(1, 1, 1, e - s, Lk, dtype=torch.bool, device=q.device)
        if causal:
            q_pos = torch.arange(s, e, device=q.device) + (Lk - Lq)
            visible = (key_pos[None, :] <= q_pos[:, None]).view(1, 1, 1, e - s, Lk)
        if key_mask is not None:
            visible = visible & km
        logits = logits.masked_fill(~visible, float("-inf"))
        row_max = logits.amax(dim=-1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        p = torch.exp(logits - row_max)  # exp(-inf) = 0 for hidden keys
        denom = p.sum(dim=-1, keepdim=True)
        p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
        pv = p.to(v.dtype) if v.dtype != torch.float32 else p  # 16-bit P @ V, as flash attention does
        out[:, :, :, s:e] = torch.matmul(pv.view(B, Hkv, G * (e - s), Lk), v).view(B, Hkv, G, e - s, D).to(q.dtype)
        colsum += p.sum(dim=(2, 3))
    return out.view(B, Hq, Lq, D), colsum


def _triton_available(t: torch.Tensor) -> bool:
    if t.device.type != "cuda":
        return False
    try:
        from anybudget.kv import kernels_triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_attention_with_colsum(q, k, v, *, scale=None, causal=True, key_mask=None, decode_kernel=None,
                                 colsum_out=None):
    """The Triton kernels, prefill or decode (same contract as :func:`attention_with_colsum_reference`).

    One query per sequence (a decoding step) goes to the decode kernels of ``decode_triton.py``:
    fewer launches and less host time per call, which is what a decoding step is bound by at the
    sizes of ``kv_speed_decode.json`` (in GPU time alone the two passes are faster at some shapes
    of ``kv_decode_kernel.json``); otherwise the two passes of ``kernels_triton.py``.
    ``decode_kernel`` forces one (True: decode, needs ``G * Lq <= 128``; False: two passes).
    """
    G = q.shape[1] // k.shape[1]
    if decode_kernel or (decode_kernel is None and q.shape[2] == 1 and G <= 128):
        from anybudget.kv.decode_triton import decode_attention_with_colsum_triton

        return decode_attention_with_colsum_triton(q, k, v, scale=scale, causal=causal, key_mask=key_mask,
                                                   colsum_out=colsum_out)
    from anybudget.kv.kernels_triton import attention_with_colsum_triton

    return attention_with_colsum_triton(q, k, v, scale=scale, causal=causal, key_mask=key_mask, colsum_out=colsum_out)


def attention_with_colsum(q, k, v, *, scale=None, causal=True, key_mask=None, chunk_size=1024, colsum_out=None):
    """Dispatch: Triton kernels on CUDA when available, else the chunked PyTorch reference.

    Same contract as :func:`attention_with_colsum_reference`. ``colsum_out``: a float32
    (B, Hkv, Lk) tensor the column sums are added to (H2O's running scores), returned as colsum.
    """
    if _triton_available(q):  # the Triton paths check colsum_out themselves (once per call)
        _check(q, k, v, key_mask)
        return triton_attention_with_colsum(q, k, v, scale=scale, causal=causal, key_mask=key_mask,
                                            colsum_out=colsum_out)
    if colsum_out is not None:
        _check_colsum_out(colsum_out, q.shape[0], k.shape[1], k.shape[2], q.device)
    out, col = attention_with_colsum_reference(q, k, v, scale=scale, causal=causal, key_mask=key_mask,
                                               chunk_size=chunk_size)
    if colsum_out is None:
        return out, col
    colsum_out += col
    return out, colsum_out


def masked_sdpa(q, k, v, *, scale=None, key_mask=None) -> torch.Tensor:
    """Causal SDPA where the queries are the newest keys, plus an optional per-(kv-head) key mask.

    Used by the policies that need no scores. With ``key_mask=None`` no boolean mask is built
    (one query, or as many queries as keys: SDPA's own causal path); a given mask is used as is,
    without reading it on the host (no device sync). Rows with no visible key give zeros (not NaN).
    """
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    if key_mask is None and (Lq == 1 or Lq == Lk):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=(Lq == Lk and Lq > 1), scale=scale, enable_gqa=G > 1
        )
    causal = torch.arange(Lk, device=q.device)[None, :] <= (torch.arange(Lq, device=q.device) + (Lk - Lq))[:, None]
    mask = causal.view(1, 1, Lq, Lk)
    if key_mask is not None:
        km = key_mask.view(B, 1, Lk) if key_mask.dim() == 2 else key_mask
        if km.shape[1] > 1 and G > 1:
            km = km.repeat_interleave(G, dim=1)
        mask = mask & km.unsqueeze(2)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=G > 1)
    # A fully hidden row gives NaN in SDPA; those queries (padding) must output zeros.
    return torch.where(mask.any(-1, keepdim=True), out, torch.zeros((), dtype=out.dtype, device=out.device))


DECODE_PRODUCTS = ("auto", "reduce", "matmul", "triton", "triton_op")


def check_decode_products(value, name: str = "products") -> None:
    """Raise ValueError naming ``name`` unless ``value`` is one of :data:`DECODE_PRODUCTS`."""
    if value not in DECODE_PRODUCTS:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(DECODE_PRODUCTS)}")


def slot_decode_attention(q, k, v, *, scale=None, key_mask, colsum_out=None, products: str = "auto") -> torch.Tensor:
    """One decoding step over static slots: the query sees every valid slot (slots are not in
    position order, so no causal mask), plain PyTorch ops that ``torch.compile`` fuses.

    q: (B, Hq, 1, D); k, v: (B, Hkv, S, D); key_mask: (B, Hkv, S) bool, at least one True per row.
    colsum_out: float32 (B, Hkv, S) the attention each slot received is added to (H2O scores).
    Logits are computed in the inputs' dtype and softmaxed in float32 (as Hugging Face's eager
    attention does). Returns (B, Hq, 1, D).

    products: how ``q K^T`` and ``P V`` are formed. ``"reduce"``: a product summed over the
    contracted dim, which inductor lowers to one reduction kernel per product that reads K (or V)
    once, fused with the casts around it (inductor's CPU lowering does this for any bmm with one
    query row; on CUDA such a bmm, one query against S keys, goes to a cuBLAS batched GEMM call
    instead, with the softmax and the score update as separate kernels around it). Eager, the
    product would be a cache-sized temporary, so ``"auto"`` (default) reduces only while
    compiling and uses ``matmul`` otherwise; ``"matmul"`` always does (the path before).
    Both round the logits and P to the inputs' dtype and accumulate in float32, as the matmul does.
    ``"triton"``: one custom op (``kv/slot_decode_op.py``) around the Triton decode kernel, which
    computes the output and the column sums reading K and V once, compiled or not (a graph node,
    recorded into CUDA graphs); its logits stay float32 (no rounding to the inputs' dtype). On a
    CPU it runs the matmul path unless ``TRITON_INTERPRET=1``. Measured: equal to ``"matmul"``
    on the CPU (interpreter, fp32 and fp16, GQA, masks; compiled with fullgraph). On an H200 (bf16,
    16 KV heads of 128, 20% of prompt + 128 slots) one compiled layer step's kernels took 1.35x
    (batch 64, 2k) to 1.73x (batch 16, 8k) less time than ``"matmul"``'s (``kv_decode_step.json``),
    but transformers' whole compiled decoding step was slower (batch 64, 2k: 9.41 vs 6.66 ms/step,
    ``serving.py``'s ``h2o_20_triton`` row); ``serving.py --profile`` found where (run8, batch 64,
    2k: 8.96 vs 8.08 ms): the kernel cut the products from 2.77 to 1.74 ms per step, but the
    eviction after it took 2.28 ms, inductor having tiled it over (batch, head) because the op
    added its sums to the scores in place (see ``slot_decode_op._slot_decode``); the op now
    returns them and this function adds them, as the matmul path does (not yet re-timed on a
    GPU). So it stays opt-in and the caches keep ``"matmul"`` as their default. ``"triton_op"``: the
    same kernels registered with ``torch.library.triton_op``, so that a compiled graph launches them
    itself instead of calling the op's Python wrapper each step (equal to ``"matmul"`` on the CPU:
    interpreter eager; compiled, the graph holds the two kernel launches; not yet timed on a GPU).
    """
    check_decode_products(products)
    B, Hq, _, D = q.shape
    scale = D**-0.5 if scale is None else scale
    if products in ("triton", "triton_op"):
        op = torch.ops.anybudget.slot_decode_triton if products == "triton" else torch.ops.anybudget.slot_decode_triton_op
        if colsum_out is not None and not torch.compiler.is_compiling():  # a traced graph checked it eagerly
            _check_colsum_out(colsum_out, B, k.shape[1], k.shape[2], q.device)
        out, col = op(q, k, v, key_mask, float(scale), colsum_out is not None)
        if colsum_out is not None:  # in the graph, as the matmul path: fused into the eviction's reduction
            colsum_out.add_(col)
        return out
    Hkv = k.shape[1]
    G = Hq // Hkv
    reduce = products == "reduce" or (products == "auto" and torch.compiler.is_compiling())
    qg = q.view(B, Hkv, G, D)
    if reduce:  # (B, Hkv, G, 1, D) x (B, Hkv, 1, S, D) summed over D
        logits = (qg.unsqueeze(3).float() * k.unsqueeze(2).float()).sum(-1).to(q.dtype)
    else:
        logits = torch.matmul(qg, k.transpose(-1, -2))  # (B, Hkv, G, S)
    logits = logits.float() * scale
    logits = logits.masked_fill(~key_mask[:, :, None, :], float("-inf"))
    p = torch.softmax(logits, dim=-1)
    pv = p.to(v.dtype)
    if reduce:  # (B, Hkv, G, S, 1) x (B, Hkv, 1, S, D) summed over S
        out = (pv.unsqueeze(-1).float() * v.unsqueeze(2).float()).sum(-2).to(v.dtype)
    else:
        out = torch.matmul(pv, v)  # (B, Hkv, G, D)
    if colsum_out is not None:
        colsum_out.add_(p.sum(2))
    return out.view(B, Hq, 1, v.shape[-1])


def budget_attention(q, k, v, *, scale=None, key_mask=None, colsum_out=None, needs_scores: bool, decode_slots: bool,
                     products: str = "auto"):
    """The attention of a budgeted cache's layer: prefill (causal over the newest keys; with the
    column sums when the policy needs scores) or a static decoding step over slots (``products``:
    see :func:`slot_decode_attention`). Returns (out (B, Hq, Lq, D), column sums or None)."""
    if decode_slots:
        col = colsum_out if needs_scores else None
        return slot_decode_attention(q, k, v, scale=scale, key_mask=key_mask, colsum_out=col, products=products), col
    if needs_scores:
        # Query chunk so that one chunk's float32 logits stay under ~256 MB (prefill memory).
        B, Hq, _, _ = q.shape
        chunk = max(16, min(1024, (1 << 26) // max(1, B * Hq * k.shape[2])))
        out, col = attention_with_colsum(q, k, v, scale=scale, causal=True, key_mask=key_mask, chunk_size=chunk,
                                         colsum_out=colsum_out)
        return out, col
    return masked_sdpa(q, k, v, scale=scale, key_mask=key_mask), None
