"""One layer's static H2O decoding step on the GPU: time, bandwidth and kernels, per variant.

The serving benchmark times whole ``generate`` calls; this script isolates what the budgeted
cache adds to a layer of the step (write the new slot, attend over the slots, add the scores,
evict: ``benchmarks/kv/step_bytes.py``'s ``layer_step``) at the serving model's layer shape (16
KV heads of 128, bf16, 20% of prompt + 128), compiled by inductor with CUDA graphs as
transformers compiles the step (``mode="reduce-overhead"``, dynamic shapes), for each way of
forming q K^T and P V (``decode_products``: ``reduce`` = fused reductions, opt-in;
``matmul`` = cuBLAS bmm, the default; ``triton`` = the Triton decode kernel, output and scores
from one read of K and V, as one custom op in the graph, opt-in; ``triton_op`` = the same kernels
as a ``torch.library.triton_op``, launched by inductor's code, not listed by default). For each it reports ms per
layer-step, the bytes the
step must move (K and V once, scores, positions, validity) over that time, the same against
SDPA's masked attention over the same slots (output only: the bandwidth a library kernel reaches
here) and the copy bandwidth, and the CUDA kernels of one step with their times
(``torch.profiler``), so the step's time can be attributed kernel by kernel, and the CUDA-graph
skips inductor counted while compiling it (a skipped step runs without CUDA graphs). For the
``triton`` variant on a GPU it also times the kernel's two forms alone, each captured in a CUDA
graph (``kernel_choice``: one program per (row, KV head), and split-K), and which one the op's
shape rule takes, so the rule can be checked against both.

Measured here: one layer's step (no weights, norms, MLP; the serving benchmark has the model).
Not measured: the step inside transformers' generate (``serving.py``'s ``h2o_20_triton`` row).

``--layers 24`` compiles 24 layer steps into one step (the serving model's layers without its
weights, norms and MLPs): per-layer times then include what a whole-model graph adds (one CUDA
graph for all layers); ``per_step_of_all_layers`` gives CUDA-graph replays, host kernel launches
and custom-op host calls per compiled step (``step_profile.py``).

Usage (GPU):  python benchmarks/kv/decode_step.py --out $OUT     (about 3-4 minutes on an H100)
              python benchmarks/kv/decode_step.py --out $OUT --products matmul,triton --shapes 64x2048 --layers 24
              python benchmarks/kv/decode_step.py --out $OUT --products matmul,triton,triton_op --shapes 64x2048 --layers 24
              python benchmarks/kv/decode_step.py --out $OUT --products matmul,triton
              python benchmarks/kv/decode_step.py --smoke --out /tmp/x   (CPU, seconds)
Needs no model weights (no reference LM).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

from anybudget.cudagraph import capture
from anybudget.measure import kernel_times

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()


@functools.cache
def _kv_module(name: str):
    """A sibling benchmark module (``benchmarks/kv/<name>.py``), loaded once."""
    spec = importlib.util.spec_from_file_location(f"kv_{name}", ROOT / "benchmarks" / "kv" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _step_bytes_module():
    return _kv_module("step_bytes")


def _step_profile():
    return _kv_module("step_profile")


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _time_ms(fn, n: int) -> float:
    """Mean ms per call over ``n`` calls (CUDA events; wall clock on the CPU)."""
    _sync()
    if CUDA:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / n
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) * 1e3 / n


def copy_bandwidth(nbytes: int) -> float:
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda" if CUDA else "cpu")
    b = torch.empty_like(a)
    return 2 * nbytes / (_time_ms(lambda: b.copy_(a), 10) / 1e3)


def kernel_choice(layer, q, repeat) -> dict:
    """The Triton decode kernel alone on the layer's slots, each form captured in a CUDA graph
    (no host time): ms per call of the one-launch form and of split-K, and the op's choice."""
    from anybudget.kv.decode_triton import _num_sms, decode_attention_with_colsum_triton
    from anybudget.kv.slot_decode_op import takes_fused

    B, H = layer.valid.shape[:2]
    res = {"op_takes": "fused" if takes_fused(B, H, _num_sms(q.device)) else "split_k"}
    for name, fused in (("fused", True), ("split_k", False)):
        col = layer.prio.clone()

        def call(fused=fused, col=col):
            return decode_attention_with_colsum_triton(q, layer.keys, layer.values, causal=False,
                                                       key_mask=layer.valid, colsum_out=col, fused=fused)

        graph = capture(call)  # two warm-up calls compile the kernels off the capture
        res[f"{name}_ms"] = _time_ms(graph.replay, repeat)
        del graph
    return res


def run_shape(sb, B, P, N, products, repeat, backend, mode, smoke, n_layers=1):
    H, D = (2, 16) if smoke else (16, 128)
    dtype = torch.float32 if smoke else torch.bfloat16
    dev = "cuda" if CUDA else "cpu"
    step, args, layers = sb.layer_step(batch=B, heads=H, head_dim=D, prompt=P, new_tokens=N, products=products,
                                       dtype=dtype, device=dev, layers=n_layers)
    layer = layers[0]
    compiled = torch.compile(step, backend=backend, mode=mode, dynamic=True, fullgraph=True)
    from torch._dynamo.utils import counters

    skips0 = counters["inductor"]["cudagraph_skips"]
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):  # compile, CUDA graph warm-up and recording
            compiled(*args)
        _sync()
        warm = time.perf_counter() - t0
        ms = _time_ms(lambda: compiled(*args), repeat) / n_layers
        kernels, kernel_us, kernel_count = kernel_times(lambda: compiled(*args))
        kernel_us, kernel_count = kernel_us / n_layers, kernel_count / n_layers
        launches = _step_profile().profile_calls(lambda: compiled(*args))  # replays, launches, op calls per step
        launches.pop("top_kernels")
        # Reference: SDPA's masked attention over the same slots (output only, no scores).
        q = args[0]
        mask = layer.valid[:, :, None, :]
        def sdpa():
            return torch.nn.functional.scaled_dot_product_attention(q, layer.keys, layer.values, attn_mask=mask)

        sdpa()
        sdpa_ms = _time_ms(sdpa, repeat)
        choice = None
        if products == "triton" and CUDA:
            try:  # an extra measurement: its failure must not cost the step's numbers
                choice = kernel_choice(layer, q, repeat)
            except Exception as e:  # noqa: BLE001
                choice = {"error": f"{type(e).__name__}: {e}"[:300]}
    S = layer.keys.shape[2]
    kv_bytes = 2 * layer.keys.numel() * layer.keys.element_size()
    state = B * H * S * (4 + 4 + 8 + 1)  # score read + write, position, validity
    need = kv_bytes + state
    return {"batch": B, "prompt": P, "slots": S, "products": products, "layers": n_layers, "ms_per_layer_step": ms,
            "per_step_of_all_layers": launches,
            "bytes_needed": need, "gbps": need / ms / 1e6, "sdpa_ms": sdpa_ms, "sdpa_gbps": kv_bytes / sdpa_ms / 1e6,
            "step_over_sdpa": ms / sdpa_ms, "warmup_s": warm, "kernels": kernels,
            "kernel_us_per_step": kernel_us, "kernel_count": kernel_count,
            "gbps_kernel_time": need / kernel_us / 1e3 if kernel_us else None,
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips0, "kernel_choice": choice}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (eager backend), seconds")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--products", default="reduce,matmul,triton",
                    help="comma list of decode_products variants to time (matmul is always included: the base)")
    ap.add_argument("--layers", type=int, default=1,
                    help="layer steps in one compiled step (24: the serving model's, without its weights); "
                         "times and kernels are reported per layer")
    ap.add_argument("--shapes", default=None, help="comma list of BATCHxPROMPT (default 8x2048,64x2048,1024x2048,16x8192)")
    args = ap.parse_args(argv)
    if args.layers < 1:
        raise SystemExit(f"error: --layers {args.layers}: must be >= 1")
    if not CUDA and not args.smoke:
        raise SystemExit("error: no CUDA device; use --smoke on a CPU")
    sb = _step_bytes_module()
    for knob in ("cache_size_limit", "recompile_limit"):  # one compilation per shape and variant
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    N = 128
    shapes = [(2, 24), (4, 48)] if args.smoke else [(8, 2048), (64, 2048), (1024, 2048), (16, 8192)]
    if args.shapes:
        try:
            shapes = [tuple(int(x) for x in sh.lower().split("x")) for sh in args.shapes.split(",")]
        except ValueError:
            shapes = []
        if not shapes or any(len(sh) != 2 or min(sh) < 1 for sh in shapes):
            raise SystemExit(f"error: --shapes {args.shapes!r}: expected BATCHxPROMPT[,BATCHxPROMPT...], e.g. 64x2048")
    backend, mode = ("eager", None) if args.smoke else ("inductor", "reduce-overhead")
    repeat = 2 if args.smoke else args.repeat
    bw = copy_bandwidth((1 << 20) if args.smoke else (1 << 30))
    rows = []
    variants = ["matmul"] + [p for p in args.products.split(",") if p != "matmul"]
    from anybudget.kv.attention import DECODE_PRODUCTS

    bad = [p for p in variants if p not in DECODE_PRODUCTS or p == "auto"]
    if bad:
        raise SystemExit(f"error: --products {args.products!r}: {bad} not in reduce, matmul, triton, triton_op")
    for products in variants:
        for B, P in shapes:
            try:
                r = run_shape(sb, B, P, 4 if args.smoke else N, products, repeat, backend, mode, args.smoke,
                              args.layers)
            except Exception as e:  # an opt-in variant failing must not lose the others
                if products == "matmul" or args.smoke:
                    raise
                rows.append({"batch": B, "prompt": P, "products": products, "error": f"{type(e).__name__}: {e}"[:500]})
                print("ERROR", products, B, P, e, flush=True)
                continue
            r["fraction_of_copy_bandwidth"] = r["gbps"] * 1e9 / bw
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "kernels"}), flush=True)
            for k in r["kernels"][:8]:
                print("   ", k, flush=True)
            if CUDA:
                torch.cuda.empty_cache()
    summary = {}
    for B, P in shapes:
        b = next(r for r in rows if (r["batch"], r["prompt"], r["products"]) == (B, P, "matmul"))
        summary[f"matmul_fraction_of_copy_bandwidth_b{B}_p{P}"] = b["fraction_of_copy_bandwidth"]
        for v in variants[1:]:
            a = next(r for r in rows if (r["batch"], r["prompt"], r["products"]) == (B, P, v))
            if "error" in a:
                continue
            summary[f"{v}_over_matmul_speedup_b{B}_p{P}"] = b["ms_per_layer_step"] / a["ms_per_layer_step"]
            summary[f"{v}_fraction_of_copy_bandwidth_b{B}_p{P}"] = a["fraction_of_copy_bandwidth"]
            if a["kernel_us_per_step"] and b["kernel_us_per_step"]:
                summary[f"{v}_over_matmul_kernel_time_speedup_b{B}_p{P}"] = b["kernel_us_per_step"] / a["kernel_us_per_step"]
            if a["kernel_choice"] and "fused_ms" in a["kernel_choice"]:
                kc = a["kernel_choice"]
                summary[f"{v}_kernel_alone_fraction_of_copy_bandwidth_b{B}_p{P}"] = {
                    form: a["bytes_needed"] / (kc[f"{form}_ms"] / 1e3) / bw for form in ("fused", "split_k")}
    print(json.dumps(summary, indent=1), flush=True)
    if args.out:
        from anybudget.io import write_results

        write_results("kv_decode_step", {"shapes": shapes, "heads": 2 if args.smoke else 16,
                                         "head_dim": 16 if args.smoke else 128, "new_tokens": N, "budget": "20%",
                                         "backend": backend, "mode": mode, "repeat": repeat, "smoke": args.smoke,
                                         "products": variants, "layers": args.layers,
                                         "copy_bandwidth_gbps": bw / 1e9},
                      {"rows": rows, "summary": summary}, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
