"""H2O on the GPU: memory, throughput and overheads against the full cache (and kvpress).

Model: a Llama-architecture LM of 1.35B parameters with random bf16 weights (hidden 2048,
24 layers, 16 heads of 128, MHA, SwiGLU 5504, vocab 32000): speed does not depend on the weights.

Parts (all in one run, baselines measured in the same run):
  decode     one decode step at equal cache length L: plain SDPA attention vs attention + H2O
             column sums (+ score accumulation and eviction), op level and whole model step.
  prefill    peak memory and time of the prompt forward: SDPA (DynamicCache) vs H2O 20% (scores
             + per-layer eviction); kvpress ObservedAttentionPress (eager attention) beside them.
  throughput prompt P, 256 new tokens, greedy; batch doubling until out of memory; full cache vs
             H2O 20%. Prefill runs in micro-batches (same for both), decoding on the whole batch.

Usage (GPU):  python benchmarks/kv/speed.py --out $OUT [--parts decode,prefill,throughput]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import types
from pathlib import Path

import torch

from anybudget.io import results_dir, write_results
from anybudget.kv import H2OCache, LocalCache, enable
from anybudget.kv.attention import attention_with_colsum, masked_sdpa
from anybudget.measure import host_time, latency, peak_memory

ROOT = Path(__file__).resolve().parents[2]

GiB = 2**30
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # CPU only for --smoke


def build_model(max_pos=20000, smoke=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 vocab_size=100) if smoke else
            dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, vocab_size=32000))
    cfg = LlamaConfig(max_position_embeddings=max_pos, **dims)
    torch.manual_seed(0)
    with torch.device(DEV):
        model = LlamaForCausalLM(cfg).to(torch.float32 if smoke else torch.bfloat16).eval()
    model.config._attn_implementation = "sdpa"
    return model, cfg


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def cleanup():
    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
def part_decode(model, cfg, out, smoke=False):
    """Decode-step overhead of H2O scores at equal cache length."""
    res = []
    H, D = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    for B, L in ((1, 64), (2, 32)) if smoke else ((1, 4096), (16, 2048), (16, 4096), (64, 2048)):
        q = torch.randn(B, H, 1, D, device=DEV, dtype=torch.bfloat16)
        k = torch.randn(B, H, L, D, device=DEV, dtype=torch.bfloat16)
        v = torch.randn(B, H, L, D, device=DEV, dtype=torch.bfloat16)
        scores = torch.zeros(B, H, L, device=DEV)
        t_sdpa = latency(lambda: masked_sdpa(q, k, v), repeat=10).median_s

        def h2o():  # as H2OCache runs it: the column sums added into the running scores
            o, _ = attention_with_colsum(q, k, v, colsum_out=scores)
            return o

        t_h2o = latency(h2o, repeat=10).median_s
        o_ref = masked_sdpa(q, k, v).float()
        o_h2o = h2o().float()
        rel = ((o_h2o - o_ref).norm() / o_ref.norm()).item()
        res.append({"batch": B, "cache_len": L, "sdpa_ms": t_sdpa * 1e3, "h2o_attn_ms": t_h2o * 1e3,
                    "overhead": t_h2o / t_sdpa - 1, "rel_err_vs_sdpa": rel,
                    "host_us_sdpa": host_time(lambda: masked_sdpa(q, k, v), warmup=10, repeat=200) * 1e6,
                    "host_us_h2o": host_time(h2o, warmup=10, repeat=200) * 1e6})
        print("decode attn", res[-1], flush=True)
        del q, k, v, scores
        cleanup()
    # Whole model step at equal cache length. "local" (LocalCache at the same token budget) runs
    # the same budgeted cache with plain SDPA and no scores, so h2o / local - 1 is the overhead of
    # score accumulation and heavy-hitter eviction alone; DynamicCache grows by concatenation.
    # The three caches are built first and timed in interleaved rounds (order rotating), so drift
    # of the host (these steps are launch-bound at small batch) hits all three alike.
    from transformers import DynamicCache

    steps = []
    rounds, per_round = (2, 2) if smoke else (9, 5)
    for B, L in ((2, 64),) if smoke else ((1, 4096), (16, 2048), (64, 1024)):
        ids = torch.randint(0, cfg.vocab_size, (B, L), device=DEV)
        enable(model)
        caches = {"full": DynamicCache(), "local": LocalCache(L), "h2o": H2OCache(L)}
        pos = {}
        with torch.no_grad():
            for name, cache in caches.items():
                for s in range(0, L, 512):  # build the cache in chunks (memory)
                    model(input_ids=ids[:, s:s + 512], past_key_values=cache, logits_to_keep=1)
                pos[name] = L
            nxt = ids[:, -1:]

            def step(name):
                p = torch.full((B, 1), pos[name], device=DEV)
                model(input_ids=nxt, past_key_values=caches[name], position_ids=p, logits_to_keep=1)
                pos[name] += 1

            names = list(caches)
            for name in names:  # warm-up
                for _ in range(3):
                    step(name)
            times = {n: [] for n in names}
            for r in range(rounds):
                for name in names[r % 3:] + names[:r % 3]:
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(per_round):
                        step(name)
                    sync()
                    times[name].append((time.perf_counter() - t0) / per_round)
        rows = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
        steps.append({"batch": B, "cache_len": L, "full_step_ms": rows["full"] * 1e3,
                      "local_step_ms": rows["local"] * 1e3, "h2o_step_ms": rows["h2o"] * 1e3,
                      "overhead": rows["h2o"] / rows["full"] - 1,
                      "score_overhead_vs_local": rows["h2o"] / rows["local"] - 1,
                      "rounds_ms": {n: [x * 1e3 for x in t] for n, t in times.items()}})
        print("decode step", {k: v for k, v in steps[-1].items() if k != "rounds_ms"}, flush=True)
        del caches
        cleanup()
    out["decode_attention"] = res
    out["decode_step"] = steps


# ------------------------------------------------------------------------------------------------
def part_kernels(out):
    """Triton kernels vs the fp32 reference at realistic bf16 shapes, and their time vs SDPA."""
    from anybudget.kv.attention import attention_with_colsum_reference
    from anybudget.kv.attention import triton_attention_with_colsum as attention_with_colsum_triton

    rows = []
    for B, Hq, Hkv, Lq, Lk, D in ((1, 16, 16, 4096, 4096, 128), (1, 32, 8, 8192, 8192, 64),
                                  (16, 16, 16, 1, 4096, 128), (64, 32, 8, 1, 2048, 64)):
        g = torch.Generator(device=DEV).manual_seed(B * Lk)
        q = torch.randn(B, Hq, Lq, D, device=DEV, dtype=torch.bfloat16, generator=g)
        k = torch.randn(B, Hkv, Lk, D, device=DEV, dtype=torch.bfloat16, generator=g)
        v = torch.randn(B, Hkv, Lk, D, device=DEV, dtype=torch.bfloat16, generator=g)
        o1, c1 = attention_with_colsum_triton(q, k, v)
        o2, c2 = attention_with_colsum_reference(q.float(), k.float(), v.float(), chunk_size=256)
        row = {"B": B, "Hq": Hq, "Hkv": Hkv, "Lq": Lq, "Lk": Lk, "D": D,
               "rel_err_out": ((o1.float() - o2).norm() / o2.norm()).item(),
               "rel_err_colsum": ((c1 - c2).norm() / c2.norm()).item()}
        del o2, c2
        cleanup()
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
            q, k, v, is_causal=Lq > 1, enable_gqa=Hq != Hkv)
        row["sdpa_ms"] = latency(sdpa, repeat=10).median_s * 1e3
        row["triton_ms"] = latency(lambda: attention_with_colsum_triton(q, k, v), repeat=10).median_s * 1e3
        row["time_ratio"] = row["triton_ms"] / row["sdpa_ms"]
        for name, fn in (("sdpa", sdpa), ("triton", lambda: attention_with_colsum_triton(q, k, v))):
            cleanup()
            r, extra = peak_memory(fn)
            row[f"{name}_extra_mib"] = (extra or 0) / 2**20
            del r
        rows.append(row)
        print("kernel", row, flush=True)
        del q, k, v, o1, c1
        cleanup()
    out["kernels"] = rows


# ------------------------------------------------------------------------------------------------
def _kvpress_press():
    """ObservedAttentionPress without importing kvpress/__init__ (its other presses need datasets, ...)."""
    import importlib.util

    if "kvpress.presses.observed_attention_press" in sys.modules:
        return sys.modules["kvpress.presses.observed_attention_press"].ObservedAttentionPress
    spec = importlib.util.find_spec("kvpress")
    if spec is None:
        raise ImportError("kvpress is not installed")
    pkg = types.ModuleType("kvpress")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["kvpress"] = pkg
    from kvpress.presses.observed_attention_press import ObservedAttentionPress

    return ObservedAttentionPress


def part_prefill(model, cfg, out, lengths=(4096, 8192, 16384)):
    from transformers import DynamicCache

    rows = []
    for n in lengths:
        ids = torch.randint(0, cfg.vocab_size, (1, n), device=DEV)
        row = {"prompt": n}
        for name in ("sdpa", "h2o_20", "kvpress_observed_attention"):
            cleanup()
            try:
                if name == "sdpa":
                    model.set_attn_implementation("sdpa")
                    run = lambda: model(input_ids=ids, past_key_values=DynamicCache(), logits_to_keep=1)  # noqa: E731
                elif name == "h2o_20":
                    enable(model)
                    run = lambda: model(input_ids=ids, past_key_values=H2OCache("20%"), logits_to_keep=1)  # noqa: E731
                else:
                    press = _kvpress_press()(compression_ratio=0.8)
                    model.set_attn_implementation("eager")

                    def run():
                        with press(model):
                            # kvpress reads cache_position from the layer kwargs (transformers < 5.3 passed it)
                            return model(input_ids=ids, past_key_values=DynamicCache(), logits_to_keep=1,
                                         output_attentions=True, cache_position=torch.arange(n, device=DEV))
                with torch.no_grad():
                    run()  # warm-up
                    cleanup()
                    sync()
                    t0 = time.perf_counter()
                    o, extra = peak_memory(run)  # synchronizes before returning
                    row[f"{name}_s"] = time.perf_counter() - t0
                    row[f"{name}_peak_gib"] = (extra or 0) / GiB
                    del o
            except torch.OutOfMemoryError:
                row[f"{name}_s"] = None
                row[f"{name}_peak_gib"] = "out of memory"
            except Exception as e:  # kvpress version mismatch etc.: record, don't hide
                row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
            cleanup()
        if isinstance(row.get("h2o_20_peak_gib"), float) and isinstance(row.get("sdpa_peak_gib"), float) and row["sdpa_peak_gib"] > 0:
            row["h2o_vs_sdpa_peak"] = row["h2o_20_peak_gib"] / row["sdpa_peak_gib"]
            row["h2o_vs_sdpa_time"] = row["h2o_20_s"] / row["sdpa_s"]
        rows.append(row)
        print("prefill", row, flush=True)
    model.set_attn_implementation("sdpa")
    out["prefill"] = rows


# ------------------------------------------------------------------------------------------------
def _merge(caches):
    """Concatenate micro-batch caches along the batch dimension (same prompt length)."""
    first = caches[0]
    for li, layer in enumerate(first.layers):
        others = [c.layers[li] for c in caches]
        if hasattr(layer, "length"):  # BudgetLayer
            for name in layer._buffers():
                setattr(layer, name, torch.cat([getattr(o, name)[:, :, : o.length] for o in others], 0))
            layer.real_seen = torch.cat([o.real_seen for o in others])
            layer.batch = layer.keys.shape[0]
        else:
            layer.keys = torch.cat([o.keys for o in others], 0)
            layer.values = torch.cat([o.values for o in others], 0)
    return first


def generate_run(model, cfg, policy, B, P, new_tokens, micro):
    from transformers import DynamicCache

    make = (lambda: DynamicCache()) if policy == "full" else (lambda: H2OCache("20%"))
    ids = torch.randint(0, cfg.vocab_size, (B, P), device=DEV)
    cleanup()
    marks = {}

    @torch.no_grad()
    def run():
        sync()
        marks["t0"] = time.perf_counter()
        parts, nxt = [], []
        for s in range(0, B, micro):
            c = make()
            lo = model(input_ids=ids[s:s + micro], past_key_values=c, logits_to_keep=1).logits
            nxt.append(lo[:, -1].argmax(-1, keepdim=True))
            parts.append(c)
        cache = _merge(parts) if len(parts) > 1 else parts[0]
        del parts
        tok = torch.cat(nxt)
        sync()
        marks["t1"] = time.perf_counter()
        for i in range(new_tokens - 1):
            pos = torch.full((B, 1), P + i, device=DEV)
            lo = model(input_ids=tok, past_key_values=cache, position_ids=pos, logits_to_keep=1).logits
            tok = lo[:, -1].argmax(-1, keepdim=True)
        sync()
        marks["t2"] = time.perf_counter()
        return cache

    cache, extra = peak_memory(run)
    t0, t1, t2 = marks["t0"], marks["t1"], marks["t2"]
    kv = (cache.used_bytes() if policy != "full" else
          sum(layer.keys.numel() * 2 * layer.keys.element_size() for layer in cache.layers)) / GiB
    del cache
    cleanup()
    return {"policy": policy, "batch": B, "prompt": P, "new_tokens": new_tokens, "prefill_s": t1 - t0,
            "decode_s": t2 - t1, "tokens_per_s": B * new_tokens / (t2 - t0), "decode_tokens_per_s": B * (new_tokens - 1) / (t2 - t1),
            "peak_gib": (extra or 0) / GiB, "final_kv_gib": kv}


def part_throughput(model, cfg, out, prompts=(2048, 4096), new_tokens=256, deadline=None):
    enable(model)
    rows = []
    for P in prompts:
        for policy in ("full", "h2o"):
            B = 8
            while True:
                if deadline and time.time() > deadline:
                    print("deadline reached, stopping sweep", flush=True)
                    out["throughput"] = rows
                    out["throughput_truncated"] = True
                    return
                micro = max(1, min(B, (8 if P <= 2048 else 4)))
                try:
                    r = generate_run(model, cfg, policy, B, P, new_tokens, micro)
                except torch.OutOfMemoryError:
                    cleanup()
                    rows.append({"policy": policy, "batch": B, "prompt": P, "oom": True})
                    print("OOM", policy, B, P, flush=True)
                    break
                rows.append(r)
                print("gen", json.dumps(r), flush=True)
                B *= 2
    out["throughput"] = rows


def summarize(out):
    s = {}
    for P in sorted({r["prompt"] for r in out.get("throughput", [])}):
        best = {}
        for pol in ("full", "h2o"):
            ok = [r for r in out["throughput"] if r["prompt"] == P and r["policy"] == pol and not r.get("oom")]
            if ok:
                top = max(ok, key=lambda r: r["batch"])
                best[pol] = {"max_batch": top["batch"], "tokens_per_s_at_max_batch": top["tokens_per_s"],
                             "peak_gib_at_max_batch": top["peak_gib"]}
        if len(best) == 2:
            best["max_batch_ratio"] = best["h2o"]["max_batch"] / best["full"]["max_batch"]
            best["throughput_ratio"] = best["h2o"]["tokens_per_s_at_max_batch"] / best["full"]["tokens_per_s_at_max_batch"]
        s[f"prompt_{P}"] = best
    return s


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(results_dir("kv_speed")))
    ap.add_argument("--parts", default="decode,prefill,throughput")
    ap.add_argument("--prompts", default="2048,4096")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prefill-lengths", default="4096,8192,16384")
    ap.add_argument("--minutes", type=float, default=8.0, help="stop the throughput sweep after this")
    ap.add_argument("--name", default="kv_speed")
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the script runs")
    args = ap.parse_args(argv)
    deadline = time.time() + args.minutes * 60
    model, cfg = build_model(smoke=args.smoke)
    n_params = sum(p.numel() for p in model.parameters())
    out = {}
    parts = args.parts.split(",")
    if "kernels" in parts:
        part_kernels(out)
    if "decode" in parts:
        part_decode(model, cfg, out, smoke=args.smoke)
    if "kvpress" in parts:
        part_prefill(model, cfg, out, tuple(int(x) for x in args.prefill_lengths.split(",")))
    if "prefill" in parts:
        part_prefill(model, cfg, out, tuple(int(x) for x in args.prefill_lengths.split(",")))
    if "throughput" in parts:
        part_throughput(model, cfg, out, tuple(int(p) for p in args.prompts.split(",")), args.new_tokens, deadline)
        out["summary"] = summarize(out)
    config = {"model": "LlamaForCausalLM, random bf16 weights", "params": n_params, "hidden": 2048, "layers": 24,
              "heads": 16, "kv_heads": 16, "head_dim": 128, "h2o_budget": "20% (10% heavy + 10% recent)",
              "attention_path": "Triton kernels (anybudget.kv.kernels_triton) when triton imports on CUDA, else the PyTorch reference",
              "kvpress": "ObservedAttentionPress(compression_ratio=0.8), eager attention"}
    path = write_results(args.name, config, out, baseline={"full_cache": "DynamicCache + SDPA"}, out_dir=args.out)
    print("wrote", path, json.dumps(out.get("summary", {}), indent=1), flush=True)


if __name__ == "__main__":
    main()
