"""anybudget fit on the reference LM, one GPU call: a grid of memory x latency budgets; for each, the
combined plan (elastic sub-network x KV cache) and the best single-technique plans (elastic only with
the full cache; the full model with KV eviction only), every one *measured* on the device.

Workload (what a user deploying this model asks; chosen before any result of it, not tuned):
  the reference LM was trained on 1024-token windows, and beyond them it is not a language model
  (new-token perplexity after a 2048-token prompt: ~1100, after 960: ~11, measured on the CPU with
  the test split), so a deployment keeps prompt + new tokens within 1024: prompts of 896 tokens,
  128 new tokens. A 27M-parameter model is served to many users at once: 128 concurrent sequences,
  where the KV cache (1.07 GB in bf16) is ~20x the weights (55 MB) and with the prefill workspace
  makes the memory; that is the regime KV eviction is for. Served the fast way on CUDA
  (``--serve static``): HF's StaticCache and anybudget's fixed-slot caches, decoding compiled by
  ``generate`` (``CompileConfig(dynamic=True)``; compiled once per cache kind: weight shapes are
  dynamic too and sizes are not duck-typed, ``plan.device.compile_settings``, so every sub-network
  with more than one KV group shares the graph, checked on the CPU with dynamo's eager backend;
  ``--static-weight-shapes`` compiles per sub-network, and is the automatic fall-back if shared
  graphs fail). Compile time is in each trial's ``warmup_s``.
Budgets: 3 memory levels spread over the range the candidates span, at 0.8, 0.5 and 0.2 of the
  way from the smallest reachable predicted peak to the full model's (each needs a smaller network
  or a smaller cache; together they sample the whole range rather than only the top of it, where
  one technique always suffices, nor only its bottom) x 2 latency levels a user would state
  relative to what they run today: 1.0x the full model's predicted step ("no slower than serving
  the model as it is") and 1.25x ("a quarter slower is acceptable").

Phases (all numbers from this one run):
  1 a quick elastic build of the reference LM (``anybudget.elastic.pipeline.build_elastic``:
    importance + permutation, ``--train-steps`` of elastic distillation, prefill latency table, a
    short router phase), kept in ``--build`` (git-ignored) so a re-run resumes or reuses it
  2 quality data on the workload's protocol (``plan.quality``): the new-token perplexity after a
    prefilled prompt, on ``--quality-seqs`` windows of prompt + new test tokens, of every uniform
    sub-network (full cache) and of the full model with each policy x budget (as ratios)
  3 the latency model (static: linear in bytes read, two compiled points per cache kind,
    ``plan.static_latency_model``; eager: ``plan.decode_latency_model``) and the memory correction
  4 the grid: per budget three ``plan.fit`` calls (both / elastic only / kv only), each measuring
    its choice and falling back while a measurement breaks the budget; then the quality check of
    every new chosen plan: its perplexity measured as it runs (dense export + its cache) on the
    same windows and protocol as phase 2, so prediction and check differ only by the assumption
    that eviction costs every sub-network the same NLL (exact for full caches and the full model)

GPU (one H100; ~6-8 min, guarded by --wall-seconds; needs the reference LM weights and training tokens):
    python benchmarks/plan/fit_grid.py --out $OUT
  carried: .carry/zoo2/elastic_train4m.u16.xz (2.9 MB, the elastic benchmark's training tokens;
  any .u16.xz of reference-LM token ids works via --train)
CPU smoke (tiny random model, every phase, seconds):  python benchmarks/plan/fit_grid.py --smoke --out /tmp/fg
Writes to --out: plan_fit_grid.json (results record), plan_fit_grid.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anybudget import plan as P
from anybudget.budget import BudgetError
from anybudget.elastic.data import read_tokens
from anybudget.io import atomic_path, write_results
from anybudget.plan.device import compile_settings
from anybudget.plan.fit import predict_all
from anybudget.plan.quality import quality_workload

ROOT = Path(__file__).resolve().parents[2]

KINDS = {"plan": ("elastic", "kv"), "elastic_only": ("elastic",), "kv_only": ("kv",)}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "src/anybudget/assets/reflm"))
    ap.add_argument("--train", default=str(ROOT / ".carry/zoo2/elastic_train4m.u16.xz"), help="training tokens (.u16.xz)")
    ap.add_argument("--test", default=str(ROOT / "benchmarks/zoo/data_v2/test.u16.xz"), help="held-out tokens (.u16.xz, the reference LM v2 tokenizer)")
    ap.add_argument("--build", default=str(ROOT / "benchmarks/plan/build/elastic_reflm"), help="elastic build folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-seq", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1.5e-4, help="elastic training lr (the elastic benchmark's)")
    ap.add_argument("--prompt", type=int, default=896)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--serve", choices=("static", "eager"), default="static",
                    help="static: fixed-slot caches, decoding compiled on CUDA (eager on a CPU); eager: dynamic caches")
    ap.add_argument("--static-weight-shapes", action="store_true",
                    help="compile every sub-network separately (dynamo's default) instead of one graph per cache kind "
                         "(plan.device.compile_settings)")
    ap.add_argument("--policies", default="h2o,local",
                    help="h2o (best quality) and local (cheapest: no scores); streaming is local + 4 sink tokens, "
                         "and every cache kind costs a compilation")
    ap.add_argument("--kv-budgets", default="50,20,10", help="percent")
    ap.add_argument("--quality-seqs", type=int, default=48, help="windows of prompt + new test tokens (quality, check)")
    ap.add_argument("--mem-levels", default="0.8,0.5,0.2",
                    help="memory budgets: fractions of the way from the smallest reachable peak (0) to the full model's (1)")
    ap.add_argument("--latency-levels", default="1.0,1.25", help="latency budgets as multiples of the full model's step")
    ap.add_argument("--max-trials", type=int, default=4)
    ap.add_argument("--margin", type=float, default=0.03, help="plans aim this fraction under each budget (noise)")
    ap.add_argument("--wall-seconds", type=float, default=470,
                    help="past this, no new grid budget and no further quality check is started")
    ap.add_argument("--smoke", action="store_true", help="tiny random model on the CPU, every phase, seconds")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke:
        torch.set_num_threads(1)
        a.train_steps, a.train_batch, a.train_seq, a.prompt, a.new, a.batch = 2, 2, 32, 40, 4, 2
        a.quality_seqs, a.max_trials = 3, 3
        a.latency_levels = "2,4"  # a tiny model's CPU step times are mostly noise
    return a


def smoke_inputs(tmp: Path):
    """A tiny random Llama folder (reference-LM tokenizer not needed: token files are ids) and tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(str(tmp / "base"))
    g = np.random.default_rng(0)
    return tmp / "base", g.integers(0, 512, 20_000, dtype=np.int64), g.integers(0, 512, 4_000, dtype=np.int64)


def build(a, model_dir, train_tokens, dev):
    from anybudget.elastic import ElasticTrainConfig, RouterTrainConfig, Workload
    from anybudget.elastic.pipeline import ElasticBuildConfig, build_elastic

    train = ElasticTrainConfig(steps=a.train_steps, lr=a.lr, checkpoint_every=max(1, a.train_steps // 4))
    router = RouterTrainConfig(steps=20 if a.smoke else 100, surrogate_samples=4 if a.smoke else 32)
    wl = Workload(batch=1, seq=32, dtype="float32") if a.smoke else None
    data = ElasticBuildConfig(batch=a.train_batch, seq=a.train_seq, calib_batches=2 if a.smoke else 8)
    return build_elastic(model_dir, train_tokens, a.build, train, router, wl, build=data, device=str(dev), quiet=a.quiet)


def levels(text):
    return [float(x) for x in text.split(",") if x.strip()]


def grid(a, rows):
    """Memory levels at fractions of the way from the smallest reachable predicted peak to the full
    model's x latency levels as multiples of the full model's predicted step (module doc)."""
    full = max(rows, key=lambda r: (r["candidate"]["kv_groups"], r["candidate"]["mlp_width"],
                                    r["candidate"]["policy"] == "full"))
    lo_mem = min(r["mem"] for r in rows)
    out = []
    for fm in levels(a.mem_levels):
        for fl in levels(a.latency_levels):
            mem = lo_mem + fm * (full["mem"] - lo_mem)
            out.append(f"mem={math.ceil(mem / 2**10)}KiB,latency={fl * full['latency_s'] * 1e3:.4f}ms")
    return out, full


def plan_row(p: P.Plan) -> dict:
    return {"chosen": p.candidate.label, "predicted_mem": p.predicted["mem"], "predicted_latency_s": p.predicted["latency_s"],
            "predicted_ppl": p.predicted["ppl"], "measured_peak_bytes": p.measured["peak_bytes"],
            "measured_step_s": p.measured["step_s"], "peak_kind": p.measured["peak_kind"],
            "trials": [{"label": t["label"], "meets": t["meets"], "peak_bytes": t["measured"]["peak_bytes"],
                        "step_s": t["measured"]["step_s"], "warmup_s": t["measured"].get("warmup_s")} for t in p.trials]}


def main(argv=None) -> int:
    a = parse(argv)
    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    phases = {}
    if a.smoke:
        a.build = str(out / "build")
        model_dir, train_tokens, test_tokens = smoke_inputs(out / "build")
    else:
        done = (Path(a.build) / "elastic.json").is_file() and "router" in json.loads(
            (Path(a.build) / "elastic.json").read_text()).get("phases", [])
        if not done and not Path(a.train).is_file():
            raise SystemExit(f"error: --train {a.train} is missing: carry .carry/zoo2/elastic_train4m.u16.xz (the elastic "
                             "benchmark's training tokens) or give any .u16.xz of reference-LM token ids")
        model_dir, test_tokens = a.model, read_tokens(a.test)
        train_tokens = read_tokens(a.train) if not done else np.zeros(a.train_seq * 4, dtype=np.int64)
    t = time.perf_counter()
    meta = build(a, model_dir, train_tokens, dev)
    phases["build_s"] = time.perf_counter() - t
    em, _ = P.load_elastic_folder(a.build, device=str(dev))
    policies = tuple(p for p in a.policies.split(",") if p)
    pcts = tuple(levels(a.kv_budgets))
    wl = P.ServingWorkload(a.prompt, a.new, a.batch, "bfloat16" if dev.type == "cuda" else "float32")
    static = a.serve == "static"
    share = not a.static_weight_shapes

    def measure(model, c, w):
        return P.measure_candidate(model, c, w, serve=a.serve, share_graphs=share)
    t = time.perf_counter()
    test = torch.as_tensor(test_tokens.astype(np.int64))
    qbatch = a.quality_seqs if dev.type == "cuda" else 16  # one batch on the GPU (only last-position logits kept)
    quality = P.measure_quality(em, test, wl, policies, pcts, seqs=a.quality_seqs, static=static, batch=qbatch,
                                quiet=a.quiet)
    qwl = quality_workload(wl, test.numel())
    windows = P.quality_windows(test, qwl, a.quality_seqs)
    phases["quality_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if static:
        try:
            lat, calib = P.static_latency_model(em, wl, policies, pcts, measure=measure)
        except Exception as e:  # shared dynamic-weight graphs failed: compile per sub-network instead
            if not share or dev.type != "cuda":
                raise
            phases["shared_graphs_error"] = f"{type(e).__name__}: {e}"[:500]
            share = False
            torch._dynamo.reset()
            lat, calib = P.static_latency_model(em, wl, policies, pcts, measure=measure)
    else:
        lat, calib = P.decode_latency_model(em, wl, policies, min(pcts))
    phases["latency_model_s"] = time.perf_counter() - t
    rows = predict_all(em, wl, quality, lat, policies, pcts)
    budgets, full = grid(a, rows)
    results, checked = [], {}
    t = time.perf_counter()

    def save() -> dict:
        """The record so far (rewritten after every budget: a run killed at its limit keeps its results)."""
        phases["grid_s"] = time.perf_counter() - t
        summary = summarize(results, checked)
        metrics = {"grid": results, "summary": summary, "quality_check": checked, "full_model": {
            "label": full["label"], "predicted_mem": full["mem"], "predicted_latency_s": full["latency_s"],
            "ppl": full["ppl"]},
            "quality": quality.to_dict(), "latency_model": lat.to_dict() | {"calibration": calib},
            "build": {k: meta.get(k) for k in ("phases", "train")}, "phases_s": phases,
            "total_s": time.perf_counter() - t_start}
        config = {"model": str(a.model) if not a.smoke else "smoke", "workload": wl.__dict__, "policies": policies,
                  "kv_percents": pcts, "train_steps": a.train_steps, "train_batch": a.train_batch,
                  "train_seq": a.train_seq, "serve": a.serve,
                  "compile_settings": compile_settings(share) if static else {}, "share_graphs": share,
                  "quality_protocol": quality.source, "mem_levels": a.mem_levels, "latency_levels": a.latency_levels,
                  "max_trials": a.max_trials, "margin": a.margin, "smoke": a.smoke,
                  "assumptions": [("quality: ppl(sub-network) x KV ratio measured on the full model, both as "
                                   "new-token perplexity after a prefilled prompt (the check measures the plan "
                                   "the same way)"),
                                  "latency: per decoding step of the whole batch (one new token per sequence)"]}
        write_results("plan_fit_grid", config, metrics, {"single_technique": ["elastic_only", "kv_only"]}, out_dir=out)
        return summary

    for b in budgets:
        if time.perf_counter() - t_start > a.wall_seconds:  # keep the call under its limit; say so in the record
            phases["grid_stopped_at_budget"] = b
            break
        entry = {"budget": b}
        for kind, tech in KINDS.items():
            try:
                p = P.fit(em, b, wl, quality, lat, policies, pcts, tech, a.max_trials, margin=a.margin, quiet=a.quiet,
                          measure=measure)
                entry[kind] = plan_row(p)
            except BudgetError as e:
                entry[kind] = {"error": str(e)}
            except Exception as e:  # noqa: BLE001 - one failing fit must not lose the others
                if isinstance(e, torch.OutOfMemoryError) and dev.type == "cuda":
                    torch.cuda.empty_cache()
                entry[kind] = {"error": f"{type(e).__name__}: {e}"[:500], "crashed": True}
        for kind in KINDS:  # the quality check of each new choice, on the quality phase's windows and protocol
            lab = entry[kind].get("chosen")
            if lab is not None and lab not in checked:
                c = next(P.Candidate(**r["candidate"]) for r in rows if r["label"] == lab)
                pred = next(r["ppl"] for r in rows if r["label"] == lab)
                checked[lab] = {"predicted_ppl": pred, "measured_ppl": P.measured_ppl(em, c, windows, qwl, static, qbatch),
                                "exact": c.policy == "full" or (c.kv_groups, c.mlp_width) == (max(em.kv_choices),
                                                                                              max(em.mlp_choices))}
        if not a.quiet:
            print(b, {k: entry[k].get("chosen", "infeasible") for k in KINDS}, flush=True)
        results.append(entry)
        save()
    phases["grid_s"] = time.perf_counter() - t
    summary = save()
    plot(results, out / "plan_fit_grid.png")
    print(f"wrote {out / 'plan_fit_grid.json'} ({summary}) in {time.perf_counter() - t_start:.0f} s")
    return 0


def summarize(results, checked) -> dict:
    """Counts over the grid; ``*_measured_ppl`` compare the plans' streaming perplexity measured here."""
    n = len(results)  # budgets run (fewer than the grid's if the wall-clock guard stopped it)
    met = [e for e in results if "chosen" in e["plan"]]
    out = {"budgets": n, "plans_found": len(met),
           "plans_meet_budget_measured": len(met) == n and all(e["plan"]["trials"][-1]["meets"] for e in met)}
    for key, value in (("predicted_ppl", lambda r: r["predicted_ppl"]),
                       ("measured_ppl", lambda r: checked.get(r["chosen"], {}).get("measured_ppl"))):
        ge = strict = compared = 0
        for e in met:
            mine = value(e["plan"])
            singles = [value(e[k]) for k in ("elastic_only", "kv_only") if "chosen" in e[k]]
            if mine is None or any(v is None for v in singles):
                continue
            best = min(singles) if singles else math.inf
            compared += 1
            ge += mine <= best * (1 + 1e-6)
            strict += mine < best * (1 - 1e-6)
        out[f"compared_{key}"] = compared
        out[f"plan_at_least_best_single_{key}"] = ge
        out[f"plan_strictly_better_{key}"] = strict
    for exact in (True, False):  # exact: 0 up to float rounding; otherwise the combination assumption's error
        errs = [abs(q["measured_ppl"] / q["predicted_ppl"] - 1) for q in checked.values() if q["exact"] == exact]
        out[f"quality_check_{'exact' if exact else 'assumed'}_max_rel_err"] = max(errs) if errs else None
    return out


def plot(results, path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(results)), 4))
    w = 0.27
    for i, (kind, color) in enumerate((("plan", "C0"), ("elastic_only", "C1"), ("kv_only", "C2"))):
        xs = [j + (i - 1) * w for j, e in enumerate(results) if "chosen" in e[kind]]
        ys = [e[kind]["predicted_ppl"] for e in results if "chosen" in e[kind]]
        ax.bar(xs, ys, w, color=color, label=kind.replace("_", " "))
        for j, e in enumerate(results):
            if "chosen" not in e[kind]:
                ax.text(j + (i - 1) * w, 0.02, "none", rotation=90, ha="center", va="bottom", fontsize=7,
                        transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([e["budget"].replace(",", "\n") for e in results], fontsize=7)
    ax.set_ylabel("perplexity (predicted from measured parts)")
    ax.set_yscale("log")
    ax.set_title("anybudget fit: combined plan vs single-technique plans, each measured within its budget", fontsize=9)
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
