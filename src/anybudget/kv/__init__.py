"""anybudget.kv: keep the KV cache inside a budget (H2O heavy hitters, StreamingLLM sinks, ...).

    import anybudget.kv as kv
    kv.enable(model)
    out = model.generate(**inputs, past_key_values=kv.H2OCache(budget="20%"))
    # (recent transformers name the argument ``cache=``; kv.cache_kwargs(model, cache) picks the right one)

    # serving: fixed slots, eviction on the device, decoding steps compiled by generate (CUDA graphs)
    cache = kv.H2OCache("20%", static=True, max_new_tokens=128)
    out = model.generate(**inputs, max_new_tokens=128, **kv.cache_kwargs(model, cache))
    # or without generate's host loop: one CUDA graph per generation, replayed with no sync per token
    out = kv.greedy_generate(model, inputs["input_ids"], cache, 128, attention_mask=inputs["attention_mask"])

Layout: ``policies.py`` (the policy objects, one victim rule, the reference ``*_keep_indices``),
``slots.py`` / ``static_slots.py`` (per-layer slot stores), ``cache.py`` (the caches),
``attention.py`` (prefill or decode attention with H2O's column sums; ``slot_decode_op.py``: the
Triton decode kernel as a custom op for compiled static steps), ``hf.py`` (transformers
integration), ``prefill.py`` (row micro-batched prompts), ``contract.py`` / ``triton_blocks.py``
/ ``kernels_triton.py`` / ``decode_triton.py`` (checks and Triton kernels, leaves).
"""

from anybudget.kv.attention import attention_with_colsum, attention_with_colsum_reference
from anybudget.kv.cache import (
    H2OCache,
    KVBudgetCache,
    LocalCache,
    RandomCache,
    StreamingCache,
    make_cache,
    parse_kv_budget,
)
from anybudget.kv.decode_loop import greedy_generate
from anybudget.kv.hf import SUPPORTED, cache_kwargs, disable, enable, enabled
from anybudget.kv.policies import (
    H2O,
    POLICIES,
    Full,
    Local,
    Random,
    Streaming,
    full_keep_indices,
    h2o_keep_indices,
    local_keep_indices,
    make_policy,
    random_keep_indices,
    select_victims,
    split_budget,
    streaming_keep_indices,
)

__all__ = [
    "H2OCache", "StreamingCache", "LocalCache", "RandomCache", "KVBudgetCache", "make_cache",
    "parse_kv_budget", "enable", "disable", "enabled", "cache_kwargs", "SUPPORTED", "POLICIES",
    "attention_with_colsum", "attention_with_colsum_reference",
    "h2o_keep_indices", "streaming_keep_indices", "local_keep_indices", "random_keep_indices",
    "full_keep_indices", "split_budget", "H2O", "Streaming", "Local", "Random", "Full", "make_policy",
    "select_victims", "greedy_generate",
]
