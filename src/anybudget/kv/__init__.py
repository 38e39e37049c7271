"""anybudget.kv: keep the KV cache inside a budget (H2O heavy hitters, StreamingLLM sinks, ...).

    import anybudget.kv as kv
    kv.enable(model)
    out = model.generate(**inputs, past_key_values=kv.H2OCache(budget="20%"))
    # (recent transformers name the argument ``cache=``; kv.cache_kwargs(model, cache) picks the right one)
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
from anybudget.kv.hf import SUPPORTED, cache_kwargs, disable, enable, enabled
from anybudget.kv.policies import (
    POLICIES,
    full_keep_indices,
    h2o_keep_indices,
    local_keep_indices,
    random_keep_indices,
    split_budget,
    streaming_keep_indices,
)

__all__ = [
    "H2OCache", "StreamingCache", "LocalCache", "RandomCache", "KVBudgetCache", "make_cache",
    "parse_kv_budget", "enable", "disable", "enabled", "cache_kwargs", "SUPPORTED", "POLICIES",
    "attention_with_colsum", "attention_with_colsum_reference",
    "h2o_keep_indices", "streaming_keep_indices", "local_keep_indices", "random_keep_indices",
    "full_keep_indices", "split_budget",
]
