"""The plan as files: ``fit_folder`` (model folder in, plan out), ``write_plan`` (dense model +
cache settings + plan JSON + candidates PNG), ``load_plan`` / ``generate`` (serve it).

``out/`` holds ``model/`` (a plain Hugging Face folder of the chosen sub-network), ``cache.json``
(``{"policy", "budget"}`` for ``anybudget.kv.make_cache``), ``plan.json`` and ``candidates.png``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from anybudget.plan.costs import Quality, ServingWorkload
from anybudget.plan.fit import Plan, check_budget, check_reachable, fit, load_elastic_folder

__all__ = ["fit_folder", "generate", "load_plan", "load_planned_model", "plot_candidates", "write_plan"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "generation_config.json")


def fit_folder(model_dir, budget, workload: ServingWorkload, text: str | os.PathLike | None = None,
               quality: Quality | None = None, device: str | None = None, policies=("h2o", "streaming", "local"),
               kv_percents=(50.0, 20.0, 10.0), techniques=("elastic", "kv"), max_trials: int = 5,
               quality_tokens: int = 256, quiet: bool = True, serve: str = "eager"):
    """``(plan, em)`` for a folder written by ``anybudget elastic build``.

    ``text``: held-out text for the quality data (default: the embedded held-out passage), or give
    ``quality`` measured before (e.g. ``Quality.from_dict(old_plan.quality)``). ``quality_tokens``:
    at most this many tokens per quality window (the workload's prompt + new tokens, both shrunk
    by the same factor when longer; ``plan.quality``). ``serve``: ``"eager"`` or ``"static"``
    (compiled fixed-slot caches on CUDA, ``plan.device``).
    """
    import torch

    from anybudget.plan.costs import _check_serve
    from anybudget.plan.device import decode_latency_model, static_latency_model
    from anybudget.plan.quality import measure_quality, quality_workload

    _check_serve(serve)  # before loading anything
    budget = check_budget(budget)
    em, _meta = load_elastic_folder(model_dir, device)
    if serve == "static":
        lat, calib = static_latency_model(em, workload, policies, kv_percents)
    else:
        lat, calib = decode_latency_model(em, workload, policies, min(kv_percents), calibrate=True)
    # before the quality data (the costly part) is measured; the error names the smallest memory and latency
    check_reachable(em, budget, workload, lat, policies, kv_percents, techniques)
    if quality is None:
        from transformers import AutoTokenizer

        path = Path(text) if text is not None else Path(__file__).resolve().parents[1] / "assets" / "reflm" / "sample.txt"
        tok = AutoTokenizer.from_pretrained(str(Path(model_dir) / "model"))
        ids = torch.tensor(tok(path.read_text(encoding="utf-8"))["input_ids"])
        qwl = quality_workload(workload, min(quality_tokens, ids.numel()))
        quality = measure_quality(em, ids, qwl, policies, kv_percents, static=serve == "static", quiet=quiet)
        if qwl is not workload:  # the protocol at the workload's shape, shrunk to the text (or quality_tokens)
            quality.source |= {"shrunk": True, "workload_prompt": workload.prompt, "workload_new_tokens": workload.new_tokens}
        quality.source["text"] = str(path)
    plan = fit(em, budget, workload, quality, lat, policies, kv_percents, techniques, max_trials,
               source=str(model_dir), quiet=quiet)
    plan.latency_model["calibration"] = calib
    return plan, em


def write_plan(plan: Plan, em, out, source_model_dir=None, png: bool = True) -> Path:
    """Write the dense sub-model, ``cache.json``, ``plan.json`` (atomic) and ``candidates.png`` to ``out``."""
    import torch

    from anybudget.io import atomic_write_json
    from anybudget.plan.device import export_candidate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dense = export_candidate(em, plan.candidate, dtype=getattr(torch, plan.workload["dtype"]))
    dense.save_pretrained(str(out / "model"))
    if source_model_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(source_model_dir) / name
            if src.is_file() and not (out / "model" / name).exists():
                shutil.copyfile(src, out / "model" / name)
    atomic_write_json(out / "cache.json", plan.cache_settings())
    plan.save(out / "plan.json")
    if png:
        plot_candidates(plan, out / "candidates.png")
    return out


def load_plan(plan_dir) -> Plan:
    p = Path(plan_dir) / "plan.json"
    if not p.is_file():
        raise FileNotFoundError(f"--plan {str(plan_dir)!r} has no plan.json; write one with `anybudget fit ... --out DIR`")
    return Plan.load(p)


def load_planned_model(plan_dir, device: str | None = None):
    """``(model, tokenizer, plan)``: the dense model (``anybudget.kv.enable``-d) and its plan; serve with
    ``model.generate(..., **anybudget.kv.cache_kwargs(model, plan.make_cache()))``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anybudget.kv import enable

    plan = load_plan(plan_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, plan.workload["dtype"])
    if dev.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # bf16 matmuls on the CPU are slow and not what a CPU plan measured
    model = AutoModelForCausalLM.from_pretrained(str(Path(plan_dir) / "model"), dtype=dtype).to(dev).eval()
    tok = AutoTokenizer.from_pretrained(str(Path(plan_dir) / "model"))
    return enable(model), tok, plan


def generate(plan_dir, prompt: str, max_new_tokens: int = 64, device: str | None = None, **gen) -> str:
    """Generate from a plan folder with its model and cache settings; returns the text."""
    import torch

    from anybudget.kv import cache_kwargs

    model, tok, plan = load_planned_model(plan_dir, device)
    enc = tok(prompt, return_tensors="pt").to(next(model.parameters()).device)
    gen.setdefault("do_sample", False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             **cache_kwargs(model, plan.make_cache(max_new_tokens)), **gen)
    return tok.decode(out[0], skip_special_tokens=True)


def plot_candidates(plan: Plan, path) -> Path | None:
    """Quality (predicted ppl) vs predicted memory, coloured by predicted latency; the budget drawn
    (memory: a line on the plot; latency: a line on the colour bar when inside its range)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from anybudget.budget import Budget
    from anybudget.io import atomic_path

    rows = plan.candidates
    b = Budget(plan.budget)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    mem = [r["mem"] / 2**20 for r in rows]
    ppl = [r["ppl"] for r in rows]
    lat = [(r["latency_s"] or 0.0) * 1e3 for r in rows]
    sc = ax.scatter(mem, ppl, c=lat, cmap="viridis", s=[28 if r["fits"] else 10 for r in rows],
                    marker="o", alpha=0.85)
    bar = fig.colorbar(sc, ax=ax, label="predicted ms per decoding step")
    for t in plan.trials:  # measured: a line from the predicted point to the measured memory
        r = next(r for r in rows if r["label"] == t["label"])
        x_meas = t["measured"]["peak_bytes"] / 2**20
        ax.plot([r["mem"] / 2**20, x_meas], [r["ppl"], r["ppl"]], color="gray", lw=0.8, zorder=2)
        ax.scatter([x_meas], [r["ppl"]], marker="*" if t["meets"] else "x", s=120,
                   color="black" if t["meets"] else "red", zorder=3)
    chosen = next(r for r in rows if r["label"] == plan.candidate.label)
    ax.annotate(f"chosen: {chosen['label']}", (chosen["mem"] / 2**20, chosen["ppl"]), textcoords="offset points",
                xytext=(8, 8), fontsize=8)
    if b.mem is not None:
        ax.axvline(b.mem.value / 2**20, color="red", ls="--", label=f"mem budget {b.mem}")
    if b.latency is not None:  # on the colour scale: dots coloured above the line are over it
        lo, hi = bar.ax.get_ylim()
        if lo <= b.latency.value * 1e3 <= hi:
            bar.ax.axhline(b.latency.value * 1e3, color="red", ls="--", lw=2)
        ax.plot([], [], color="red", ls="--", lw=2, label=f"latency budget {b.latency} (on the colour bar)")
        ax.scatter([], [], s=10, color="gray", label=f"small: predicted over latency={b.latency} or mem")
    ax.set_xlabel("peak memory (MiB): dots predicted, markers measured")
    ax.set_ylabel("predicted perplexity")
    ax.set_yscale("log")
    ax.set_title(f"anybudget fit: {plan.budget}; * measured plan, x measured and over budget", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)
