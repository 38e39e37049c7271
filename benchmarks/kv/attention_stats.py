"""Where does the reference LM's attention go? The measurement behind the KV-quality reading.

For windows of the test split, with exact (eager) attention, and for every query position t in
the second half of the window, per layer (averaged over heads, queries and windows):
  sink_mass          attention on the first token of the window (StreamingLLM's sink)
  sink4_mass         attention on the first 4 tokens (what StreamingCache(sink_tokens=4) keeps)
  boundary_mass      attention on the document-boundary tokens visible (BOS / end-of-text, wherever
                     they are in the window: a sink need not be the window's first token)
  local20_mass       attention on the newest 20% of the t+1 visible tokens (what LocalCache keeps)
  h2o_oracle20_mass  the most a 10%-recent + 10%-heavy cache could capture for that query: the
                     recent 10% plus the query's own top-10% older keys (an upper bound for H2O)
  accumulated20_mass what H2O's rule would keep at 20% if it saw the full cache: recent 10% +
                     the 10% older keys with the largest attention accumulated over queries <= t

Usage:  python benchmarks/kv/attention_stats.py [--windows 4]  (CPU, about a minute)
"""

from __future__ import annotations

import argparse
import lzma
import math
from pathlib import Path

import numpy as np
import torch

from anybudget.io import model_identity, results_dir, write_results

ROOT = Path(__file__).resolve().parents[2]


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "src/anybudget/assets/reflm"))
    ap.add_argument("--data", default=str(ROOT / "benchmarks/zoo/data_v2/v1_test.u16.xz"))
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=16, help="evaluate every stride-th query of the second half")
    ap.add_argument("--out", default=str(results_dir("kv_attention_stats", ROOT / "benchmarks/results")))
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    ids = np.frombuffer(lzma.decompress(Path(args.data).read_bytes()), dtype=np.uint16).astype(np.int64)
    n = args.seq_len
    L = model.config.num_hidden_layers
    acc = {k: np.zeros(L) for k in ("sink_mass", "sink4_mass", "boundary_mass", "local20_mass",
                                    "h2o_oracle20_mass", "accumulated20_mass")}
    specials = {t for t in (model.config.bos_token_id, model.config.eos_token_id) if t is not None}
    count = 0
    for w in range(args.windows):
        x = torch.from_numpy(ids[w * n:(w + 1) * n])[None]
        is_boundary = torch.tensor([int(t) in specials for t in x[0]])
        att = model(input_ids=x, output_attentions=True).attentions  # L x (1, H, n, n)
        for li, a in enumerate(att):
            a = a[0]  # H, n, n
            cum = torch.cumsum(a, dim=1)  # accumulated attention each key got from queries <= t
            for t in range(n // 2, n, args.stride):
                row = a[:, t, : t + 1]  # H, t+1
                vis = t + 1
                k20 = max(1, math.ceil(0.2 * vis))
                rec = k20 // 2
                heavy = k20 - rec
                acc["sink_mass"][li] += row[:, 0].mean().item()
                acc["sink4_mass"][li] += row[:, :4].sum(-1).mean().item()
                acc["boundary_mass"][li] += row[:, is_boundary[:vis]].sum(-1).mean().item()
                acc["local20_mass"][li] += row[:, vis - k20:].sum(-1).mean().item()
                old = row[:, : vis - rec]
                top = old.topk(heavy, dim=-1).values.sum(-1)
                acc["h2o_oracle20_mass"][li] += (row[:, vis - rec:].sum(-1) + top).mean().item()
                sc = cum[:, t, : vis - rec]
                pick = sc.topk(heavy, dim=-1).indices
                acc["accumulated20_mass"][li] += (row[:, vis - rec:].sum(-1) + old.gather(-1, pick).sum(-1)).mean().item()
                if li == 0:
                    count += 1
        print(f"window {w + 1}/{args.windows}", flush=True)
    per_layer = {k: (v / count).tolist() for k, v in acc.items()}
    summary = {k: float(np.mean(v)) for k, v in per_layer.items()}
    for k, v in summary.items():
        print(f"{k:<20} {v:.3f}  per layer {[round(x, 3) for x in per_layer[k]]}")
    cfg = {"model": "anybudget reference LM", "model_id": model_identity(args.model), "windows": args.windows, "seq_len": n, "queries": "t >= n/2, every "
           f"{args.stride}th", "attention": "eager, float32", "budget": "20% of visible tokens (10% recent + 10% heavy)"}
    path = write_results("kv_attention_stats", cfg, {"mean_over_layers": summary, "per_layer": per_layer}, out_dir=args.out)
    print("wrote", path)


if __name__ == "__main__":
    main()
