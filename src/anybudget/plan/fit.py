"""``fit``: the best candidate that fits a device budget, verified by measuring it, with fall-back.

1. enumerate candidates (uniform elastic sub-network x KV policy x KV budget, ``costs.py``);
2. predict memory, decode-step latency and perplexity of each;
3. order those predicted to fit by predicted perplexity (then memory);
4. export the first as a dense model, serve the workload with its cache on the device and measure;
   if the measurement breaks the budget, record it and try the next (at most ``max_trials``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from anybudget.budget import Budget, BudgetError
from anybudget.plan.costs import (
    Candidate,
    LatencyModel,
    Quality,
    ServingWorkload,
    enumerate_candidates,
    predict,
)

__all__ = ["NotElasticError", "Plan", "check_reachable", "fit", "fits", "load_elastic_folder", "predict_all"]

PLAN_KEYS = ("mem", "latency")
BUILD_HINT = "anybudget elastic build --model HF_FOLDER --text TRAIN.txt --out DIR"


class NotElasticError(ValueError):
    """The model folder was not written by ``anybudget elastic build``."""


def load_elastic_folder(model_dir, device: str | None = None):
    """``(ElasticLlama, build meta)`` of a folder written by ``anybudget elastic build``."""
    from anybudget.elastic.pipeline import load_elastic

    d = Path(model_dir)
    if not (d / "elastic.json").is_file() or not (d / "model" / "config.json").is_file():
        what = "a plain model folder" if (d / "config.json").is_file() else "not a model folder"
        raise NotElasticError(f"--model {str(d)!r} was not built by elastic ({what}: no elastic.json and model/); "
                              f"build it first: {BUILD_HINT}")
    em, _, _ = load_elastic(d, device=device)
    return em, json.loads((d / "elastic.json").read_text())


def check_budget(budget) -> Budget:
    b = budget if isinstance(budget, Budget) else Budget(budget)
    extra = [k for k in b if k not in PLAN_KEYS]
    if not b or extra:
        raise BudgetError(f"budget {b or 'empty'} must give mem=... (e.g. mem=6GiB), latency=... per token "
                          f"(e.g. latency=20ms) or both; {', '.join(extra) or 'nothing'} is not planned for")
    return b


def fits(numbers: dict, budget: Budget, mem_key: str, lat_key: str) -> bool:
    ok = True
    if budget.mem is not None:
        ok &= numbers[mem_key] is not None and numbers[mem_key] <= budget.mem.value
    if budget.latency is not None:
        ok &= numbers[lat_key] is not None and numbers[lat_key] <= budget.latency.value
    return bool(ok)


@dataclass
class Plan:
    """A fitted plan: the chosen candidate, its predicted and measured numbers, every trial made,
    and the runner-up table (the best ``table`` candidates predicted to fit, in order)."""

    budget: str
    workload: dict
    chosen: dict
    predicted: dict
    measured: dict
    trials: list
    table: list
    latency_model: dict
    quality: dict
    device: str
    assumptions: list = field(default_factory=list)
    source: str = ""
    candidates: list = field(default_factory=list)
    serve: str = "eager"

    @property
    def candidate(self) -> Candidate:
        return Candidate(**self.chosen)

    def cache_settings(self) -> dict:
        c = self.candidate
        out = {"policy": c.policy, "budget": c.kv_budget if c.policy != "full" else "100%"}
        if self.serve == "static":
            out |= {"static": True, "max_new_tokens": int(self.workload["new_tokens"])}
        return out

    def make_cache(self, max_new_tokens: int | None = None):
        """A fresh cache for one ``generate`` call (``anybudget.kv``); a static plan's fixed slots are
        sized for ``max_new_tokens`` (default the planned workload's); a full cache is a DynamicCache
        (for compiled decoding pass ``cache_implementation="static"`` to ``generate`` instead)."""
        from anybudget.plan.device import make_plan_cache

        n = max_new_tokens if max_new_tokens is not None else int(self.workload["new_tokens"])
        return make_plan_cache(self.candidate.policy, self.candidate.kv_budget, self.serve == "static", n)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def save(self, path) -> Path:
        from anybudget.io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> Plan:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))

    def format_table(self, rows: int = 8) -> str:
        head = f"{'':2}{'candidate':<28}{'pred MiB':>10}{'pred ms':>9}{'pred ppl':>10}{'meas MiB':>10}{'meas ms':>9}"
        lines = [f"plan for {self.budget} ({_wl_text(self.workload)}) on {self.device}", head]
        measured = {t["label"]: t for t in self.trials}
        for r in self.table[:rows]:
            t = measured.get(r["label"])
            mark = "->" if r["label"] == self.candidate.label else ("x " if t and not t["meets"] else "  ")
            if t:  # a step below timing resolution (few new tokens on a busy CPU) reads as ~0
                ms = t["measured"]["step_s"] * 1e3
                mm = f"{t['measured']['peak_bytes'] / 2**20:10.1f}" + (f"{ms:9.3f}" if ms > 0 else f"{'~0':>9}")
            else:
                mm = f"{'-':>10}{'-':>9}"
            lat = f"{r['latency_s'] * 1e3:9.3f}" if r["latency_s"] is not None else f"{'-':>9}"
            lines.append(f"{mark}{r['label']:<28}{r['mem'] / 2**20:10.1f}{lat}{r['ppl']:10.2f}{mm}")
        return "\n".join(lines)


def _wl_text(wl: dict) -> str:
    return f"prompt {wl['prompt']}, {wl['new_tokens']} new, batch {wl['batch']}, {wl['dtype']}"


def _reachable_error(budget: Budget, rows: list) -> BudgetError:
    lo_mem = min(rows, key=lambda r: r["mem"])
    msg = f"no candidate fits {budget}: the smallest memory reachable is mem={_mib(lo_mem['mem'])} ({lo_mem['label']})"
    lat_rows = [r for r in rows if r["latency_s"] is not None]
    if lat_rows:
        lo_lat = min(lat_rows, key=lambda r: r["latency_s"])
        msg += f", the smallest latency latency={lo_lat['latency_s'] * 1e3:.3f}ms ({lo_lat['label']})"
        if budget.mem is not None and budget.latency is not None:
            both = [r for r in lat_rows if r["mem"] <= budget.mem.value]
            if both:
                best = min(both, key=lambda r: r["latency_s"])
                msg += f"; within mem={budget.mem} the smallest latency is {best['latency_s'] * 1e3:.3f}ms"
    return BudgetError(msg)


def _mib(b: float) -> str:
    return f"{math.ceil(b / 2**20)}MiB"


def _scaled(budget: Budget, f: float) -> Budget:
    parts = {}
    if budget.mem is not None:
        parts["mem"] = max(1, int(budget.mem.value * f))
    if budget.latency is not None:
        parts["latency"] = f"{budget.latency.value * f}s"
    return Budget(parts)


def fused_scores(em) -> bool:
    """Whether kv's attention takes its Triton path on ``em``'s device (no float32 logits kept)."""
    import importlib.util

    return next(em.model.parameters()).device.type == "cuda" and importlib.util.find_spec("triton") is not None


def predict_all(em, workload: ServingWorkload, quality: Quality | None, latency_model: LatencyModel | None,
                policies=("h2o", "streaming", "local"), kv_percents=(50.0, 20.0, 10.0),
                techniques=("elastic", "kv"), serve: str | None = None, fused: bool | None = None) -> list[dict]:
    """Predicted numbers of every candidate (``ppl`` is None without ``quality``); ``serve`` defaults
    to the latency model's mode (eager without one); ``fused``: whether H2O's scores come from the
    Triton kernels (default: :func:`fused_scores` of ``em``'s device; a prediction for another
    device, made on the CPU, gives that device's)."""
    from anybudget.elastic import params_table

    fused = fused_scores(em) if fused is None else bool(fused)
    params = params_table(em)
    rows = []
    for c in enumerate_candidates(em.kv_choices, em.mlp_choices, policies, kv_percents, techniques):
        sub = em.uniform_choice(em.kv_choices.index(c.kv_groups), em.mlp_choices.index(c.mlp_width))
        q = quality if quality is not None else Quality({c.subnet_label: math.nan}, {c.kv_label: math.nan})
        r = predict(c, em.shape, int(params.cost(sub)), workload, latency_model, q, fused, serve)
        rows.append({"label": c.label, "candidate": c.__dict__.copy(), **r} | ({} if quality is not None else {"ppl": None}))
    return rows


def check_reachable(em, budget, workload: ServingWorkload, latency_model: LatencyModel | None = None,
                    policies=("h2o", "streaming", "local"), kv_percents=(50.0, 20.0, 10.0),
                    techniques=("elastic", "kv")) -> None:
    """Raise the BudgetError of :func:`fit` when no candidate is predicted to fit (before any quality is measured)."""
    budget = check_budget(budget)
    rows = predict_all(em, workload, None, latency_model, policies, kv_percents, techniques)
    if not any(fits(r, budget, "mem", "latency_s") for r in rows):
        raise _reachable_error(budget, rows)


def fit(em, budget, workload: ServingWorkload, quality: Quality, latency_model: LatencyModel | None = None,
        policies=("h2o", "streaming", "local"), kv_percents=(50.0, 20.0, 10.0), techniques=("elastic", "kv"),
        max_trials: int = 5, table_rows: int = 12, measure=None, source: str = "", margin: float = 0.02,
        quiet: bool = True, serve: str | None = None, compile_config=None, fused: bool | None = None) -> Plan:
    """Plan ``em`` (an ElasticLlama) for ``budget`` (``mem`` and/or per-token ``latency``) and ``workload``.

    ``quality``: measured data (``quality.measure_quality``); ``latency_model``: a fitted decode model
    (``device.decode_latency_model``), required for a latency budget. ``measure(dense_model, candidate,
    workload) -> {"step_s", "peak_bytes", ...}`` defaults to ``device.measure_candidate`` (tests inject
    one). ``margin`` in [0, 1): candidates predicted within ``(1 - margin)`` of the budget are tried
    first (head-room for timing noise; the measured check uses the budget itself), or, when there
    are none, those within the budget. ``serve``: ``"eager"`` or ``"static"`` (``device.py``; default
    the latency model's mode, eager without one); the plan records it and serves that way. Raises BudgetError when nothing is predicted to fit (naming
    the smallest memory and latency reachable) or when ``max_trials`` measured candidates all break
    the budget.
    """
    from anybudget.plan.device import export_candidate, measure_candidate

    budget = check_budget(budget)
    if budget.latency is not None and latency_model is None:
        raise BudgetError(f"budget {budget} has a latency; fit needs a latency model (plan.decode_latency_model)")
    if not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(f"max_trials={max_trials!r} must be an integer >= 1")
    import torch

    serve = serve or (latency_model.mode if latency_model is not None else "eager")
    if latency_model is not None and latency_model.mode != serve:
        raise ValueError(f"serve={serve!r} but the latency model was fitted for {latency_model.mode!r} serving")
    if measure is None:
        def measure(model, c, wl):
            return measure_candidate(model, c, wl, serve=serve, compile_config=compile_config)
    rows = predict_all(em, workload, quality, latency_model, policies, kv_percents, techniques, serve, fused)
    if not 0 <= margin < 1:
        raise ValueError(f"margin={margin!r} must be in [0, 1)")
    ok = [r for r in rows if fits(r, budget, "mem", "latency_s")]
    if not ok:
        raise _reachable_error(budget, rows)
    inner = _scaled(budget, 1 - margin)
    ok = [r for r in ok if fits(r, inner, "mem", "latency_s")] or ok
    ok.sort(key=lambda r: (r["ppl"], r["mem"], r["latency_s"] or 0.0))
    trials, chosen = [], None
    dtype = getattr(torch, workload.dtype)
    for r in ok[:max_trials]:
        c = Candidate(**r["candidate"])
        dense = export_candidate(em, c, dtype=dtype)
        m = measure(dense, c, workload)
        del dense
        meets = fits({"mem": m["peak_bytes"], "lat": m["step_s"]}, budget, "mem", "lat")
        trials.append({"label": c.label, "measured": m, "meets": meets})
        if not quiet:
            print(f"  measured {c.label}: {m['peak_bytes'] / 2**20:.1f} MiB, {m['step_s'] * 1e3:.3f} ms/step"
                  f" -> {'meets' if meets else 'breaks'} {budget}")
        if meets:
            chosen = r
            break
    if chosen is None:
        raise BudgetError(f"the {len(trials)} best candidates predicted to fit {budget} all broke it when measured "
                          f"({', '.join(t['label'] for t in trials)}); try a looser budget or max_trials > {max_trials}")
    dev = next(em.model.parameters()).device
    q_src = quality.source or {}
    protocol = (f" (new-token perplexity of {q_src['new_tokens']} tokens after {q_src['prompt']}-token prompts)"
                if "prompt" in q_src else "")
    latency_text = ("latency: per decoding step of the whole batch, compiled static caches; linear in the bytes a "
                    "step reads, fitted per cache kind from two compiled measurements on this device"
                    if serve == "static" else
                    "latency: per decoding step of the whole batch; elastic decode table at two cached lengths, linear "
                    "in the mean kept length, plus overheads fitted on this device")
    assumptions = [
        ("quality: ppl = ppl(sub-network, full cache) x ppl ratio of the KV policy/budget on the full model "
        f"(eviction adds the same NLL to every sub-network){protocol}; exact for full caches and for the full model"),
        latency_text,
        ("memory: analytic weights + KV allocation + one layer's prefill activations; measured on CUDA as "
        "max_memory_allocated (no CUDA context), on CPU as weights + cache tensors"),
    ]
    return Plan(str(budget), workload.__dict__.copy(), chosen["candidate"], {k: chosen[k] for k in
                ("weights", "kv_used", "kv_alloc", "activations", "mem", "latency_s", "ppl", "params")},
                trials[-1]["measured"], trials, ok[:table_rows],
                latency_model.to_dict() if latency_model is not None else {}, quality.to_dict(),
                torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", assumptions, str(source),
                [{"label": r["label"], "mem": r["mem"], "latency_s": r["latency_s"], "ppl": r["ppl"],
                  "fits": fits(r, budget, "mem", "latency_s")} for r in rows], serve)
