"""anybudget.nas: TE-NAS training-free architecture search on NAS-Bench-201, under a budget.

    from anybudget.nas import tenas_search, NB201Table
    result = tenas_search(seed=0, budget="flops=100M")
    print(result.arch_string, NB201Table.load("nats_bench.csv").accuracies(result.index))

Proxies are plain functions of ``(model, inputs)``: ``ntk_condition_number``, ``linear_regions``,
``naswot``, ``synflow``, ``snip``, ``grad_norm``.
"""

from anybudget.nas.benchmark import DATASETS, NB201Table, kendall_spearman
from anybudget.nas.cost import (
    Cost,
    arch_cost,
    count_flops,
    count_params,
    edge_costs,
    measure_latency,
)
from anybudget.nas.darts import DARTS_OPS, DartsGenotype, DartsSuperNet, darts_tenas_search
from anybudget.nas.network import NB201Network, arch_mask, mask_to_arch
from anybudget.nas.proxies import (
    grad_norm,
    init_model,
    linear_regions,
    naswot,
    ntk_condition_number,
    ntk_gram,
    num_params,
    snip,
    synflow,
)
from anybudget.nas.search import SearchResult, TENASConfig, rank_ops, tenas_search
from anybudget.nas.space import OPS, all_archs, arch_from_index, arch_index, format_arch, parse_arch

__all__ = [
    "DARTS_OPS",
    "DATASETS",
    "OPS",
    "Cost",
    "DartsGenotype",
    "DartsSuperNet",
    "NB201Network",
    "NB201Table",
    "SearchResult",
    "TENASConfig",
    "all_archs",
    "arch_cost",
    "arch_from_index",
    "arch_index",
    "arch_mask",
    "count_flops",
    "count_params",
    "darts_tenas_search",
    "edge_costs",
    "format_arch",
    "grad_norm",
    "init_model",
    "kendall_spearman",
    "linear_regions",
    "mask_to_arch",
    "measure_latency",
    "naswot",
    "ntk_condition_number",
    "ntk_gram",
    "num_params",
    "parse_arch",
    "rank_ops",
    "snip",
    "synflow",
    "tenas_search",
]
