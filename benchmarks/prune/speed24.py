"""2:4 semi-structured sparse inference against dense, same run, same GPU.

  python benchmarks/prune/speed24.py --model DIR --out $OUT     # a 2:4-masked fp16 model (job_24)

Two measurements: (1) the pruned classifier itself (forward of a batch of task inputs, dense fp16
vs its prunable Linear weights as torch semi-structured sparse tensors; also the accuracy with
the sparse kernels), (2) BERT-base-sized encoder matmuls (768x768 x4, 768->3072, 3072->768 on
16384 tokens), where the tensor cores have enough work for 2:4 to show. Ratios = dense / sparse
median latency (CUDA events, anybudget.measure.latency).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
from anybudget.measure import latency
from anybudget.prune.masks import apply_mask
from anybudget.prune.sparse24 import mask_24, to_semi_structured


def matmul_speed(tokens: int = 16384, hidden: int = 768, repeat: int = 50) -> dict:
    """Dense vs 2:4 latency of one BERT-base encoder layer's six matrices (fp16)."""
    torch.manual_seed(0)
    shapes = [(hidden, hidden)] * 4 + [(4 * hidden, hidden), (hidden, 4 * hidden)]
    rows = {}
    for i, (o, k) in enumerate(shapes):
        lin = torch.nn.Linear(k, o, bias=False).half().cuda()
        apply_mask(lin, {"weight": mask_24(lin.weight)})
        x = torch.randn(tokens, k, device="cuda", dtype=torch.half)
        with torch.inference_mode():
            dense = latency(lin, x, warmup=5, repeat=repeat).median_s
        to_semi_structured(lin, {"weight": None})
        with torch.inference_mode():
            sparse = latency(lin, x, warmup=5, repeat=repeat).median_s
        rows[f"{i}:{o}x{k}"] = {"dense_ms": dense * 1e3, "sparse_ms": sparse * 1e3, "speedup": dense / sparse}
    total_d = sum(r["dense_ms"] for r in rows.values())
    total_s = sum(r["sparse_ms"] for r in rows.values())
    return {"tokens": tokens, "hidden": hidden, "matrices": rows, "layer_speedup": total_d / total_s}


def model_speed(model_dir: str, batch: dict, repeat: int = 50) -> dict:
    """Dense vs semi-structured forward of a saved 2:4-masked fp16 model on ``batch``."""
    from transformers import AutoModelForSequenceClassification

    from anybudget.prune.masks import load_mask

    mask = load_mask(Path(model_dir) / "mask.safetensors")[0]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float16).cuda().eval()
    labels = batch["labels"].cuda()
    batch = {k: v.cuda() for k, v in batch.items() if k != "labels"}
    with torch.inference_mode():
        ref = model(**batch).logits.float()
        dense = latency(lambda: model(**batch), warmup=5, repeat=repeat).median_s
        converted = to_semi_structured(model, mask)
        out = model(**batch).logits.float()
        sparse = latency(lambda: model(**batch), warmup=5, repeat=repeat).median_s
    return {"dense_ms": dense * 1e3, "sparse_ms": sparse * 1e3, "speedup": dense / sparse,
            "converted": len(converted), "prunable": len(mask),
            "max_abs_logit_diff": float((out - ref).abs().max()),
            "argmax_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
            "accuracy_dense": float((ref.argmax(-1) == labels).float().mean()),
            "accuracy_sparse_kernels": float((out.argmax(-1) == labels).float().mean()),
            "examples": int(labels.numel())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=16384)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("speed24: needs CUDA (the CPU path is the mask reference, tested in tests/prune)")
        return 0
    print(matmul_speed(args.tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
