"""Flextron on the reference LM, one GPU call: elastic sub-networks vs pruning-only vs from scratch,
static routers over 8 latency targets (measured), a dynamic-router point, exported dense speedups.

Phases (each with a wall-clock budget; all numbers come from this one run):
  1 importance + permutation (activation magnitude, GQA-aware); full model unchanged (checked)
  2 baseline (a): every uniform sub-network after permutation + pruning only (test perplexity)
  3 elastic training (full + smallest + sampled sub-networks, forward KL from the un-permuted
    original + LM loss); tokens recorded, and as a % of the base model's pre-training tokens
  4 baseline (b): models of the uniform shapes 75/50/25% trained from scratch on the same tokens
  5 latency lookup table on this GPU (per layer, per KV-groups x MLP-width choice)
  6 static router; 8 latency targets, each pick *measured* (whole-model forward, CUDA events) and
    compared with the best uniform config whose LUT latency fits the same target
  7 dynamic per-token router at one target (latency = expected LUT latency, see dynamic.py)
  8 exported dense models (plain LlamaForCausalLM): measured speedup vs the full base model, and
    memory (analytic model vs weights + measured peak of a cached prefill)

GPU (one H100, or two with the training phases data-parallel):
    python benchmarks/elastic/run.py --out $OUT
    torchrun --nproc_per_node 2 benchmarks/elastic/run.py --out $OUT
CPU smoke (tiny random model, every phase, < 60 s):  python benchmarks/elastic/run.py --smoke --out /tmp/el
Writes to --out: elastic_flextron.json (results record), latency_table.json,
static_router.safetensors, elastic_flextron.png. In the repository the record and its PNG go to
benchmarks/results/elastic/, the table and the router (not records) to benchmarks/elastic/artefacts/
as elastic_latency_table.json and elastic_static_router.safetensors.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
from anybudget import elastic as E
from anybudget.elastic.train import _any_rank, average_gradients
from anybudget.io import atomic_write_text, save_figure, write_plot, write_results
from anybudget.measure import latency, model_bytes, peak_memory


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "src/anybudget/assets/reflm"), help="base LM folder")
    ap.add_argument("--train", default=str(ROOT / ".carry/zoo/elastic_train.u16.xz"), help="training tokens (.u16.xz)")
    ap.add_argument("--test", default=str(ROOT / "benchmarks/zoo/data/test.u16.xz"), help="test tokens (.u16.xz)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pretrain-tokens", type=float, default=None, help="base model's pre-training tokens (default: reflm.json)")
    ap.add_argument("--batch", type=int, default=32, help="training sequences per step per GPU")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--train-seconds", type=float, default=150)
    ap.add_argument("--scratch-seconds", type=float, default=150, help="for all from-scratch models together")
    ap.add_argument("--wall-seconds", type=float, default=500, help="whole run; the from-scratch phase shrinks to keep "
                    "--reserve-seconds for the phases after it")
    ap.add_argument("--reserve-seconds", type=float, default=120)
    ap.add_argument("--scratch-lr", type=float, default=2e-3, help="from-scratch lr (the reference LM's)")
    ap.add_argument("--lr", type=float, default=3e-4, help="elastic training lr")
    ap.add_argument("--sampling", default="uniform", choices=("uniform", "budget"))
    ap.add_argument("--router-steps", type=int, default=400)
    ap.add_argument("--dynamic-steps", type=int, default=150)
    ap.add_argument("--lut-batch", type=int, default=64)
    ap.add_argument("--lut-seq", type=int, default=1024)
    ap.add_argument("--route-margin", type=float, default=0.02, help="routers aim 2%% under each target (timing noise)")
    ap.add_argument("--eval-tokens", type=int, default=262_144)
    ap.add_argument("--smoke", action="store_true", help="tiny random model on the CPU, every phase, seconds")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke:
        torch.set_num_threads(1)  # tiny ops: a second thread only waits on a busy machine
        a.batch, a.seq, a.train_seconds, a.scratch_seconds, a.wall_seconds = 2, 32, 2, 2, 60
        a.router_steps, a.dynamic_steps, a.lut_batch, a.lut_seq, a.eval_tokens = 20, 5, 1, 32, 1024
    return a


def smoke_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def train_scratch(model, data, steps, lr, seconds, rank, world, dev):
    """Plain LM training (AdamW, warm-up + cosine, bf16 autocast), gradients all-reduced across ranks."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    t0, step, warm = time.perf_counter(), 0, max(1, steps // 20)
    model.train()
    while step < steps and not _any_rank(time.perf_counter() - t0 > seconds, world, dev):
        for g in opt.param_groups:
            g["lr"] = lr * min((step + 1) / warm, 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        w = data(step, rank).to(dev)
        with E.evaluate.autocast_for(dev):
            loss = E.evaluate.lm_loss(model(input_ids=w[:, :-1], use_cache=False).logits, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            average_gradients(list(model.parameters()), world)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    model.eval()
    return step


def timed_forward(model, ids, smoke):
    with torch.no_grad():
        return latency(lambda: model(input_ids=ids, use_cache=False), warmup=1 if smoke else 5, repeat=3 if smoke else 20).median_s


def main(argv=None) -> int:
    a = parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    dev = torch.device("cpu" if a.smoke or not torch.cuda.is_available() else "cuda")
    if world > 1:
        import torch.distributed as dist

        if dev.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dev = torch.device("cuda", torch.cuda.current_device())
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    quiet = a.quiet or rank != 0
    t_start, phases = time.perf_counter(), {}
    from transformers import AutoModelForCausalLM

    if a.smoke:
        base, pretrain = smoke_model(), 1e6
        rng = np.random.default_rng(0)
        train_tok, test_tok = rng.integers(0, 512, 20_000), rng.integers(0, 512, 4_000)
    else:
        base = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
        meta = Path(a.model) / "reflm.json"
        pretrain = a.pretrain_tokens or (json.loads(meta.read_text()).get("tokens_seen") if meta.is_file() else None)
        train_tok, test_tok = E.read_tokens(a.train), E.read_tokens(a.test)
    vocab = base.config.vocab_size
    for name, t in (("train", train_tok), ("test", test_tok)):
        if int(t.max()) >= vocab:
            raise SystemExit(f"--{name} has token id {int(t.max())} >= the model's vocab_size {vocab}: wrong tokenizer")
    base = base.to(dev).eval()
    base.config._attn_implementation = "sdpa"
    original = copy.deepcopy(base).requires_grad_(False)  # the un-permuted teacher and speed reference
    held = (a.seq + 1) * 32  # the training file's tail is held out: the surrogate's measured losses
    data = E.TokenBatches(train_tok[:-held], a.batch, a.seq, seed=0)
    windows = E.eval_windows(test_tok, a.seq, 16, a.eval_tokens)
    router_windows = E.eval_windows(train_tok[-held:], a.seq, 16)
    shape = E.families.shape_of(base)

    # 1 importance + permutation -------------------------------------------------------------
    t = time.perf_counter()
    calib = [data(10**9 + i)[:, :-1] for i in range(4 if a.smoke else 16)]
    em = E.make_elastic(base, calib, embedding=True, depth=True, quiet=quiet)
    if world > 1:
        for p in base.parameters():  # one permutation for all ranks (rank 0's)
            torch.distributed.broadcast(p.data, 0)
    ppl_orig = E.perplexity(original, windows)
    ppl_perm = E.perplexity(em, windows, em.full())
    phases["importance_s"] = time.perf_counter() - t
    uniform = E.router.uniform_configs(em)
    params = {str(s): E.param_count(em, s) for s in uniform}

    # 2 baseline (a): pruning only ---------------------------------------------------------------
    pruned = {str(s): E.perplexity(em, windows, s) for s in uniform} if rank == 0 else {}

    # 3 elastic training --------------------------------------------------------------------------
    t = time.perf_counter()
    # time 3 steps on a throw-away copy to size the run (the LR schedule needs the step count)
    probe_em = E.ElasticLlama(copy.deepcopy(base), em.space)
    probe_cfg = E.ElasticTrainConfig(steps=10**6, lr=a.lr, warmup_steps=20, sampling=a.sampling)
    E.train_elastic(probe_em, data, probe_cfg, teacher=original, stop_after=2, quiet=True)  # warm-up
    probe = E.train_elastic(probe_em, data, probe_cfg, teacher=original, stop_after=3, quiet=True)
    del probe_em
    steps = max(4, int(a.train_seconds / (probe["seconds"] / 3)))
    if world > 1:  # every rank must run the same schedule: rank 0's
        n = torch.tensor([steps], device=dev)
        torch.distributed.broadcast(n, 0)
        steps = int(n.item())
    cfg = E.ElasticTrainConfig(steps=steps, lr=a.lr, warmup_steps=min(20, steps // 10 + 1), sampling=a.sampling)
    res = E.train_elastic(em, data, cfg, teacher=original, time_budget_s=a.train_seconds * 1.1, quiet=quiet)
    train_tokens = res["tokens"]
    phases["train_s"] = time.perf_counter() - t

    # 4 baseline (b): from scratch on the same tokens ----------------------------------------------
    t = time.perf_counter()
    scratch = {}
    scratch_budget = max(0.0, min(a.scratch_seconds, a.wall_seconds - a.reserve_seconds - (t - t_start)))
    if world > 1:
        n = torch.tensor([scratch_budget], device=dev, dtype=torch.float64)
        torch.distributed.broadcast(n, 0)
        scratch_budget = float(n.item())
    phases["scratch_budget_s"] = scratch_budget
    shapes = [em.uniform(f) for f in (0.75, 0.5, 0.25)]
    for i, sub in enumerate(shapes):
        torch.manual_seed(i)
        fresh = type(base)(E.export(em, sub).config).to(dev)
        if world > 1:
            for p in fresh.parameters():
                torch.distributed.broadcast(p.data, 0)
        want = math.ceil(train_tokens / (a.batch * a.seq * world))
        done = train_scratch(fresh, data, want, a.scratch_lr,
                             (scratch_budget - (time.perf_counter() - t)) / (len(shapes) - i), rank, world, dev)
        if rank == 0:
            scratch[str(sub)] = {"ppl": E.perplexity(fresh, windows), "steps": done, "tokens": done * a.batch * a.seq * world,
                                 "params": E.param_count(em, sub)}
        del fresh
    phases["scratch_s"] = time.perf_counter() - t
    if world > 1:
        torch.distributed.destroy_process_group()
        if rank != 0:
            return 0

    # elastic perplexities
    elastic_ppl = {str(s): E.perplexity(em, windows, s) for s in uniform}

    # 5 latency table on this device --------------------------------------------------------------
    t = time.perf_counter()
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    wl = E.Workload(batch=a.lut_batch, seq=a.lut_seq, mode="prefill", dtype=str(dt).split(".")[1])
    em16 = E.ElasticLlama(copy.deepcopy(em.model).to(dt), em.space)
    table = E.measure_latency_table(em16, wl, warmup=1 if a.smoke else 3, repeat=2 if a.smoke else 10, quiet=quiet)
    atomic_write_text(out / "latency_table.json", table.to_json())
    ids = torch.randint(0, vocab, (a.lut_batch, a.lut_seq), device=dev)

    def measured(sub):
        with em16.use(sub):
            return timed_forward(em16.model, ids, a.smoke)

    meas = {str(s): measured(s) for s in uniform}
    phases["latency_s"] = time.perf_counter() - t

    # 6 static router ------------------------------------------------------------------------------
    t = time.perf_counter()
    rcfg = E.RouterTrainConfig(steps=a.router_steps, surrogate_samples=16 if a.smoke else 128)
    router, rstats = E.train_static_router(em, table, router_windows, rcfg, quiet=quiet)
    router.save(out / "static_router.safetensors")
    lo, hi = table.cost(em.smallest()), table.cost(em.full())
    sweep = []
    for f in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0):
        target = lo + f * (hi - lo)
        budget = f"latency={target * 1e3:.6f}ms"
        raw = E.route(em, budget, router=router, table=table, margin=a.route_margin)
        pick = E.route(em, budget, router=router, table=table, margin=a.route_margin, calib=router_windows)
        upick = E.route(em, budget, table=table, uniform=True, margin=a.route_margin)
        row = {"fraction": f, "target_ms": target * 1e3}
        # router: route() with the calibration check (router pick vs uniform widths on held-out
        # training windows); router_raw: the router's own argmax (the paper's procedure alone)
        for kind, s in (("router", pick), ("router_raw", raw), ("uniform", upick)):
            m = meas.get(str(s)) or measured(s)
            row[kind] = {"subnet": s.to_dict(), "label": str(s), "lut_ms": table.cost(s) * 1e3, "measured_ms": m * 1e3,
                         "meets_measured": m <= target, "params": E.param_count(em, s),
                         "ppl": elastic_ppl.get(str(s)) or E.perplexity(em, windows, s)}
        # oracle baseline: the uniform config of lowest test perplexity whose LUT latency fits
        fits = [s for s in uniform if table.cost(s) <= target]
        best = min(fits, key=lambda s: elastic_ppl[str(s)]) if fits else em.smallest()
        row["uniform_best"] = {"label": str(best), "lut_ms": table.cost(best) * 1e3, "measured_ms": meas[str(best)] * 1e3,
                               "params": E.param_count(em, best), "ppl": elastic_ppl[str(best)]}
        sweep.append(row)
    phases["router_s"] = time.perf_counter() - t

    # 7 dynamic router -----------------------------------------------------------------------------
    t = time.perf_counter()
    dyn_data = E.TokenBatches(train_tok, max(1, a.batch // 4), a.seq, seed=7)
    dyn, dstats = E.train_dynamic_router(em, table, dyn_data, E.DynamicTrainConfig(steps=a.dynamic_steps), quiet=quiet)
    dyn_target = (dstats["min_latency"] + dstats["max_latency"]) / 2
    acc_lat, nll, n = 0.0, 0.0, 0
    with torch.no_grad():
        for w in windows:
            w = w.to(dev)
            with E.dynamic_routing(em, dyn, dyn_target, table) as acc, E.evaluate.autocast_for(dev):
                nll += float(E.evaluate.lm_loss(em.model(input_ids=w[:, :-1], use_cache=False).logits, w)) * w[:, 1:].numel()
            acc_lat += float(acc["latency"]) * w[:, 1:].numel()
            n += w[:, 1:].numel()
    dynamic = {"target_ms": dyn_target * 1e3, "expected_lut_ms": acc_lat / n * 1e3, "ppl": math.exp(nll / n),
               "accounting": "fixed + sum over layers of the mean over tokens of LUT[layer][full KV][token's MLP width]"}
    phases["dynamic_s"] = time.perf_counter() - t

    # 8 exported dense models: measured speedup vs the full base model ------------------------------
    t = time.perf_counter()
    full_plain = copy.deepcopy(original).to(dt)
    t_full = timed_forward(full_plain, ids, a.smoke)

    def memory(m, sub):
        """Analytic model (weights + KV cache + activation workspace) vs weights + measured peak of a cached prefill."""
        with torch.no_grad():
            _, peak = peak_memory(lambda: m(input_ids=ids, use_cache=True))
        return {"predicted": E.memory_bytes(em, sub, wl), "measured": None if peak is None else model_bytes(m) + peak}

    exported, mem_full = [], memory(full_plain, em.full())
    del full_plain
    for f in (0.75, 0.5, 0.25):
        sub = em.uniform(f)
        small = E.export(em, sub)
        small_ppl = E.perplexity(small, windows)
        small = small.to(dt)
        ts = timed_forward(small, ids, a.smoke)
        exported.append({"subnet": str(sub), "params": sum(p.numel() for p in small.parameters()), "measured_ms": ts * 1e3,
                         "full_ms": t_full * 1e3, "speedup": t_full / ts, "ppl": small_ppl,
                         "elastic_sliced_ms": meas[str(sub)] * 1e3, "memory_bytes": memory(small, sub),
                         "full_memory_bytes": mem_full, "elastic_ppl": elastic_ppl[str(sub)], "class": type(small).__name__})
        del small
    phases["export_s"] = time.perf_counter() - t

    points = [{"subnet": k, "params": params[k], "measured_ms": meas[k] * 1e3, "lut_ms": table.cost(s) * 1e3,
               "elastic_ppl": elastic_ppl[k], "pruned_ppl": pruned[k], "scratch_ppl": scratch.get(k, {}).get("ppl")}
              for k, s in zip(params, uniform)]
    full_key = str(em.full())
    metrics = {
        "ppl_original": ppl_orig, "ppl_permuted_full": ppl_perm, "uniform_points": points, "scratch": scratch,
        "router_sweep": sweep, "router_stats": {k: rstats[k] for k in ("router_steps", "measured")},
        "surrogate_error_last": rstats["surrogate_error"][-1], "dynamic": dynamic, "exported": exported,
        "elastic_training": {"tokens": train_tokens, "steps": res["steps"], "seconds": res["seconds"],
                             "pct_of_pretraining": 100 * train_tokens / pretrain if pretrain else None,
                             "stopped": res["stopped"], "world_size": world,
                             "loss_first": res["history"][0] if res["history"] else None,
                             "loss_last": res["history"][-1] if res["history"] else None},
        "router_meets_all_measured": all(r["router"]["meets_measured"] for r in sweep),
        "router_at_least_uniform": sum(r["router"]["ppl"] <= r["uniform"]["ppl"] + 1e-9 for r in sweep),
        "router_at_least_best_uniform": sum(r["router"]["ppl"] <= r["uniform_best"]["ppl"] + 1e-9 for r in sweep),
        "router_raw_at_least_best_uniform": sum(r["router_raw"]["ppl"] <= r["uniform_best"]["ppl"] + 1e-9 for r in sweep),
        "router_raw_meets_all_measured": all(r["router_raw"]["meets_measured"] for r in sweep),
        "uniform_meets_all_measured": all(r["uniform"]["meets_measured"] for r in sweep),
        "full_measured_ms": meas[full_key] * 1e3, "lut_full_ms": hi * 1e3, "lut_smallest_ms": lo * 1e3,
        "phases_s": phases, "total_s": time.perf_counter() - t_start,
    }
    config = {"model": "smoke" if a.smoke else a.model, "shape": shape, "batch": a.batch, "seq": a.seq, "lr": a.lr,
              "sampling": a.sampling, "train_config": res["config"], "workload": wl.__dict__, "eval_tokens": a.eval_tokens,
              "importance": {"depth": em.importance.layers.tolist(), "embedding_top8": em.importance.embedding.topk(8).indices.tolist()}}
    write_results("elastic_flextron", config, metrics, baseline={"pruned_only": pruned, "scratch": scratch}, out_dir=out)
    write_plot(out / "elastic_flextron.png", lambda p: plot(p, points, sweep, dynamic, exported))
    print(json.dumps({"ppl_original": ppl_orig, "tokens": train_tokens, "meets": metrics["router_meets_all_measured"],
                      "router>=uniform": metrics["router_at_least_uniform"], "total_s": metrics["total_s"]}))
    return 0


def plot(path, points, sweep, dynamic, exported):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, x, label in ((axes[0], "measured_ms", "measured latency (ms)"), (axes[1], "params", "parameters")):
        for key, name, mark in (("elastic_ppl", "elastic (ours)", "o"), ("pruned_ppl", "permute + prune only", "s"),
                                ("scratch_ppl", "from scratch, same tokens", "^")):
            pts = [(p[x], p[key]) for p in points if p[key] is not None]
            ax.scatter(*zip(*pts), marker=mark, label=name) if pts else None
        rx = [(r["router"][x], r["router"]["ppl"]) for r in sweep]
        ax.plot(*zip(*sorted(rx)), "k--x", label="static router (8 targets)")
        if x == "measured_ms":
            ax.scatter([dynamic["expected_lut_ms"]], [dynamic["ppl"]], marker="*", s=150, label="dynamic router (LUT)")
            ax.scatter([e["measured_ms"] for e in exported], [e["ppl"] for e in exported], marker="+", s=80,
                       label="exported dense")
        ax.set_xlabel(label)
        ax.set_ylabel("test perplexity")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Flextron elastic sub-networks")
    save_figure(fig, path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
