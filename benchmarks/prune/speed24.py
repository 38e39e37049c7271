"""2:4 semi-structured sparse inference against dense, same run, same GPU, for each of torch's two
sparse backends (CUTLASS and cuSPARSELt), each checked for correctness against the dense product of
the same 2:4-masked weights before its time is reported.

  python benchmarks/prune/speed24.py --model .carry/prune/imp/model --out $OUT   # -> prune_speed24.json

Two measurements: (1) a classifier (forward of a batch, dense fp16 vs its prunable Linear weights
as semi-structured sparse tensors; logits agreement with the dense forward of the same masked
weights), (2) BERT-base-sized encoder matmuls (768x768 x4, 768->3072, 3072->768 on 16384 tokens,
input shaped (batch, seq, hidden) with bias, as a BERT layer calls them). Ratios = dense / sparse
median latency (CUDA events, anybudget.measure.latency). A backend whose output differs from the
dense product by more than fp16 rounding is reported as wrong and its time is not a speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
from anybudget.measure import latency
from anybudget.prune.masks import apply_mask
from anybudget.prune.sparse24 import mask_24, prune_24, to_semi_structured

BACKENDS = ("cutlass", "cusparselt")
REL_TOL = 2e-2  # fp16 products of K <= 3072 terms: rounding stays well below this relative error


@contextlib.contextmanager
def backend(name: str):
    """Select torch's semi-structured backend for conversions inside the block."""
    from torch.sparse import SparseSemiStructuredTensor

    old = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = name == "cutlass"
    try:
        yield
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = old


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6))


def matmul_speed(tokens: int = 16384, hidden: int = 768, repeat: int = 50, name: str = "cutlass") -> dict:
    """Dense vs 2:4 latency of one BERT-base encoder layer's six matrices (fp16)."""
    torch.manual_seed(0)
    shapes = [(hidden, hidden)] * 4 + [(4 * hidden, hidden), (hidden, 4 * hidden)]
    rows = {}
    for i, (o, k) in enumerate(shapes):
        lin = torch.nn.Linear(k, o).half().cuda()
        apply_mask(lin, {"weight": mask_24(lin.weight)})
        x = torch.randn(tokens // 128, 128, k, device="cuda", dtype=torch.half)
        row = {}
        with torch.inference_mode():
            ref = lin(x)
            row["dense_ms"] = latency(lin, x, warmup=5, repeat=repeat).median_s * 1e3
            try:
                with backend(name):
                    to_semi_structured(lin, {"weight": None})
                out = lin(x)
                row["rel_err"] = _rel(out, ref)
                row["correct"] = row["rel_err"] <= REL_TOL
                row["sparse_ms"] = latency(lin, x, warmup=5, repeat=repeat).median_s * 1e3
                row["speedup"] = row["dense_ms"] / row["sparse_ms"]
            except (RuntimeError, NotImplementedError, ValueError) as e:
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        rows[f"{i}:{o}x{k}"] = row
    ok = [r for r in rows.values() if "sparse_ms" in r]
    out = {"backend": name, "tokens": tokens, "hidden": hidden, "matrices": rows,
           "all_correct": bool(ok) and len(ok) == len(rows) and all(r["correct"] for r in ok)}
    if len(ok) == len(rows):
        out["layer_speedup"] = sum(r["dense_ms"] for r in ok) / sum(r["sparse_ms"] for r in ok)
    return out


def model_speed(model_dir: str, batch: dict, repeat: int = 50, name: str = "cutlass") -> dict:
    """Dense vs semi-structured forward of a 2:4-masked fp16 classifier on ``batch``. ``model_dir``
    holds ``mask.safetensors`` (a saved 2:4 ticket) or the 2:4 magnitude mask is made here."""
    from transformers import AutoModelForSequenceClassification

    from anybudget.prune.masks import load_mask

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float16).cuda().eval()
    mpath = Path(model_dir) / "mask.safetensors"
    mask = load_mask(mpath)[0] if mpath.exists() else prune_24(model)
    with torch.no_grad():
        apply_mask(model, mask, strict=False)
    labels = batch.get("labels")
    batch = {k: v.cuda() for k, v in batch.items() if k != "labels"}
    res = {"backend": name}
    with torch.inference_mode():
        ref = model(**batch).logits.float()
        res["dense_ms"] = latency(lambda: model(**batch), warmup=5, repeat=repeat).median_s * 1e3
        try:
            with backend(name):
                converted = to_semi_structured(model, mask)
            out = model(**batch).logits.float()
            res["sparse_ms"] = latency(lambda: model(**batch), warmup=5, repeat=repeat).median_s * 1e3
        except (RuntimeError, NotImplementedError, ValueError) as e:
            res["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            return res
    res.update({"speedup": res["dense_ms"] / res["sparse_ms"], "converted": len(converted), "prunable": len(mask),
                "rel_err_logits": _rel(out, ref),
                "argmax_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
                "examples": int(ref.shape[0])})
    res["correct"] = res["rel_err_logits"] <= REL_TOL
    if labels is not None:
        labels = labels.cuda()
        res["accuracy_dense"] = float((ref.argmax(-1) == labels).float().mean())
        res["accuracy_sparse_kernels"] = float((out.argmax(-1) == labels).float().mean())
    return res


def all_backends(model_dir: str | None, batch: dict | None, tokens: int = 16384) -> dict:
    res = {}
    for name in BACKENDS:
        res[name] = {"bert_base_layer": matmul_speed(tokens, name=name)}
        if model_dir is not None:
            res[name]["model"] = model_speed(model_dir, batch, name=name)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--model", default=None, help="a BERT classifier folder (2:4 mask made here if none saved)")
    ap.add_argument("--out", default=None, help="write prune_speed24.json here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("speed24: needs CUDA (the CPU path is the mask reference, tested in tests/prune)")
        return 0
    batch = None
    if args.model:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, 4096, (256, 128), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    res = all_backends(args.model, batch, args.tokens)
    print(res)
    if args.out:
        from anybudget.io import write_results

        write_results("prune_speed24", vars(args), res, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
