"""Serving benchmark: budgeted KV caches against Hugging Face's fastest decoding, in one process.

Model: a Llama of 1.35B parameters with random bf16 weights (hidden 2048, 24 layers, 16 heads of
128, MHA, SwiGLU 5504, vocab 32000); speed does not depend on the weights. Greedy decoding of
``--new-tokens`` (128) tokens after prompts of 2k and 8k tokens, batch doubling until out of memory.

Rows (all through ``model.generate``; what a user writes):
  hf_static      transformers' StaticCache (transformers compiles the decoding step with
                 torch.compile, CUDA graphs): the baseline of every ratio; its batch and length dims
                 are marked dynamic like anybudget's slots (one compilation for all rows)
  hf_static_default  ``cache_implementation="static"`` with transformers' default compile
                 config (recompiled per shape), at each prompt's reference batch, right after the
                 pair above: it was 8% faster than hf_static at batch 64, 2k on an H200
                 (``kv_serving_runs/run6_*``), so the summary also gives H2O's step ratio against
                 whichever of the two was faster (``h2o20_over_fastest_hf_static_step_ratio_*``)
  hf_dynamic     DynamicCache + SDPA, no compilation
  ab_full        anybudget's attention with a DynamicCache (``kv.enable``), no compilation
  h2o / streaming / local at 20% and 10%: ``H2OCache("20%", static=True, max_new_tokens=128)``
                 etc., whose decoding steps transformers compiles like its static cache
  h2o_dynamic    ``H2OCache("20%")`` (dynamic slots) at batch 256, prompt 2k: plain use at 4x batch
  h2o_20_reduce  h2o_20 with its decoding step's q K^T and P V as fused reductions
                 (``decode_products="auto"``; the default is cuBLAS bmm): the A/B of that option,
                 last in the plan (``--rows hf_static,h2o_20,h2o_20_reduce`` to run it)
  h2o_20_triton  h2o_20 with its decoding step's attention and scores from the Triton decode kernel
                 as one custom op in the compiled graph (``decode_products="triton"``): the A/B
                 of that option, after h2o_20_reduce (``--rows hf_static,h2o_20,h2o_20_triton``)
  h2o_20_tritonop  the same kernels registered with ``torch.library.triton_op``
                 (``decode_products="triton_op"``): inductor emits the kernel launches into its
                 code, no Python wrapper per layer and step; after h2o_20_triton
  hf_static_loop / h2o_20_loop / h2o_20_loop_compiled: greedy decoding through
                 ``kv.greedy_generate`` (one CUDA graph per generation, no host sync per token)
                 instead of ``generate``; see ``serving_loop.py``; last in the plan

Each row also records the CUDA-graph skips and graphs compiled during it (inductor's counters;
``perf_hints`` logging prints a skip's reason), so a step that silently runs without CUDA graphs
shows in the record. ``--profile`` adds, per row, a profiled extra ``generate`` of a few decoding
steps (``step_profile.py``: GPU kernel time against wall time per step, CUDA-graph replays, host
kernel launches, re-captures and host calls of anybudget's custom ops per step) and the CUDA-graph
tree's recordings and warm-up runs during the warm-up and the timed call: whether a step replays
one graph or runs on the host, and where its time goes.

Decode ms/step: CUDA events recorded at every generated token (a logits processor), (last -
first) / (n - 1): the same quantity as (T(n+1 new) - T(1 new)) / n without a second prefill.
End-to-end tok/s: batch x new tokens / wall time of the whole call. The warm-up call (which
compiles and records the CUDA graphs) is excluded and reported as ``warmup_s``. Bandwidth limit:
bytes one step must read (weights except the embedding, keys and values, and for budgeted caches
their per-slot score/position/validity) over the copy bandwidth measured at the start of the run.

A wall-clock guard (``--minutes``, ``row_guard.py``) skips rows that would not finish and lists
them in the record and in its summary (``skipped_rows``): a row's first batch is expected to
compile as long as the longest warm-up seen so far in the run (at least ``--compile-s``), and a
warm-up still compiling when the budget is spent (or past ``--warmup-cap``) is stopped and the row
listed as skipped. ``--rows`` runs its rows in the given order: the row that must run goes first.
The JSON is rewritten after every row, so a killed run still leaves its results.

Usage (GPU):  python benchmarks/kv/serving.py --out $OUT          (about 8 minutes on an H100)
              python benchmarks/kv/serving.py --out $OUT --name kv_serving_triton_ab --rows h2o_20,h2o_20_triton \
                  --prompts 2048 --no-sweep --profile --minutes 8   (the Triton op's A/B, profiled: ~5.5 min
                  when the host's CPUs are free; each row's compile took 121-255 s on an H200)
              python benchmarks/kv/serving.py --out $OUT --name kv_serving_tritonop_ab --rows h2o_20_tritonop,h2o_20,h2o_20_triton \
                  --prompts 2048 --no-sweep --profile --minutes 7   (triton_op first: the rows that do not fit are listed)
              python benchmarks/kv/serving.py --out $OUT --name kv_serving_loop --rows \
                  h2o_20_loop,hf_static_loop,hf_static,h2o_20_loop_compiled --prompts 8192,2048 --no-sweep --minutes 7.5
                  (the captured loop against generate; the eager loop rows compile nothing)
              python benchmarks/kv/serving.py --smoke --out /tmp/x  (CPU, seconds)
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

from anybudget import kv
from anybudget.io import results_dir, write_results
from anybudget.plan.device import compile_settings, hf_static_cache

ROOT = Path(__file__).resolve().parents[2]


def _sibling(name: str):
    """A module of benchmarks/kv/ (not a package) by file name."""
    spec = importlib.util.spec_from_file_location(f"kv_{name}", ROOT / "benchmarks" / "kv" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _step_profile():
    return _sibling("step_profile")

GiB = 2**30
CUDA = torch.cuda.is_available()
BUDGET_ROWS = [("h2o", "20%"), ("h2o", "10%"), ("streaming", "20%"), ("streaming", "10%"),
               ("local", "20%"), ("local", "10%")]


def build_model(smoke: bool, max_pos: int, layers: int = 24):
    """The serving model (random bf16 weights; ``layers`` deep) or, with ``smoke``, a tiny float32 one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 100} if smoke else
            {"hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": layers, "num_attention_heads": 16,
             "num_key_value_heads": 16, "vocab_size": 32000})
    cfg = LlamaConfig(max_position_embeddings=max_pos, **dims)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda" if CUDA else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.float32 if smoke else torch.bfloat16).eval()
    model.generation_config.pad_token_id = 0
    return model, cfg


def cleanup(model=None):
    if model is not None and hasattr(model, "_cache"):
        del model._cache  # transformers keeps its static cache on the model between calls
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


def copy_bandwidth(smoke: bool) -> float:
    """Bytes per second of a device-to-device copy (read + write), best of 10."""
    n = (1 << 20) if smoke else (1 << 30)
    a = torch.empty(n, dtype=torch.uint8, device="cuda" if CUDA else "cpu")
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(10):
        if CUDA:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        b.copy_(a)
        if CUDA:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n / best


class StepClock:
    """A logits processor that timestamps every generated token (CUDA events: no host sync)."""

    def __init__(self):
        self.marks = []

    def __call__(self, input_ids, scores):
        if CUDA:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())
        return scores

    def step_ms(self) -> float:
        if len(self.marks) < 2:
            return float("nan")
        if CUDA:
            torch.cuda.synchronize()
            return self.marks[0].elapsed_time(self.marks[-1]) / (len(self.marks) - 1)
        return (self.marks[-1] - self.marks[0]) * 1e3 / (len(self.marks) - 1)


def make_cache(row: str, P: int, N: int):
    if row in ("hf_static", "hf_static_default", "hf_dynamic", "ab_full"):
        from transformers import DynamicCache

        return None if row.startswith("hf_static") else DynamicCache()
    if row == "h2o_dynamic":
        return kv.H2OCache("20%")
    policy, pct, *variant = row.split("_")
    # h2o_20_reduce: fused reductions while compiled ("auto"); h2o_20_triton: the Triton decode op
    products = {(): None, ("reduce",): "auto", ("triton",): "triton", ("tritonop",): "triton_op"}[tuple(variant)]
    return kv.make_cache(policy, f"{pct}%", static=True, max_new_tokens=N, decode_products=products)


def kv_bytes_per_step(row, cfg, B, P, N, cache) -> float:
    """Bytes of keys and values (and slot metadata) one decoding step reads, all layers."""
    H, D, Lyr = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads, cfg.num_hidden_layers
    if row.startswith("hf_static"):
        slots, extra = P + N + 1, 0  # SDPA reads the whole static cache (masked)
    elif row in ("hf_dynamic", "ab_full"):
        slots, extra = P + N / 2, 0
    elif row == "h2o_dynamic":
        slots, extra = cache.layers[0].length, 4 * 2 + 8 + 1
    else:
        slots, extra = cache.layers[0].capacity + 1, 4 * 2 + 8 + 1  # score r/w, position, validity
    return Lyr * B * H * slots * (2 * D * 2 + extra)


def estimate_cache_gib(row, cfg, B, P, N) -> float:
    H, D, Lyr = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads, cfg.num_hidden_layers
    if row.startswith(("hf", "ab")):
        slots = P + N + 1
    else:
        pct = 0.2 if row == "h2o_dynamic" else int(row.split("_")[1]) / 100
        slots = int(pct * (P + N)) + 2
    return Lyr * B * H * slots * (2 * D * 2 + 17) / GiB


def run_row(model, cfg, row, B, P, N, bw, compile_config, weight_bytes, static_shapes=False, profile=False,
            warm_cap=None, guard=None):
    """One (row, batch, prompt) measurement. ``warm_cap``: seconds the warm-up call (compile +
    CUDA-graph recording) may take (``row_guard.warmup_limit``: ``WarmupCapped`` past it)."""
    if row.endswith(("_loop", "_loop_compiled")):  # kv.greedy_generate instead of generate
        res, cache = _sibling("serving_loop").run_loop_row(model, cfg, row, B, P, N, warm_cap, guard or _sibling("row_guard"))
        read = weight_bytes + kv_bytes_per_step(row, cfg, B, P, N, cache)
        res.update(bytes_read_per_step=read, bandwidth_limit_ms_per_step=read / bw * 1e3,
                   fraction_of_bandwidth_limit=read / bw * 1e3 / res["decode_ms_per_step"])
        del cache
        cleanup(model)
        return res
    g = torch.Generator().manual_seed(B * 7 + P)
    dev = model.device
    ids = torch.randint(1, cfg.vocab_size, (B, P), generator=g).to(dev)
    mask = torch.ones_like(ids)
    gen = {"input_ids": ids, "attention_mask": mask, "do_sample": False, "min_new_tokens": N}
    if compile_config is not None and row != "hf_static_default":
        gen["compile_config"] = compile_config
    if (row == "hf_static" and static_shapes) or row == "hf_static_default":
        gen.update(cache_implementation="static", max_cache_len=P + N + 1)
    if row.startswith("hf"):
        kv.disable(model)
    else:
        kv.enable(model)
    # transformers' StaticCache sized as cache_implementation="static" sizes it, batch and length
    # dims dynamic like anybudget's slots (``--static-shapes`` uses cache_implementation itself)
    cache = (hf_static_cache(model, B, P + N + 1, mark_dynamic=True) if row == "hf_static" and not static_shapes
             else make_cache(row, P, N))
    if cache is not None:
        gen.update(kv.cache_kwargs(model, cache))
    from torch._dynamo.utils import counters

    skips0, graphs0 = counters["inductor"]["cudagraph_skips"], counters["stats"]["unique_graphs"]
    sp = _step_profile() if profile else None
    trees = [sp.cudagraph_tree_counts()] if profile else []

    def fresh_cache(static_cache):  # before each timed or profiled generate
        if row in ("hf_dynamic", "ab_full"):
            gen.update(kv.cache_kwargs(model, make_cache(row, P, N)))
        elif row == "hf_static" and static_cache is not None:
            static_cache.reset()  # a user's StaticCache is not reset by generate; anybudget's caches restart themselves

    guard = guard or _sibling("row_guard")
    with torch.no_grad():
        t0 = time.perf_counter()
        with guard.warmup_limit(warm_cap):
            model.generate(**{**gen, "min_new_tokens": 4}, max_new_tokens=4)  # compile + CUDA graph capture
        if CUDA:
            torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        trees += [sp.cudagraph_tree_counts()] if profile else []
        fresh_cache(cache)
        clock = StepClock()
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = model.generate(**gen, max_new_tokens=N, logits_processor=[clock])
        if CUDA:
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
        if profile:  # a few more steps under the profiler (not part of the timings above)
            trees.append(sp.cudagraph_tree_counts())
            fresh_cache(cache)
            ps = sp.ProfileSteps()
            model.generate(**{**gen, "min_new_tokens": ps.stop}, max_new_tokens=ps.stop, logits_processor=[ps])
            prof = sp.summarize_profile(ps)
            prof["cudagraph_tree_warmup_call"] = sp.counts_delta(trees[0], trees[1])
            prof["cudagraph_tree_timed_call"] = sp.counts_delta(trees[1], trees[2])
    step = clock.step_ms()
    read = weight_bytes + kv_bytes_per_step(row, cfg, B, P, N, cache)
    limit_ms = read / bw * 1e3
    res = {"row": row, "batch": B, "prompt": P, "new_tokens": out.shape[1] - P, "decode_ms_per_step": step,
           "decode_tok_per_s": B / step * 1e3, "end_to_end_tok_per_s": B * N / total, "total_s": total,
           "warmup_s": warm, "peak_gib": torch.cuda.max_memory_allocated() / GiB if CUDA else None,
           "bytes_read_per_step": read, "bandwidth_limit_ms_per_step": limit_ms,
           "fraction_of_bandwidth_limit": limit_ms / step,
           "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips0,
           "graphs_compiled": counters["stats"]["unique_graphs"] - graphs0}
    if profile:
        res["profile"] = prof
    del out, cache, ids
    cleanup(model)
    return res


def plan(prompts, smoke, do_sweep=True, sweep_batches=None):
    """(row, prompt, batches) in priority order: the compared pair at the reference batch of each
    prompt, plain use at a large batch, the pair's batch sweeps (doubling until out of memory,
    the reference batch not repeated; left out with ``do_sweep=False``; ``sweep_batches`` replaces
    the doubling with the given batches), then the other rows at the reference batch."""
    start = {p: (1 if smoke else (8 if p <= 2048 else 4)) for p in prompts}
    cap = 2 if smoke else 1024
    ref = {p: (2 if smoke else (64 if p <= 2048 else 16)) for p in prompts}

    def sweep(p):
        if sweep_batches:
            return list(sweep_batches)
        return [b for b in (start[p] * 2**i for i in range(12)) if b <= cap]

    jobs = [(r, p, [ref[p]]) for p in prompts for r in ("hf_static", "h2o_20", "hf_static_default")]
    jobs += [("h2o_dynamic", prompts[0], [4 if smoke else 256])]
    jobs += [(r, p, sweep(p)) for p in prompts for r in ("hf_static", "h2o_20") if do_sweep]
    jobs += [(r, p, [ref[p]]) for p in prompts for r in ("hf_dynamic", "ab_full")]
    jobs += [(f"{pol}_{pct[:-1]}", p, [ref[p]]) for p in prompts for pol, pct in BUDGET_ROWS if (pol, pct) != ("h2o", "20%")]
    jobs += [(r, p, sweep(p) if do_sweep else [ref[p]]) for r in ("h2o_20_reduce", "h2o_20_triton", "h2o_20_tritonop")
             for p in prompts]
    jobs += [(r, p, sweep(p) if do_sweep else [ref[p]]) for r in _sibling("serving_loop").ROWS for p in prompts]
    return jobs, ref


def summarize(rows, prompts, ref, skipped=None):
    ok = [r for r in rows if "decode_ms_per_step" in r]

    def get(row, p, b):
        return next((r for r in ok if r["row"] == row and r["prompt"] == p and r["batch"] == b), None)

    s = {"ratio_definition": "HF static+compile over the row: step ratios are HF ms/step / row ms/step, "
                             "throughput ratios row tok/s / HF tok/s (> 1: the budgeted cache is faster)"}
    for p in prompts:
        hf = get("hf_static", p, ref[p])
        for b in sorted({r["batch"] for r in ok if r["prompt"] == p}):  # every batch both ran at
            x, y = get("hf_static", p, b), get("h2o_20", p, b)
            if x and y:
                s[f"h2o20_over_hf_static_step_ratio_b{b}_p{p}"] = x["decode_ms_per_step"] / y["decode_ms_per_step"]
        for b in sorted({r["batch"] for r in ok if r["prompt"] == p}):
            for variant in ("reduce", "triton", "tritonop", "loop", "loop_compiled"):  # the A/B of a decode_products option against matmul
                x, y, z = get("h2o_20", p, b), get(f"h2o_20_{variant}", p, b), get("hf_static", p, b)
                if x and y and not variant.startswith("loop"):  # the loop rows change the loop too: see below
                    s[f"h2o20_{variant}_over_matmul_step_ratio_b{b}_p{p}"] = x["decode_ms_per_step"] / y["decode_ms_per_step"]
                t = get("h2o_20_triton", p, b)  # same products (triton), generate's loop against the captured one
                if variant.startswith("loop") and t and y:
                    s[f"h2o20_{variant}_over_h2o20_triton_step_ratio_b{b}_p{p}"] = t["decode_ms_per_step"] / y["decode_ms_per_step"]
                if y and z:
                    s[f"h2o20_{variant}_over_hf_static_step_ratio_b{b}_p{p}"] = (
                        z["decode_ms_per_step"] / y["decode_ms_per_step"])
                if y:
                    s[f"h2o20_{variant}_fraction_of_bandwidth_limit_b{b}_p{p}"] = y["fraction_of_bandwidth_limit"]
            x, y = get("hf_static_loop", p, b), get("hf_static", p, b)  # the loop's own gain, full cache
            if x and y:
                s[f"hf_static_loop_over_hf_static_step_ratio_b{b}_p{p}"] = y["decode_ms_per_step"] / x["decode_ms_per_step"]
            for variant in ("loop", "loop_compiled"):  # H2O and the full cache through the same loop
                x, y = get(f"h2o_20_{variant}", p, b), get("hf_static_loop", p, b)
                if x and y:
                    s[f"h2o20_{variant}_over_hf_static_loop_step_ratio_b{b}_p{p}"] = (
                        y["decode_ms_per_step"] / x["decode_ms_per_step"])
        for pol, pct in BUDGET_ROWS:
            r = get(f"{pol}_{pct[:-1]}", p, ref[p])
            if hf and r:
                s[f"{pol}{pct[:-1]}_over_hf_static_step_ratio_b{ref[p]}_p{p}"] = hf["decode_ms_per_step"] / r["decode_ms_per_step"]
        best = {}  # each row at the largest batch it ran (its sweep's last before out of memory)
        for row in ("hf_static", "hf_static_loop", "h2o_20", "h2o_20_loop", "h2o_20_loop_compiled"):
            mine = [r for r in ok if r["row"] == row and r["prompt"] == p]
            if mine:
                best[row] = max(mine, key=lambda r: r["batch"])
        if "hf_static" in best and "h2o_20" in best:
            a, b = best["h2o_20"], best["hf_static"]
            s[f"h2o20_over_hf_static_throughput_ratio_max_batch_p{p}"] = a["decode_tok_per_s"] / b["decode_tok_per_s"]
            s[f"h2o20_over_hf_static_end_to_end_throughput_ratio_max_batch_p{p}"] = (
                a["end_to_end_tok_per_s"] / b["end_to_end_tok_per_s"])
            s[f"max_batch_p{p}"] = {"h2o_20": a["batch"], "hf_static": b["batch"]}
            s[f"h2o20_fraction_of_bandwidth_limit_max_batch_p{p}"] = a["fraction_of_bandwidth_limit"]
        for variant in ("loop", "loop_compiled"):  # the captured loop at its largest batch
            a = best.get(f"h2o_20_{variant}")
            for base in ("hf_static", "hf_static_loop"):
                b = best.get(base)
                if a and b:
                    s[f"h2o20_{variant}_over_{base}_throughput_ratio_max_batch_p{p}"] = (
                        a["decode_tok_per_s"] / b["decode_tok_per_s"])
                    s[f"h2o20_{variant}_over_{base}_end_to_end_throughput_ratio_max_batch_p{p}"] = (
                        a["end_to_end_tok_per_s"] / b["end_to_end_tok_per_s"])
                    s.setdefault(f"max_batch_p{p}", {}).update({f"h2o_20_{variant}": a["batch"], base: b["batch"]})
            if a:
                s[f"h2o20_{variant}_fraction_of_bandwidth_limit_max_batch_p{p}"] = a["fraction_of_bandwidth_limit"]
        a, d, h = get("hf_static", p, ref[p]), get("hf_static_default", p, ref[p]), get("h2o_20", p, ref[p])
        if a and d:
            s[f"hf_static_dynamic_dims_over_default_step_ratio_b{ref[p]}_p{p}"] = (
                d["decode_ms_per_step"] / a["decode_ms_per_step"])
        if h and (a or d):  # against whichever HF static compile was faster here (the user's best choice)
            fastest = min((r for r in (a, d) if r), key=lambda r: r["decode_ms_per_step"])
            s[f"h2o20_over_fastest_hf_static_step_ratio_b{ref[p]}_p{p}"] = (
                fastest["decode_ms_per_step"] / h["decode_ms_per_step"])
            s[f"fastest_hf_static_b{ref[p]}_p{p}"] = fastest["row"]
    plain = [r for r in rows if r["row"] == "h2o_dynamic"]
    if plain:
        s["h2o20_plain_generate_large_batch"] = {k: plain[0].get(k) for k in ("batch", "prompt", "decode_ms_per_step", "oom", "error")}
    if skipped:  # in the headline, so a row that did not run is not silently missing
        s["skipped_rows"] = "; ".join(f"{k['row']} b{k['batch']} p{k['prompt']}: {k['why']}" for k in skipped)
    return s


def plot(rows, prompts, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib missing: pip install 'anybudget[plot]'"
    fig, axes = plt.subplots(1, len(prompts), figsize=(6 * len(prompts), 4.5), squeeze=False)
    for ax, p in zip(axes[0], prompts):
        for row in sorted({r["row"] for r in rows if r["prompt"] == p}):
            pts = sorted((r["batch"], r["decode_tok_per_s"]) for r in rows
                         if r["row"] == row and r["prompt"] == p and "decode_tok_per_s" in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=row)
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="decode tokens/s", title=f"prompt {p}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from anybudget.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(results_dir("kv_serving")))
    ap.add_argument("--name", default="kv_serving")
    ap.add_argument("--prompts", default=None, help="comma list (default 2048,8192; smoke 16,32)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 128 (smoke 6)")
    ap.add_argument("--minutes", type=float, default=7.5, help="wall-clock guard for the whole run")
    ap.add_argument("--static-shapes", action="store_true",
                    help="transformers' defaults: cache_implementation='static' and its default compile config "
                         "(recompiles for every batch and length) instead of dynamic batch/length dims")
    ap.add_argument("--no-sweep", action="store_true",
                    help="every row at its reference batch only (no batch doubling): the other policies in one call")
    ap.add_argument("--sweep-batches", default=None,
                    help="comma list of batches that replaces the doubling sweep (e.g. 256,512,1024: the largest "
                         "batches only, where each new batch of a compiled row recompiles)")
    ap.add_argument("--rows", default=None,
                    help="comma list of rows to run, in this order (default all, in priority order): put the row "
                         "that must run first")
    ap.add_argument("--compile-s", type=float, default=None,
                    help="seconds a row's first batch is expected to compile before any has been measured in the "
                         "run (default 180; smoke 0); then the longest warm-up seen is used")
    ap.add_argument("--timed-s", type=float, default=None, help="seconds of a row's timed part (default 30; smoke 0)")
    ap.add_argument("--warmup-cap", type=float, default=None,
                    help="most seconds one row's compile warm-up may take (default: the time left before the "
                         "--minutes deadline, less --timed-s); a row past it is skipped with a note")
    ap.add_argument("--notes", default=None, help="free text stored in the record's config (e.g. the host's load)")
    ap.add_argument("--output-code", action="store_true",
                    help="log inductor's generated code (TORCH_LOGS=output_code): the source of the kernels the "
                         "--profile tables name")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU: the same code path in seconds")
    ap.add_argument("--profile", action="store_true",
                    help="per row, a profiled extra generate: kernels, launches and CUDA-graph replays per step")
    ap.add_argument("--layers", type=int, default=24,
                    help="decoder layers of the serving model (default 24: 1.35B; fewer compile faster; --smoke: 2)")
    args = ap.parse_args(argv)
    if args.layers < 1:
        raise SystemExit(f"error: --layers {args.layers}: must be >= 1")
    sweep_batches = None
    if args.sweep_batches:
        try:
            sweep_batches = sorted({int(x) for x in args.sweep_batches.split(",")})
        except ValueError:
            raise SystemExit(f"error: --sweep-batches {args.sweep_batches!r}: a comma list of integers >= 1") from None
        if sweep_batches[0] < 1:
            raise SystemExit(f"error: --sweep-batches {args.sweep_batches!r}: batches must be >= 1")
    t_start = time.time()
    deadline = t_start + args.minutes * 60
    prompts = [int(x) for x in (args.prompts or ("16,32" if args.smoke else "2048,8192")).split(",")]
    N = args.new_tokens or (6 if args.smoke else 128)
    if not CUDA and not args.smoke:
        raise SystemExit("error: no CUDA device; use --smoke on a CPU")
    for knob, value in compile_settings(share_graphs=False).items():  # many shapes in one process: never eager
        setattr(torch._dynamo.config, knob, value)
    if CUDA:  # why a graph runs without CUDA graphs, in the log; --profile: the CUDA-graph trees' recordings,
        # warm-up / eager runs, re-recordings and static inputs too
        torch._logging.set_logs(perf_hints=True, output_code=args.output_code,
                                **({"cudagraphs": True, "cudagraph_static_inputs": True} if args.profile else {}))
    from transformers import CompileConfig

    # One compilation per path serves every batch and length (CUDA graphs are still recorded per
    # shape); transformers' default reaches the same after its first recompilation.
    compile_config = None if args.static_shapes else CompileConfig(dynamic=True)
    if args.smoke:  # transformers compiles only on accelerators; force it, with the cheap eager backend
        compile_config = CompileConfig(backend="eager")
        compile_config._compile_all_devices = True
    model, cfg = build_model(args.smoke, max(prompts) + N + 8, args.layers)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    bw = copy_bandwidth(args.smoke)
    total_mem = torch.cuda.get_device_properties(0).total_memory / GiB if CUDA else 1e9
    jobs, ref = plan(prompts, args.smoke, do_sweep=not args.no_sweep, sweep_batches=sweep_batches)
    if args.rows:  # the given rows in the given order (each row's prompts in plan order)
        order = args.rows.split(",")
        unknown = sorted(set(order) - {j[0] for j in jobs})
        if unknown:
            raise SystemExit(f"error: --rows {','.join(unknown)}: not rows of the plan ({', '.join(dict.fromkeys(j[0] for j in jobs))})")
        jobs = sorted((j for j in jobs if j[0] in order), key=lambda j: order.index(j[0]))
    guard = _sibling("row_guard")
    compile_s = args.compile_s if args.compile_s is not None else (0.0 if args.smoke else 180.0)
    timed_s = args.timed_s if args.timed_s is not None else (0.0 if args.smoke else 30.0)
    rows, skipped = [], []
    config = {"model": "LlamaForCausalLM, random weights", "params": sum(p.numel() for p in model.parameters()),
              "dtype": str(model.dtype), "prompts": prompts, "new_tokens": N, "copy_bandwidth_gbps": bw / 1e9,
              "greedy": True, "reference_batches": ref, "smoke": args.smoke,
              "budgeted_rows": "static=True caches, decoding compiled by transformers' generate (inductor, "
                               "reduce-overhead) like cache_implementation='static'",
              "compile_config": None if compile_config is None else compile_config.to_dict(),
              "minutes_guard": args.minutes, "profile": args.profile, "layers": cfg.num_hidden_layers,
              "row_order": list(dict.fromkeys(j[0] for j in jobs)), "compile_s_guess": compile_s,
              "timed_s_guess": timed_s, "warmup_cap_s": args.warmup_cap, "sweep_batches": sweep_batches}
    if args.notes:
        config["notes"] = args.notes

    def save():
        metrics = {"rows": rows, "skipped": skipped, "summary": summarize(rows, prompts, ref, skipped),
                   "wall_s": time.time() - t_start}
        path = write_results(args.name, config, metrics, baseline={"every ratio": "hf_static"}, out_dir=args.out)
        return path

    last_cost = {}  # (row, prompt) -> (batch, seconds): to predict the next doubling
    warmups = []  # compile warm-ups of this run's rows (first batches), seconds
    tried = set()
    for row, P, batches in jobs:
        for B in batches:
            if (row, P, B) in tried:
                continue
            tried.add((row, P, B))
            left = deadline - time.time()
            prev = last_cost.get((row, P))
            guess = guard.estimate_s(prev, B, warmups, compile_s, timed_s)  # a first batch compiles
            if row.endswith("_loop"):  # an eagerly captured step: no compilation
                guess = timed_s + 20
            if left < 20 or guess > left:
                what = "its last batch scaled" if prev else f"compile {guess - timed_s:.0f} s + timed {timed_s:.0f} s"
                skipped.append({"row": row, "prompt": P, "batch": B,
                                "why": f"wall-clock guard: needs ~{guess:.0f} s ({what}), {left:.0f} s left"})
                continue
            est = estimate_cache_gib(row, cfg, B, P, N)
            if CUDA and est + weight_bytes / GiB > 0.9 * total_mem:
                rows.append({"row": row, "batch": B, "prompt": P, "oom": True,
                             "why": f"estimated cache {est:.1f} GiB + weights over 90% of {total_mem:.0f} GiB"})
                tried.update((row, P, b) for b in batches if b > B)
                break
            t0 = time.time()
            cap = left - timed_s if args.warmup_cap is None else min(args.warmup_cap, left - timed_s)
            try:
                res = run_row(model, cfg, row, B, P, N, bw, compile_config, weight_bytes, args.static_shapes,
                              args.profile, warm_cap=cap, guard=guard)
            except guard.WarmupCapped as e:
                cleanup(model)
                warmups.append(time.time() - t0)
                skipped.append({"row": row, "prompt": P, "batch": B, "why": f"{e} (stopped after {time.time() - t0:.0f} s)"})
                tried.update((row, P, b) for b in batches)
                print("SKIPPED", row, B, P, e, flush=True)
                save()
                break
            except torch.OutOfMemoryError:
                cleanup(model)
                rows.append({"row": row, "batch": B, "prompt": P, "oom": True, "why": "torch.OutOfMemoryError"})
                tried.update((row, P, b) for b in batches if b > B)
                print("OOM", row, B, P, flush=True)
                save()
                break
            except Exception as e:  # noqa: BLE001 - keep going: one failing row must not lose the others
                cleanup(model)
                rows.append({"row": row, "batch": B, "prompt": P, "error": f"{type(e).__name__}: {e}"[:500]})
                print("ERROR", row, B, P, e, flush=True)
                save()
                break
            if prev is None:
                warmups.append(res["warmup_s"])
            last_cost[(row, P)] = (B, time.time() - t0 - res["warmup_s"] + 5)
            rows.append(res)
            print(json.dumps(res), flush=True)
            save()
    path = save()
    try:  # the JSON is already written: a failed plot only costs the PNG
        err = plot(rows, prompts, Path(args.out) / f"{args.name}.png")
    except Exception as e:  # noqa: BLE001
        err = f"{type(e).__name__}: {e}"
    if err:
        print("plot:", err, flush=True)
    print("wrote", path, json.dumps(summarize(rows, prompts, ref, skipped), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
