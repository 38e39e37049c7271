"""anybudget.elastic: Flextron (Cai et al., ICML 2024) for Hugging Face Llama-family models.

    from anybudget import elastic
    em = elastic.make_elastic(model, calib_batches)          # importance + permutation, same weights
    elastic.train_elastic(em, batches)                         # elastic distillation (optional)
    table = elastic.measure_latency_table(em, elastic.Workload(batch=8, seq=512))
    router = elastic.train_static_router(em, table, batches)   # surrogate model + latency loss
    sub = elastic.export(em, elastic.route(em, "latency=20ms", router=router, table=table))
    sub.save_pretrained("small")                               # a plain LlamaForCausalLM
"""

from anybudget.elastic.api import make_elastic
from anybudget.elastic.families import SUPPORTED_FAMILIES, UnsupportedModelError
from anybudget.elastic.importance import Importance, activation_importance, layer_importance
from anybudget.elastic.model import (
    ElasticLinear,
    ElasticLlama,
    ElasticSpace,
    LayerConfig,
    SubnetConfig,
)
from anybudget.elastic.permute import permute_by_importance

__all__ = [
    "SUPPORTED_FAMILIES",
    "ElasticLinear",
    "ElasticLlama",
    "ElasticSpace",
    "Importance",
    "LayerConfig",
    "SubnetConfig",
    "UnsupportedModelError",
    "activation_importance",
    "layer_importance",
    "make_elastic",
    "permute_by_importance",
]
