"""anybudget.elastic: Flextron (Cai et al., ICML 2024) for Hugging Face Llama-family models.

    from anybudget import elastic
    em = elastic.make_elastic(model, calib_batches)            # importance + permutation, same weights
    elastic.train_elastic(em, elastic.TokenBatches(tokens, 8, 512))   # elastic distillation
    table = elastic.measure_latency_table(em, elastic.Workload(batch=8, seq=512))
    router, _ = elastic.train_static_router(em, table, held_out_windows)
    sub = elastic.export(em, elastic.route(em, "latency=20ms", router=router, table=table, uniform=True))
    # ours, beyond the paper: fit by measured latency, and keep the best of router vs uniform widths on held-out text
    pick = elastic.route(em, "latency=20ms", router=router, table=table, measure=time_it, calib=held_out_windows)
    sub.save_pretrained("small")                                 # a plain LlamaForCausalLM

Supported families: Llama, Mistral, Qwen2, Qwen3 (``SUPPORTED_FAMILIES``).
"""

from anybudget.elastic.api import make_elastic
from anybudget.elastic.data import TokenBatches, eval_windows, read_tokens
from anybudget.elastic.dynamic import (
    DynamicRouter,
    DynamicTrainConfig,
    dynamic_routing,
    train_dynamic_router,
)
from anybudget.elastic.evaluate import perplexity
from anybudget.elastic.export import export, uniform_cover
from anybudget.elastic.families import SUPPORTED_FAMILIES, UnsupportedModelError
from anybudget.elastic.importance import Importance, activation_importance, layer_importance
from anybudget.elastic.latency import (
    CostTable,
    Workload,
    measure_latency_table,
    memory_bytes,
    memory_table,
    param_count,
    params_table,
)
from anybudget.elastic.model import (
    ElasticLinear,
    ElasticLlama,
    ElasticSpace,
    LayerConfig,
    SubnetConfig,
)
from anybudget.elastic.permute import permute_by_importance
from anybudget.elastic.router import RouterTrainConfig, StaticRouter, route, train_static_router
from anybudget.elastic.surrogate import Surrogate
from anybudget.elastic.train import ElasticTrainConfig, train_elastic

__all__ = [
    "SUPPORTED_FAMILIES",
    "CostTable",
    "DynamicRouter",
    "DynamicTrainConfig",
    "ElasticLinear",
    "ElasticLlama",
    "ElasticSpace",
    "ElasticTrainConfig",
    "Importance",
    "LayerConfig",
    "RouterTrainConfig",
    "StaticRouter",
    "SubnetConfig",
    "Surrogate",
    "TokenBatches",
    "UnsupportedModelError",
    "Workload",
    "activation_importance",
    "dynamic_routing",
    "eval_windows",
    "export",
    "layer_importance",
    "make_elastic",
    "measure_latency_table",
    "memory_bytes",
    "memory_table",
    "param_count",
    "params_table",
    "permute_by_importance",
    "perplexity",
    "read_tokens",
    "route",
    "train_dynamic_router",
    "train_elastic",
    "train_static_router",
    "uniform_cover",
]
