"""Quality of each KV policy on the reference LM: streaming perplexity on the held-out test split.

The embedded reference LM (src/anybudget/assets/reflm) streams consecutive 1024-token windows of
v1's test documents in v2 tokens (benchmarks/zoo/data_v2/v1_test.u16.xz, never trained on) one token per step through
each budgeted cache; every prediction is made from the evicted cache as it stands then.

Usage:  python benchmarks/kv/quality.py [--num-seqs 32] [--out benchmarks/results/kv]
Writes  <out>/kv_quality.json and <out>/kv_quality.png (perplexity against budget per policy).
"""

from __future__ import annotations

import argparse
import lzma
from pathlib import Path

import numpy as np
import torch

from anybudget.io import model_identity, results_dir, write_results
from anybudget.kv.evaluate import evaluate_policies, plot_results

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "src/anybudget/assets/reflm"))
    ap.add_argument("--data", default=str(ROOT / "benchmarks/zoo/data_v2/v1_test.u16.xz"))
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--num-seqs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budgets", default="50%,20%,10%")
    ap.add_argument("--policies", default="full,h2o,streaming,local,random")
    ap.add_argument("--out", default=str(results_dir("kv_quality", ROOT / "benchmarks/results")))
    ap.add_argument("--name", default="kv_quality")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # float32 on both: the comparison between policies should not be blurred by bf16 rounding.
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device).eval()
    ids = torch.from_numpy(np.frombuffer(lzma.decompress(Path(args.data).read_bytes()), dtype=np.uint16).astype(np.int64))
    res = evaluate_policies(model, ids, policies=args.policies.split(","), budgets=args.budgets.split(","),
                            seq_len=args.seq_len, num_seqs=args.num_seqs, batch_size=args.batch_size,
                            device=device, quiet=args.quiet)
    full = next(r for r in res if r.policy == "full")
    table = [{"policy": r.policy, "budget": r.budget, "ppl": r.ppl, "nll": r.nll, "ppl_ratio_vs_full": r.ppl / full.ppl,
              "tokens": r.tokens, "kept_fraction": r.kept_fraction} for r in res]
    for t in table:
        print(f"{t['policy']:<10} {t['budget']:>5} ppl {t['ppl']:8.3f}  x{t['ppl_ratio_vs_full']:.3f}  kept {t['kept_fraction']:.1%}")
    rel = lambda p: str(Path(p).resolve().relative_to(ROOT)) if Path(p).resolve().is_relative_to(ROOT) else str(p)
    params = sum(p.numel() for p in model.parameters())
    cfg = {"model": rel(args.model), "model_id": model_identity(args.model), "model_params": params, "data": rel(args.data),
           "seq_len": args.seq_len, "num_seqs": args.num_seqs, "feed": "one token per step (streaming)",
           "dtype": "float32", "h2o_recent_ratio": 0.5, "streaming_sink_tokens": 4, "random_seed": 0}
    path = write_results(args.name, cfg, {"results": table}, baseline={"full_ppl": full.ppl}, out_dir=args.out)
    plot_results(res, Path(args.out) / f"{args.name}.png",
                 title=f"reference LM ({params / 1e6:.1f}M), {Path(args.data).name}, "
                       f"{args.num_seqs}x{args.seq_len} tokens streamed")
    print("wrote", path)


if __name__ == "__main__":
    main()
