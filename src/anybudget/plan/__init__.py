"""anybudget.plan: one device budget in, one deployable model out (``anybudget fit``).

The one module allowed to combine techniques: an elastic sub-network (``anybudget.elastic``,
Flextron) served with a KV-cache policy (``anybudget.kv``, H2O / StreamingLLM / local window) so
that a workload (prompt, new tokens, concurrent sequences) meets ``mem=...`` and/or a per-token
``latency=...`` on the device at hand, checked by measuring it::

    from anybudget import plan
    p, em = plan.fit_folder("elastic_out", "mem=6GiB,latency=20ms", plan.ServingWorkload(2048, 256, 8))
    plan.write_plan(p, em, "deploy", source_model_dir="elastic_out/model")
    print(plan.generate("deploy", "The device-mapper target"))

Models, costs and the quality assumption are stated in ``costs.py``; quality is measured on the
workload's own protocol (the new tokens' perplexity after a prefilled prompt, ``quality.py``), so
the check of a plan is the same measurement as the planner's inputs. ``serve="static"`` plans run
fixed-slot caches whose decoding ``generate`` compiles on CUDA (``device.py``).
"""

from anybudget.plan.api import (
    fit_folder,
    generate,
    load_plan,
    load_planned_model,
    plot_candidates,
    write_plan,
)
from anybudget.plan.costs import (
    Candidate,
    LatencyModel,
    Quality,
    ServingWorkload,
    enumerate_candidates,
    kept_tokens,
    memory_terms,
    predict,
)
from anybudget.plan.device import (
    decode_latency_model,
    export_candidate,
    measure_candidate,
    static_latency_model,
)
from anybudget.plan.fit import NotElasticError, Plan, fit, load_elastic_folder
from anybudget.plan.quality import (
    candidate_nll,
    measure_quality,
    measured_ppl,
    quality_windows,
    workload_nll,
)

__all__ = [
    "Candidate", "LatencyModel", "NotElasticError", "Plan", "Quality", "ServingWorkload", "candidate_nll",
    "decode_latency_model", "enumerate_candidates", "export_candidate", "fit", "fit_folder", "generate",
    "kept_tokens", "load_elastic_folder", "load_plan", "load_planned_model", "measure_candidate",
    "measure_quality", "measured_ppl", "memory_terms", "plot_candidates", "predict", "quality_windows",
    "static_latency_model", "workload_nll", "write_plan",
]
