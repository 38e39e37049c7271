"""Decode attention with H2O column sums: split-K Triton kernel vs the two-pass kernels vs SDPA.

One decoding step's attention (1 query per sequence against the cache), bf16 on the GPU, at the
shapes of ``speed.py``'s decode table (1.35B Llama: 16 MHA heads of 128) plus a GQA shape. Each
H2O variant returns the output and per-key column sums and accumulates them into the running
scores, as the cache does; SDPA computes the output only. Times are medians of CUDA-event timings
in one run; errors are against the float32 PyTorch reference.

Usage:  python benchmarks/kv/decode_kernel.py [--out-dir benchmarks/results/kv] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from anybudget.io import results_dir, write_results
from anybudget.kv.attention import attention_with_colsum_reference, masked_sdpa
from anybudget.measure import host_time, latency

ROOT = Path(__file__).resolve().parents[2]


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=str(results_dir("kv_decode_kernel", ROOT / "benchmarks/results")))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU, Triton interpreter)")
    args = ap.parse_args(argv)
    from anybudget.kv.decode_triton import decode_attention_with_colsum_triton
    from anybudget.kv.kernels_triton import attention_with_colsum_triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    shapes = [(1, 2, 2, 64, 64)] if args.smoke else [
        (1, 16, 16, 4096, 128), (16, 16, 16, 2048, 128), (16, 16, 16, 4096, 128), (64, 16, 16, 2048, 128),
        (1, 32, 8, 8192, 128), (16, 32, 8, 4096, 128)]
    repeat = 2 if args.smoke else 20
    rows = []
    for B, Hq, Hkv, L, D in shapes:
        g = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(B, Hq, 1, D, device=dev, dtype=dtype, generator=g)
        k = torch.randn(B, Hkv, L, D, device=dev, dtype=dtype, generator=g)
        v = torch.randn(B, Hkv, L, D, device=dev, dtype=dtype, generator=g)
        scores = torch.zeros(B, Hkv, L, device=dev)
        o_ref, c_ref = attention_with_colsum_reference(q.float(), k.float(), v.float())

        def two_pass():
            o, c = attention_with_colsum_triton(q, k, v, decode_kernel=False)
            scores.add_(c)
            return o, c

        def split_k():
            o, c = decode_attention_with_colsum_triton(q, k, v, fused=False)
            scores.add_(c)
            return o, c

        def fused():  # one launch, sums added into the scores inside the kernel
            return decode_attention_with_colsum_triton(q, k, v, fused=True, colsum_out=scores)

        def default():  # what H2OCache runs: the dispatch's choice, sums added in the kernel
            return decode_attention_with_colsum_triton(q, k, v, colsum_out=scores)

        t_sdpa = latency(lambda: masked_sdpa(q, k, v), repeat=repeat).median_s
        t_two = latency(two_pass, repeat=repeat).median_s
        t_split = latency(split_k, repeat=repeat).median_s
        t_fused = latency(fused, repeat=repeat).median_s
        t_default = latency(default, repeat=repeat).median_s
        sweep = {}
        for bn, waves, stages in [(bn, w, st) for bn in (64, 128) for w in (2, 4, 8) for st in (2, 3)] if not args.smoke else [(64, 2, 2)]:
            def run(bn=bn, waves=waves, stages=stages):
                o, c = decode_attention_with_colsum_triton(q, k, v, block_n=bn, split_waves=waves, num_stages=stages,
                                                           fused=False)
                scores.add_(c)
            sweep[f"block_n={bn},waves={waves},stages={stages}"] = latency(run, repeat=repeat).median_s * 1e3
        best = min(sweep, key=sweep.get)
        o2, c2 = two_pass()
        o3, c3 = split_k()
        o5, c5 = decode_attention_with_colsum_triton(q, k, v, fused=True)
        kv_bytes = 2 * k.numel() * k.element_size()
        row = {"batch": B, "Hq": Hq, "Hkv": Hkv, "cache_len": L, "D": D,
               "sdpa_ms": t_sdpa * 1e3, "two_pass_ms": t_two * 1e3, "split_k_ms": t_split * 1e3,
               "two_pass_vs_sdpa": t_two / t_sdpa, "split_k_vs_sdpa": t_split / t_sdpa,
               "fused_ms": t_fused * 1e3, "fused_vs_sdpa": t_fused / t_sdpa,
               "default_ms": t_default * 1e3, "default_vs_sdpa": t_default / t_sdpa,
               "default_is_fused": bool(2 * B * Hkv >= (torch.cuda.get_device_properties(0).multi_processor_count if dev == "cuda" else 8)),
               "host_us": {name: host_time(f) * 1e6 for name, f in
                           (("sdpa", lambda: masked_sdpa(q, k, v)), ("split_k", split_k), ("fused", fused), ("default", default))},
               "split_k_sweep_ms": sweep, "split_k_best": best, "split_k_best_ms": sweep[best],
               "split_k_best_vs_sdpa": sweep[best] * 1e-3 / t_sdpa, "split_k_kv_gbps": kv_bytes / t_split / 1e9, "sdpa_kv_gbps": kv_bytes / t_sdpa / 1e9,
               "rel_err_out": {"sdpa": rel(masked_sdpa(q, k, v), o_ref), "two_pass": rel(o2, o_ref), "split_k": rel(o3, o_ref),
                               "fused": rel(o5, o_ref)},
               "rel_err_colsum": {"two_pass": rel(c2, c_ref), "split_k": rel(c3, c_ref), "fused": rel(c5, c_ref)}}
        rows.append(row)
        print(f"B {B:3d} Hq/Hkv {Hq}/{Hkv} L {L:5d}: SDPA {row['sdpa_ms']:.3f} ms, two-pass {row['two_pass_ms']:.3f} "
              f"({row['two_pass_vs_sdpa']:.2f}x), split-K {row['split_k_ms']:.3f} ({row['split_k_vs_sdpa']:.2f}x), "
              f"fused {row['fused_ms']:.3f} ({row['fused_vs_sdpa']:.2f}x), host us {row['host_us']}, "
              f"best {best} {sweep[best]:.3f} ({row['split_k_best_vs_sdpa']:.2f}x); "
              f"err out {row['rel_err_out']['split_k']:.1e} colsum {row['rel_err_colsum']['split_k']:.1e}", flush=True)
        del q, k, v, scores
        if dev == "cuda":
            torch.cuda.empty_cache()
    config = {"dtype": str(dtype), "op": "attention of 1 query per sequence + column sums accumulated into the scores (SDPA: output only)",
              "timing": f"median of {repeat} timed calls (anybudget.measure.latency)", "smoke": args.smoke}
    path = write_results("kv_decode_kernel_smoke" if args.smoke else "kv_decode_kernel", config, {"rows": rows}, out_dir=args.out_dir)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
