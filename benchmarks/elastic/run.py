"""Flextron on the reference LM, one GPU call: elastic sub-networks vs pruning-only vs from scratch,
static routers over 8 latency targets (measured), a measured dynamic-router point, exported dense speedups.

Phases (all numbers come from this one run):
  1 importance + permutation (activation magnitude, GQA-aware); full model unchanged (checked)
  2 baseline (a): every uniform sub-network after permutation + pruning only (test perplexity)
  plan: a few timed steps of the elastic training and of each from-scratch model size the run: the
    token count is --train-pct of the base model's pre-training tokens (paper: 7.63%) or --train-tokens,
    cut to what fits --wall-seconds with --reserve-seconds kept for phases 5-8 (recorded as "plan")
  3 elastic training (full + smallest + sampled sub-networks, forward KL from the un-permuted
    original + LM loss); tokens recorded, and as a % of the base model's pre-training tokens
  4 baseline (b): models of the uniform shapes 75/50/25% trained from scratch on the same tokens
  5 latency lookup table on this GPU (per layer, per KV-groups x MLP-width choice); every uniform
    sub-network's whole-model forward timed (CUDA events)
  6 static router (surrogate + Gumbel-softmax, the paper's training; its measured losses on the
    validation split); 8 targets over the *measured* latency range. route() keeps a candidate when
    its measured latency fits (no margin) and, with calib=, returns the lowest validation loss among
    the router's answers and every fitting uniform width (ours; "router"); "router_raw" is the
    router's answer alone; each pick is timed again afterwards
  7 dynamic per-token router at one target: perplexity, LUT-accounted latency and measured latency
    (the same forward as the static points, with the router's hooks on)
  8 exported dense models (plain LlamaForCausalLM): measured speedup vs the full base model, and
    memory (analytic model vs weights + measured peak of a cached prefill)

GPU (two H100s; the data-parallel phases use both; ~8.5 min; needs the reference LM in the tree and
.carry/zoo2/elastic_train.u16.xz, built by benchmarks/zoo/tokenize_v2.py):
    torchrun --nproc_per_node 2 benchmarks/elastic/run.py --out $OUT
CPU smoke (tiny random model, every phase, seconds):  python benchmarks/elastic/run.py --smoke --out /tmp/el
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
from anybudget.io import atomic_write_text, write_plot, write_results
from anybudget.measure import latency, model_bytes, peak_memory

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling elastic_sweep.py when imported from tests
    sys.path.insert(0, str(HERE))
from elastic_sweep import dynamic_point, plot, router_sweep, sweep_metrics

PAPER_PCT = 7.63  # Flextron: elastic training on 7.63% of the original pre-training tokens


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "src/anybudget/assets/reflm"), help="base LM folder")
    ap.add_argument("--train", default=str(ROOT / ".carry/zoo2/elastic_train.u16.xz"), help="training tokens (.u16.xz)")
    ap.add_argument("--test", default=str(ROOT / "benchmarks/zoo/data_v2/test.u16.xz"), help="test tokens (.u16.xz)")
    ap.add_argument("--calib", default=str(ROOT / "benchmarks/zoo/data_v2/validation.u16.xz"),
                    help="held-out tokens for the router's measured losses and its calibration check (not the test set)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pretrain-tokens", type=float, default=None, help="base model's pre-training tokens (default: reflm.json)")
    ap.add_argument("--train-pct", type=float, default=PAPER_PCT, help="elastic tokens as %% of pre-training (paper 7.63)")
    ap.add_argument("--train-tokens", type=float, default=None, help="elastic tokens (overrides --train-pct)")
    ap.add_argument("--batch", type=int, default=32, help="training sequences per step per GPU")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--scratch-shapes", default="0.75,0.5,0.25", help="uniform widths trained from scratch (comma list; "
                    "'' for none: more tokens for the elastic run)")
    ap.add_argument("--wall-seconds", type=float, default=515, help="this script's own clock (the process start adds ~20 s); "
                    "the token count is cut to fit it")
    ap.add_argument("--reserve-seconds", type=float, default=100, help="kept for phases 5-8 after the training")
    ap.add_argument("--scratch-lr", type=float, default=2e-3, help="from-scratch lr (the reference LM's)")
    ap.add_argument("--lr", type=float, default=1.5e-4, help="elastic training lr")
    ap.add_argument("--full-weight", type=float, default=1.0, help="weight of the full model's loss (1 = the paper's equal weights)")
    ap.add_argument("--lm-weight", type=float, default=1.0, help="LM term beside the KD term (0 = KD only, Megatron's Flextron code)")
    ap.add_argument("--sampling", default="uniform", choices=("uniform", "budget"))
    ap.add_argument("--router-steps", type=int, default=400)
    ap.add_argument("--dynamic-steps", type=int, default=150)
    ap.add_argument("--lut-batch", type=int, default=64)
    ap.add_argument("--lut-seq", type=int, default=1024)
    ap.add_argument("--eval-tokens", type=int, default=262_144)
    ap.add_argument("--calib-tokens", type=int, default=131_072, help="validation tokens for the calibration check")
    ap.add_argument("--smoke", action="store_true", help="tiny random model on the CPU, every phase, seconds")
    ap.add_argument("--quiet", action="store_true")
    if "--smoke" in (sys.argv[1:] if argv is None else argv):  # smoke defaults; flags given still win
        ap.set_defaults(batch=2, seq=32, wall_seconds=60, reserve_seconds=20, train_tokens=2 * 32 * 8, router_steps=20,
                        dynamic_steps=5, lut_batch=1, lut_seq=32, eval_tokens=1024, calib_tokens=512)
    a = ap.parse_args(argv)
    try:
        a.scratch_shapes = [float(x) for x in a.scratch_shapes.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--scratch-shapes={a.scratch_shapes!r} must be a comma list of fractions, e.g. 0.75,0.5,0.25")
    if a.smoke:
        torch.set_num_threads(1)  # tiny ops: a second thread only waits on a busy machine
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


def timed_forward(model, ids, smoke, repeat=20):
    """Median of ``repeat`` timed forwards (CUDA events) after a few untimed ones."""
    with torch.no_grad():
        return latency(lambda: model(input_ids=ids, use_cache=False), warmup=1 if smoke else 3,
                       repeat=3 if smoke else repeat).median_s


def _sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _bcast(x: float, world: int, dev) -> float:
    """Rank 0's value on every rank (plans must agree across ranks)."""
    if world == 1:
        return x
    t = torch.tensor([float(x)], device=dev, dtype=torch.float64)
    torch.distributed.broadcast(t, 0)
    return float(t.item())


def plan_tokens(a, base, em, original, data, shapes, world, rank, dev, elapsed, pretrain):
    """Steps for the elastic run (and each from-scratch model): the wanted tokens, cut to the time left."""
    per_step = a.batch * a.seq * world
    want = a.train_tokens if a.train_tokens else (a.train_pct / 100 * pretrain if pretrain else 10**9)
    t0 = time.perf_counter()
    probe_em = E.ElasticLlama(copy.deepcopy(base), em.space)
    pcfg = E.ElasticTrainConfig(steps=10**6, lr=a.lr, warmup_steps=20, sampling=a.sampling, full_weight=a.full_weight,
                                 lm_weight=a.lm_weight)
    E.train_elastic(probe_em, data, pcfg, teacher=original, stop_after=2, quiet=True)  # warm-up
    el = E.train_elastic(probe_em, data, pcfg, teacher=original, stop_after=3, quiet=True)["seconds"] / 3
    del probe_em
    sc = []
    for sub in shapes:
        fresh = type(base)(E.export(em, sub).config).to(dev)
        train_scratch(fresh, data, 1, a.scratch_lr, 1e9, rank, world, dev)  # warm-up
        _sync(dev)
        t = time.perf_counter()
        train_scratch(fresh, data, 3, a.scratch_lr, 1e9, rank, world, dev)
        _sync(dev)
        sc.append((time.perf_counter() - t) / 3)
        del fresh
    probe_s = time.perf_counter() - t0
    left = a.wall_seconds - a.reserve_seconds - elapsed - probe_s
    afford = int(0.95 * left / (el + sum(sc)))
    steps = int(_bcast(max(4, min(math.ceil(want / per_step), afford)), world, dev))
    return steps, {"wanted_tokens": want, "tokens_per_step": per_step, "elastic_step_s": el, "scratch_step_s": sc,
                   "probe_s": probe_s, "seconds_left_for_training": left, "affordable_steps": afford, "steps": steps,
                   "cut_by_time": afford < math.ceil(want / per_step)}


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
        train_tok, test_tok, calib_tok = rng.integers(0, 512, 20_000), rng.integers(0, 512, 4_000), rng.integers(0, 512, 4_000)
    else:
        base = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
        meta = Path(a.model) / "reflm.json"
        pretrain = a.pretrain_tokens or (json.loads(meta.read_text()).get("tokens_seen") if meta.is_file() else None)
        train_tok, test_tok, calib_tok = E.read_tokens(a.train), E.read_tokens(a.test), E.read_tokens(a.calib)
    vocab = base.config.vocab_size
    for name, t in (("train", train_tok), ("test", test_tok), ("calib", calib_tok)):
        if int(t.max()) >= vocab:
            raise SystemExit(f"--{name} has token id {int(t.max())} >= the model's vocab_size {vocab}: wrong tokenizer")
    base = base.to(dev).eval()
    base.config._attn_implementation = "sdpa"
    original = copy.deepcopy(base).requires_grad_(False)  # the un-permuted teacher and speed reference
    data = E.TokenBatches(train_tok, a.batch, a.seq, seed=0)
    windows = E.eval_windows(test_tok, a.seq, 16, a.eval_tokens)
    calib = E.eval_windows(calib_tok, a.seq, 16, a.calib_tokens)  # validation split: held out, not the test set
    router_windows = calib[:4]  # the surrogate's measured losses
    shape = E.families.shape_of(base)

    # 1 importance + permutation -------------------------------------------------------------
    t = time.perf_counter()
    imp_calib = [data(10**9 + i)[:, :-1] for i in range(4 if a.smoke else 16)]
    em = E.make_elastic(base, imp_calib, embedding=True, depth=True, quiet=quiet)
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

    # plan: how many tokens fit this call ---------------------------------------------------------
    shapes = [em.uniform(f) for f in a.scratch_shapes]
    elapsed = _bcast(time.perf_counter() - t_start, world, dev)
    steps, plan = plan_tokens(a, base, em, original, data, shapes, world, rank, dev, elapsed, pretrain)

    # 3 elastic training --------------------------------------------------------------------------
    t = time.perf_counter()
    cfg = E.ElasticTrainConfig(steps=steps, lr=a.lr, warmup_steps=min(20, steps // 10 + 1), sampling=a.sampling,
                               full_weight=a.full_weight, lm_weight=a.lm_weight)
    budget = max(10.0, a.wall_seconds - a.reserve_seconds - (time.perf_counter() - t_start)
                 - steps * sum(plan["scratch_step_s"]))
    res = E.train_elastic(em, data, cfg, teacher=original, time_budget_s=_bcast(budget, world, dev), quiet=quiet)
    train_tokens = res["tokens"]
    phases["train_s"] = time.perf_counter() - t

    # 4 baseline (b): from scratch on the same tokens ----------------------------------------------
    t = time.perf_counter()
    scratch = {}
    scratch_budget = _bcast(max(0.0, a.wall_seconds - a.reserve_seconds - (t - t_start)), world, dev)
    phases["scratch_budget_s"] = scratch_budget
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
    t = time.perf_counter()
    elastic_ppl = {str(s): E.perplexity(em, windows, s) for s in uniform}
    phases["eval_s"] = time.perf_counter() - t

    # 5 latency table on this device, and every uniform sub-network's whole forward ------------------
    t = time.perf_counter()
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    wl = E.Workload(batch=a.lut_batch, seq=a.lut_seq, mode="prefill", dtype=str(dt).split(".")[1])
    em16 = E.ElasticLlama(copy.deepcopy(em.model).to(dt), em.space)
    table = E.measure_latency_table(em16, wl, warmup=1 if a.smoke else 3, repeat=2 if a.smoke else 10, quiet=quiet)
    atomic_write_text(out / "latency_table.json", table.to_json())
    ids = torch.randint(0, vocab, (a.lut_batch, a.lut_seq), device=dev)
    meas: dict[str, float] = {}

    def remeasure(sub):
        with em16.use(sub):
            return timed_forward(em16.model, ids, a.smoke, repeat=10)

    def measured(sub):  # one timing per sub-network, reused: what route() and the sweep call "measured"
        if str(sub) not in meas:
            meas[str(sub)] = remeasure(sub)
        return meas[str(sub)]

    for s in uniform:
        measured(s)
    phases["latency_s"] = time.perf_counter() - t

    # 6 static router ------------------------------------------------------------------------------
    t = time.perf_counter()
    rcfg = E.RouterTrainConfig(steps=a.router_steps, surrogate_samples=16 if a.smoke else 128)
    router, rstats = E.train_static_router(em, table, router_windows, rcfg, quiet=quiet)
    router.save(out / "static_router.safetensors")
    sweep, noise = router_sweep(em, router, table, uniform, meas, measured, remeasure, elastic_ppl, windows, calib)
    phases["router_s"] = time.perf_counter() - t

    # 7 dynamic router -----------------------------------------------------------------------------
    t = time.perf_counter()
    dyn_data = E.TokenBatches(train_tok, max(1, a.batch // 4), a.seq, seed=7)
    dyn, dstats = E.train_dynamic_router(em, table, dyn_data, E.DynamicTrainConfig(steps=a.dynamic_steps), quiet=quiet)
    dynamic = dynamic_point(em, em16, dyn, dstats, table, windows, ids, timed_forward, a.smoke, dev)
    dynamic["full_measured_ms"] = meas[str(em.full())] * 1e3
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
                             "stopped": res["stopped"], "world_size": world, "full_weight": a.full_weight,
                             "loss_first": res["history"][0] if res["history"] else None,
                             "loss_last": res["history"][-1] if res["history"] else None},
        **sweep_metrics(sweep, noise, full_key), "plan": plan,
        "full_measured_ms": meas[full_key] * 1e3, "smallest_measured_ms": meas[str(em.smallest())] * 1e3,
        "lut_full_ms": table.cost(em.full()) * 1e3, "lut_smallest_ms": table.cost(em.smallest()) * 1e3,
        "phases_s": phases, "total_s": time.perf_counter() - t_start,
    }
    data_files = {k: ("random" if a.smoke else str(Path(getattr(a, k)).resolve().relative_to(ROOT))
                      if Path(getattr(a, k)).resolve().is_relative_to(ROOT) else getattr(a, k)) for k in ("train", "test", "calib")}
    config = {"model": "smoke" if a.smoke else a.model, "shape": shape, "batch": a.batch, "seq": a.seq, "lr": a.lr,
              "data": data_files, "data_tokens": {"train": len(train_tok), "test_eval": sum(w[:, 1:].numel() for w in windows),
                                                  "calib": sum(w[:, 1:].numel() for w in calib)},
              "sampling": a.sampling, "train_config": res["config"], "workload": wl.__dict__, "eval_tokens": a.eval_tokens,
              "importance": {"depth": em.importance.layers.tolist(), "embedding_top8": em.importance.embedding.topk(8).indices.tolist()}}
    write_results("elastic_flextron", config, metrics, baseline={"pruned_only": pruned, "scratch": scratch}, out_dir=out)
    write_plot(out / "elastic_flextron.png", lambda p: plot(p, points, sweep, dynamic, exported))
    print(json.dumps({"ppl_original": ppl_orig, "tokens": train_tokens, "pct": metrics["elastic_training"]["pct_of_pretraining"],
                      "meets": metrics["router_meets_all_measured"], "router>=best_uniform": metrics["router_at_least_best_uniform"],
                      "dynamic_ms": dynamic["measured_ms"], "total_s": metrics["total_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
