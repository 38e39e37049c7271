"""Measurements on the device at hand: a candidate's decode step and peak memory, and the decode
latency models (eager: elastic tables + fitted overheads; static: linear in bytes read, fitted from
compiled runs). The quality data are measured in ``quality.py``.

Serving modes (``serve``): ``"eager"`` runs ``generate`` with a DynamicCache or a dynamic-slot
``anybudget.kv`` cache; ``"static"`` with transformers' ``StaticCache`` (full) or a fixed-slot
cache (``static=True``), and on CUDA ``generate`` compiles the decoding step only (the prefill runs
eagerly; ``compile_config``, default :func:`default_compile_config`: inductor, reduce-overhead,
i.e. CUDA graphs, no autotuning). Off CUDA the static caches run eagerly (transformers compiles
only on accelerators), so the same code path runs in CPU tests.

Static shapes by default (``share_graphs=False``): each measured candidate (sub-network x cache
kind x KV budget) is compiled for its own shapes, as the one plan a user serves is compiled, in a
fresh dynamo state (``torch._dynamo.reset()`` first: no guard chain or CUDA-graph pool of earlier
candidates). Why (measured on the CPU with dynamo's counters, the reference LM's shapes, 8 layers,
h2o, batch 2, prompt 32, 6-8 new tokens; ``benchmarks/plan/compile_probe.py``): every mode
compiles one graph per frame (the decoding step) and never recompiles across decoding steps, but
*tracing* it with symbolic weight shapes (``share_graphs=True``: ``dynamic=True``, dynamic
parameter shapes, no duck sizing) took dynamo 85-99 s, 82-84 s of it in fake-tensor shape
propagation (sympy), against 7-12 s per candidate with static shapes; automatic dynamic
(``dynamic=None``) pays 70-100 s at each recompilation that makes weight sizes dynamic. With
inductor a static candidate compiled in 95 s, the shared graph not within 900 s. On an H200 the shared
graphs took 271 s (full) and 341 s (h2o) per cache kind, most of the fit grid's device time.

The planner's only contact with the two technique packages' running code is here and in
``fit.py``: an elastic sub-network is exported as a plain dense model, and served with a
``anybudget.kv`` cache through plain ``generate``, exactly as a user of the plan will.
"""

from __future__ import annotations

import copy
import gc
import time

import torch

from anybudget.plan.costs import Candidate, LatencyModel, ServingWorkload

__all__ = ["compile_settings", "decode_latency_model", "default_compile_config", "export_candidate", "make_plan_cache",
           "measure_candidate", "serve_generate", "static_latency_model"]


def make_plan_cache(policy: str, kv_budget: str, static: bool = False, max_new_tokens: int | None = None):
    """The cache a plan serves with: a fresh one per ``generate`` call (``static``: fixed slots sized
    for ``max_new_tokens``; a full cache is a DynamicCache, see :func:`hf_static_cache` for the static one)."""
    from anybudget.kv import make_cache

    if static and policy != "full":
        return make_cache(policy, kv_budget, static=True, max_new_tokens=max_new_tokens)
    return make_cache(policy, kv_budget)


def hf_static_cache(model, batch: int, max_len: int, mark_dynamic: bool | None = None):
    """transformers' StaticCache for ``batch`` rows of ``max_len`` tokens, allocated now, its batch
    and length dims marked dynamic (one compiled step for every shape; CUDA graphs per shape) when
    ``mark_dynamic`` (default: on CUDA). The kv serving benchmark's baseline is this cache too."""
    from transformers import StaticCache

    cfg = model.config
    p = next(model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cache = StaticCache(config=cfg, max_cache_len=max_len)
    cache.early_initialization(batch, cfg.num_key_value_heads, head_dim, p.dtype, p.device)
    if p.device.type == "cuda" if mark_dynamic is None else mark_dynamic:
        for layer in cache.layers:
            for t in (layer.keys, layer.values):
                torch._dynamo.maybe_mark_dynamic(t, 0)
                torch._dynamo.maybe_mark_dynamic(t, 2)
    return cache


def compile_settings(share_graphs: bool = True) -> dict:
    """Dynamo settings a static measurement runs under (``torch._dynamo.config.patch``, for its
    calls only): many shapes in one process never fall back to eager; ``share_graphs``: weight
    shapes are dynamic too (dynamo keeps parameters and nn.Module tensors static by default), so
    every sub-network with more than one KV group reuses one compiled step per cache kind (slow to
    compile: module doc; :func:`measure_candidate` defaults to ``share_graphs=False``)."""
    out = {"cache_size_limit": 256, "recompile_limit": 256, "accumulated_cache_size_limit": 4096,
           "accumulated_recompile_limit": 4096}
    if share_graphs:
        out |= {"force_parameter_static_shapes": False, "force_nn_module_property_static_shapes": False}
    import torch._dynamo.config as cfg

    return {k: v for k, v in out.items() if hasattr(cfg, k)}


def default_compile_config(share_graphs: bool = False):
    """transformers' ``CompileConfig`` (inductor, ``mode="reduce-overhead"``: CUDA graphs, no
    autotuning) with ``dynamic=False`` (static shapes: one graph per candidate), or
    ``dynamic=True`` when ``share_graphs`` (one graph per cache kind, slow to compile: module doc)."""
    from transformers import CompileConfig

    return CompileConfig(dynamic=bool(share_graphs))


def serve_generate(model, ids, mask, n: int, cache, compile_config=None, share_graphs: bool = False):
    """``model.generate`` greedy for exactly ``n`` new tokens with ``cache``, as a plan serves: the
    decoding step compiled by ``generate`` with ``compile_config`` when given (under
    :func:`compile_settings` and, when ``share_graphs``, no duck sizing: equal sizes, e.g. q_proj
    rows == hidden in the full model only, would otherwise be guarded on and split the graph).
    Returns the output ids (prompt + new tokens)."""
    from anybudget.kv import cache_kwargs

    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
              pad_token_id=pad, **cache_kwargs(model, cache))
    if compile_config is None:
        return model.generate(**kw)
    import torch.fx.experimental._config as fx_config

    with torch._dynamo.config.patch(**compile_settings(share_graphs)), fx_config.patch(use_duck_shape=not share_graphs):
        return model.generate(**kw, compile_config=compile_config)


def export_candidate(em, c: Candidate, dtype: torch.dtype | None = None):
    """The candidate's sub-network as a plain dense model (``anybudget.elastic.export``).

    The new model's random initialisation is skipped (every weight is then loaded from ``em``; the
    export checks that none is missing): it is most of an export's time on a CPU."""
    import contextlib

    from anybudget.elastic import LayerConfig, SubnetConfig, export

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        no_init_weights = contextlib.nullcontext
    sub = SubnetConfig((LayerConfig(c.kv_groups, c.mlp_width),) * em.num_layers)
    with no_init_weights():
        return export(em, sub, dtype=dtype)


def _cache_bytes(cache) -> tuple[int, int]:
    """(bytes of kept keys/values, bytes allocated by the cache's tensors) after a generate call."""
    used = cache.used_bytes() if hasattr(cache, "used_bytes") else None
    alloc, kv = 0, 0
    for layer in cache.layers:
        for name in ("keys", "values", "prio", "pos", "valid", "real_seen"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                alloc += t.numel() * t.element_size()
                if name in ("keys", "values"):
                    kv += t.numel() * t.element_size()
    return (kv if used is None else used), alloc


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@torch.no_grad()
def measure_candidate(model, c: Candidate, wl: ServingWorkload, repeat: int = 2, seed: int = 0, warmup: bool = True,
                      serve: str = "eager", compile_config=None, share_graphs: bool = False) -> dict:
    """Serve the workload once with ``model`` (a dense model, ``anybudget.kv.enable``-d here) and
    ``c``'s cache: per-step decode latency ``(T(new) - T(1)) / (new - 1)`` (fastest of ``repeat`` each)
    and memory. CUDA: ``peak_bytes`` = ``torch.cuda.max_memory_allocated`` over the call minus what
    other objects of the process hold (so: this model's weights + cache + activations; the CUDA
    context is not counted). CPU: no in-process peak exists, ``peak_bytes`` is the
    resident weights + the cache's allocated tensors at the end (``peak_kind`` says which).
    ``serve="static"`` (module doc): the warm-up call compiles (``warmup_s`` reports it); the
    static caches are reused across calls (their buffers keep the addresses the graphs recorded).
    ``compile_config``: default :func:`default_compile_config` (``share_graphs``) on CUDA, none
    elsewhere; one given off CUDA is used (transformers then needs
    ``compile_config._compile_all_devices = True``). Compiled calls run through
    :func:`serve_generate`; without ``share_graphs`` dynamo is reset first (module doc); the result
    says which (``compile``), how many graphs ran without CUDA graphs (``cudagraph_skips``) and
    how many frames were compiled after the warm-up, inside the timed runs (``timed_compiles``, 0)."""
    from anybudget.kv import disable, enable
    from anybudget.measure import model_bytes
    from anybudget.plan.costs import _check_serve

    _check_serve(serve)
    static = serve == "static"
    p = next(model.parameters())
    dev = p.device
    compiled = static and (dev.type == "cuda" or compile_config is not None)
    if compiled and not share_graphs:
        torch._dynamo.reset()  # a fresh compile state per candidate, as the one plan a user serves
    # what an earlier candidate left in reference cycles (its dense model, cache, compiled graphs) is
    # freed now: freed inside this call, it would be counted in ``other`` below and lower the peak
    # (an H200 grid measured a 24.6 MB peak for a model of 29 MB weights + 57 MB cache that way)
    gc.collect()
    if static and c.policy == "full":
        disable(model)  # transformers' own attention with its StaticCache (SDPA), as a user would serve it
    else:
        enable(model)
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(min(3, vocab - 1), vocab, (wl.batch, wl.prompt), generator=g).to(dev)
    mask = torch.ones_like(ids)

    # what the process holds besides this model, before any cache of this call exists (a static
    # cache outlives its generate calls: it must stay inside the measured peak)
    weights_all = model_bytes(model)
    other = torch.cuda.memory_allocated(dev) - weights_all if dev.type == "cuda" else 0
    cc = (compile_config or default_compile_config(share_graphs)) if compiled else None
    fixed = None
    if static:
        fixed = (hf_static_cache(model, wl.batch, wl.prompt + wl.new_tokens + 1, mark_dynamic=compiled and share_graphs)
                 if c.policy == "full" else make_plan_cache(c.policy, c.kv_budget, True, wl.new_tokens))

    def run(n):
        if fixed is not None and c.policy == "full":
            fixed.reset()  # generate does not reset a user's StaticCache; anybudget's restart themselves
        cache = fixed if fixed is not None else make_plan_cache(c.policy, c.kv_budget)
        _sync(dev)
        t0 = time.perf_counter()
        serve_generate(model, ids, mask, n, cache, cc, share_graphs)
        _sync(dev)
        return time.perf_counter() - t0, cache

    from torch._dynamo.utils import counters

    skips0 = counters["inductor"]["cudagraph_skips"]
    warm_s = 0.0
    if warmup:  # kernels, allocator, first-call paths; static: compilation and CUDA graph capture
        warm_s = run(4 if static else 2)[0]
    frames0 = counters["frames"]["total"]  # a frame compiled in the timed runs would be timed too
    t1s, tns, peak, cache = [], [], None, None
    for _ in range(repeat):
        t1s.append(run(1)[0])
        cache = None  # the previous call's eager cache must not stay alive into this call's peak
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        tn, cache = run(wl.new_tokens)
        tns.append(tn)
        if dev.type == "cuda":
            peak = max(peak or 0, torch.cuda.max_memory_allocated(dev) - other)
    # the fastest of each (noise only adds time); a difference of two noisy times can still dip below 0
    step = max(0.0, (min(tns) - min(t1s)) / (wl.new_tokens - 1))
    kv_used, kv_alloc = _cache_bytes(cache)
    weights = model_bytes(model, buffers=False)
    if static and c.policy == "full":
        enable(model)
    if peak is not None and peak < weights + kv_alloc:  # both live at the peak: the baseline moved
        raise RuntimeError(f"measured peak {peak} B of {c.label} is below its weights + cache ({weights + kv_alloc} B): "
                           f"memory held elsewhere in the process ({other} B before the call) was freed during it")
    return {"step_s": step, "peak_bytes": peak if peak is not None else weights + kv_alloc, "baseline": "gc",
            "peak_kind": "cuda_max_allocated" if peak is not None else "cpu_weights_plus_cache",
            "kv_used_bytes": kv_used, "kv_alloc_bytes": kv_alloc, "weights_bytes": weights,
            "serve": serve, "compiled": compiled, "warmup_s": warm_s,
            **({"compile": "shared" if share_graphs else "static",  # graphs inductor ran without CUDA graphs:
                "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips0,
                "timed_compiles": counters["frames"]["total"] - frames0} if compiled else {})}


def _decode_table(em, wl: ServingWorkload, ctx: int, warmup: int, repeat: int) -> dict:
    from anybudget.elastic import Workload, measure_latency_table

    t = measure_latency_table(em, Workload(batch=wl.batch, seq=ctx, mode="decode", dtype=wl.dtype),
                              warmup=warmup, repeat=repeat, per_layer=False)
    layer = {f"{g}/{w}": t.per_layer[0][a][m] for a, g in enumerate(t.kv_choices) for m, w in enumerate(t.mlp_choices)}
    return {"ctx": ctx, "fixed": t.fixed, "layer": layer}


def decode_latency_model(em, wl: ServingWorkload, policies=("h2o", "streaming", "local"), kv_percent: float = 10.0,
                         calibrate: bool = True, warmup: int = 3, repeat: int = 10, measure=None) -> tuple[LatencyModel, list]:
    """Decode tables of ``em`` (in ``wl.dtype`` on its device) at two cached lengths, then the overheads
    fitted from measured ``generate`` runs of the full model (full cache; each policy at ``kv_percent``).

    The same measurements fit the memory model's correction (``LatencyModel.mem_correction``, see
    :mod:`anybudget.plan.costs`) when the peak is measured on CUDA.
    Returns the model and the calibration measurements (``[{candidate, measured, core_s}]``).
    """
    from anybudget.elastic import ElasticLlama

    dtype = getattr(torch, wl.dtype)
    timed = em if next(em.model.parameters()).dtype == dtype else ElasticLlama(copy.deepcopy(em.model).to(dtype), em.space)
    hi_ctx = wl.prompt + wl.new_tokens
    lo_ctx = max(1, hi_ctx // 10)
    lo = _decode_table(timed, wl, lo_ctx, warmup, repeat)
    hi = _decode_table(timed, wl, hi_ctx, warmup, repeat)
    if timed is not em:
        del timed
    dev = next(em.model.parameters()).device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    lat = LatencyModel(em.num_layers, lo, hi, device=name)
    calib = []
    if not calibrate:
        return lat, calib
    full = (max(em.kv_choices), max(em.mlp_choices))
    measure = measure or measure_candidate
    dense = export_candidate(em, Candidate(*full), dtype=dtype)
    c0 = Candidate(*full)
    m0 = measure(dense, c0, wl)
    core0 = lat.core(c0, wl)
    if m0["step_s"] >= core0:
        lat.overhead_generate = m0["step_s"] - core0
    else:  # the layer-by-layer tables over-count (noise, a busy host): scale them to the measured whole
        lat.scale = m0["step_s"] / core0 if core0 > 0 else 1.0
    calib.append({"candidate": c0.label, "measured": m0, "core_s": core0})
    tried = [c0]
    for p in policies:
        c = Candidate(*full, p, float(kv_percent))
        m = measure(dense, c, wl)
        gap = m["step_s"] - lat.scale * lat.core(c, wl) - lat.overhead_generate
        lat.overhead_policy[p] = max(0.0, gap) / em.num_layers
        calib.append({"candidate": c.label, "measured": m, "core_s": lat.core(c, wl)})
        tried.append(c)
    del dense
    _fit_memory(lat, em, wl, tried, calib)
    return lat, calib


def _fit_memory(lat: LatencyModel, em, wl: ServingWorkload, tried: list, calib: list) -> None:
    """Per cache kind: measured CUDA peak minus the analytic memory (>= 0), at the full KV groups."""
    from anybudget.elastic import params_table
    from anybudget.plan.costs import memory_terms
    from anybudget.plan.fit import fused_scores

    fused = fused_scores(em)
    full_sub = em.uniform_choice(len(em.kv_choices) - 1, len(em.mlp_choices) - 1)
    params = int(params_table(em).cost(full_sub))
    lat.mem_groups = max(em.kv_choices)
    for c, row in zip(tried, calib):
        m = row["measured"]
        if m.get("peak_kind") != "cuda_max_allocated":
            continue
        pred = memory_terms(em.shape, params, c, wl, fused, lat.mode)["mem"]
        lat.mem_correction[c.policy] = max(0.0, float(m["peak_bytes"] - pred))
        row["predicted_mem_before_correction"] = pred


def static_latency_model(em, wl: ServingWorkload, policies=("h2o", "streaming", "local"), kv_percents=(50.0, 20.0, 10.0),
                         measure=None, compile_config=None) -> tuple[LatencyModel, list]:
    """The static serving latency model (``costs.py``): per cache kind, ``step = t0 + s * bytes read``
    through two measured points, the full model (full cache; a policy at its largest budget) and the
    smallest sub-network with more than one KV group (a policy at its smallest budget; compilers
    specialise size-1 dimensions, so one group would cost a compilation of its own), both served as the plan serves
    (``measure_candidate(serve="static")``: compiled on CUDA, eager elsewhere). A slope fitted below
    0 (noise, a step bound by kernel launches) is set to 0 and ``t0`` to the slower point.
    The full-model measurements fit the memory correction as :func:`decode_latency_model` does.
    Returns the model and the calibration measurements."""
    from anybudget.elastic import params_table
    from anybudget.plan.costs import step_bytes

    dtype = getattr(torch, wl.dtype)
    table = params_table(em)
    params = {f"{g}/{w}": int(table.cost(em.uniform_choice(a, m)))
              for a, g in enumerate(em.kv_choices) for m, w in enumerate(em.mlp_choices)}
    dev = next(em.model.parameters()).device
    lat = LatencyModel(em.num_layers, {}, {}, device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                       mode="static", step_inputs={"shape": dict(em.shape), "params": params})
    measure = measure or (lambda model, c, w: measure_candidate(model, c, w, serve="static", compile_config=compile_config))
    big = (max(em.kv_choices), max(em.mlp_choices))
    small = (min([g for g in em.kv_choices if g > 1] or em.kv_choices), min(em.mlp_choices))
    kinds = [("full", Candidate(*big), Candidate(*small))]
    kinds += [(p, Candidate(*big, p, float(max(kv_percents))), Candidate(*small, p, float(min(kv_percents)))) for p in policies]
    calib, tried_full = [], []
    for sub in (big, small):
        dense = export_candidate(em, Candidate(*sub), dtype=dtype)
        for kind, cb, cs in kinds:
            c = cb if sub == big else cs
            m = measure(dense, c, wl)
            b = step_bytes(em.shape, params[f"{c.kv_groups}/{c.mlp_width}"], c, wl)["total"]
            calib.append({"candidate": c.label, "kind": kind, "measured": m, "bytes": b})
            if sub == big:
                tried_full.append(c)
        del dense
    for kind, _, _ in kinds:
        (x0, y0), (x1, y1) = [(r["bytes"], r["measured"]["step_s"]) for r in calib if r["kind"] == kind]
        slope = (y1 - y0) / (x1 - x0) if x1 != x0 else 0.0
        if slope < 0:
            lat.linear[kind] = [max(y0, y1), 0.0]
        else:
            lat.linear[kind] = [y0 - slope * x0, slope]
    _fit_memory(lat, em, wl, tried_full, calib[:len(kinds)])
    return lat, calib
