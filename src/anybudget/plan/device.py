"""Measurements on the device at hand: a candidate's decode step and peak memory, the decode latency
model (elastic tables + fitted overheads), and the quality data (per sub-network, per KV budget).

The planner's only contact with the two technique packages' running code is here and in
``fit.py``: an elastic sub-network is exported as a plain dense model, and served with a
``anybudget.kv`` cache through plain ``generate``, exactly as a user of the plan will.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from anybudget.plan.costs import Candidate, LatencyModel, Quality, ServingWorkload

__all__ = ["decode_latency_model", "export_candidate", "make_plan_cache", "measure_candidate", "measure_quality"]


def make_plan_cache(policy: str, kv_budget: str):
    """The cache a plan serves with: a fresh one per ``generate`` call."""
    from anybudget.kv import make_cache

    return make_cache(policy, kv_budget)


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
def measure_candidate(model, c: Candidate, wl: ServingWorkload, repeat: int = 2, seed: int = 0, warmup: bool = True) -> dict:
    """Serve the workload once with ``model`` (a dense model, ``anybudget.kv.enable``-d here) and
    ``c``'s cache: per-step decode latency ``(T(new) - T(1)) / (new - 1)`` (fastest of ``repeat`` each)
    and memory. CUDA: ``peak_bytes`` = ``torch.cuda.max_memory_allocated`` over the call minus what
    other objects of the process hold (so: this model's weights + cache + activations; the CUDA
    context is not counted). CPU: no in-process peak exists, ``peak_bytes`` is the
    resident weights + the cache's allocated tensors at the end (``peak_kind`` says which)."""
    from anybudget.kv import cache_kwargs, enable
    from anybudget.measure import model_bytes

    enable(model)
    p = next(model.parameters())
    dev = p.device
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(min(3, vocab - 1), vocab, (wl.batch, wl.prompt), generator=g).to(dev)
    mask = torch.ones_like(ids)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    def run(n):
        cache = make_plan_cache(c.policy, c.kv_budget)
        _sync(dev)
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=pad, **cache_kwargs(model, cache))
        _sync(dev)
        return time.perf_counter() - t0, cache

    if warmup:
        run(2)  # kernels, allocator, first-call paths
    t1s, tns, peak, cache = [], [], None, None
    weights_all = model_bytes(model)
    other = torch.cuda.memory_allocated(dev) - weights_all if dev.type == "cuda" else 0
    for _ in range(repeat):
        t1s.append(run(1)[0])
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
    return {"step_s": step, "peak_bytes": peak if peak is not None else weights + kv_alloc,
            "peak_kind": "cuda_max_allocated" if peak is not None else "cpu_weights_plus_cache",
            "kv_used_bytes": kv_used, "kv_alloc_bytes": kv_alloc, "weights_bytes": weights}


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
        pred = memory_terms(em.shape, params, c, wl, fused)["mem"]
        lat.mem_correction["full" if c.policy == "full" else c.policy] = max(0.0, float(m["peak_bytes"] - pred))
        row["predicted_mem_before_correction"] = pred


@torch.no_grad()
def measure_quality(em, tokens, policies=("h2o", "streaming", "local"), kv_percents=(50.0, 20.0, 10.0),
                    seq: int = 256, batch: int = 8, max_tokens: int = 65_536, kv_seq: int = 256, kv_seqs: int = 4,
                    quiet: bool = True) -> Quality:
    """Perplexity of every uniform sub-network (full cache, ``anybudget.elastic.perplexity`` on windows
    of ``seq`` tokens, at most ``max_tokens``) and, on the full model, streaming perplexity with each
    policy at each budget over ``kv_seqs`` sequences of ``kv_seq`` tokens fed one token per step
    (``anybudget.kv.evaluate.streaming_nll``), as a ratio to the full cache on the same tokens."""
    from transformers import DynamicCache

    from anybudget.elastic import eval_windows, perplexity
    from anybudget.elastic.router import uniform_configs
    from anybudget.kv import enabled, make_cache
    from anybudget.kv.evaluate import streaming_nll

    tokens = torch.as_tensor(tokens).long().flatten()
    windows = eval_windows(tokens, seq, batch, max_tokens)
    elastic_ppl = {}
    for sub in uniform_configs(em):
        x = sub.layers[0]
        elastic_ppl[Candidate(x.kv_groups, x.mlp_width).subnet_label] = perplexity(em, windows, sub)
    n = min(kv_seqs, tokens.numel() // kv_seq)
    if n < 1:
        raise ValueError(f"tokens has {tokens.numel()} ids; the KV quality curve needs at least kv_seq={kv_seq}")
    dev = next(em.model.parameters()).device
    ids = tokens[: n * kv_seq].view(n, kv_seq).to(dev)
    kv_ratio = {}
    with em.use(None), enabled(em.model):
        base = streaming_nll(em.model, ids, DynamicCache(), chunk=kv_seq).mean()
        for p in policies:
            for f in kv_percents:
                c = Candidate(max(em.kv_choices), max(em.mlp_choices), p, float(f))
                nll = streaming_nll(em.model, ids, make_cache(p, c.kv_budget), chunk=1).mean()
                kv_ratio[c.kv_label] = math.exp(float(nll - base))
    src = {"windows_tokens": int(sum(w[:, 1:].numel() for w in windows)), "seq": seq, "kv_seq": kv_seq, "kv_seqs": n,
           "kv_full_ppl": math.exp(float(base))}
    return Quality(elastic_ppl, kv_ratio, src)
