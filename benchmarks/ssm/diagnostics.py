"""Recency and over-smoothing of default vs polarized Mamba (Wang et al., ICLR 2025, Fig. 1 / Fig. 5).

For each config (default / one / zero / both at the given depths) this measures
  * the influence score log||dy_t/dx_s|| of the last token's output on each input, against the
    distance t - s (recency: vanilla Mamba falls with distance, the one-channel keeps a floor),
  * the per-layer sharpness, the mean pairwise distance of token features, normalised by the mean
    feature norm (over-smoothing: it shrinks with depth; the zero-channel should slow that),
on random MQAR-shaped inputs, for freshly initialised models (the architecture alone) and, with
``--models DIR``, for trained ones (``<config>_L<depth>*.pt`` as saved by ``mqar_small.py
--save-models`` or ``table2.py``). Writes ``ssm_diagnostics.json`` and two PNGs.

    PYTHONPATH=src python benchmarks/ssm/diagnostics.py --out benchmarks/results/ssm [--models DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

POLS = ("default", "one", "zero", "both")


def build(pol: str, layers: int, d_model: int, vocab: int):
    from anybudget.ssm import LMConfig, MambaConfig, MambaLM

    torch.manual_seed(0)
    mc = MambaConfig(d_model=d_model, d_state=16, polarize=None if pol == "default" else pol)
    return MambaLM(LMConfig(vocab_size=vocab, d_model=d_model, n_layers=layers, mamba=mc))


def find_weights(folder: Path, pol: str, layers: int) -> Path | None:
    for pat in (f"{pol}_L{layers}_final.pt", f"{pol}_L{layers}_lr*.pt", f"{pol}_L{layers}*.pt",
                f"{pol}_L{layers}_s*.safetensors"):  # the last: table2_scaled.py's trained models
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    return None


def load_weights(model, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = {k: v.float() for k, v in load_file(str(path)).items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # the head is tied to the embedding
            raise ValueError(f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
        return
    obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    model.load_state_dict(obj)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from anybudget.io import results_dir

    ap.add_argument("--out", default=str(results_dir("ssm_diagnostics", ROOT / "benchmarks/results")))
    ap.add_argument("--name", default="ssm_diagnostics")
    ap.add_argument("--models", default=None, help="folder of trained weights (optional)")
    ap.add_argument("--depths", default="2,4")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.seq_len < 2:
        raise SystemExit(f"--seq-len={args.seq_len} must be >= 2")

    from anybudget.io import write_results
    from anybudget.ssm.diagnostics import (
        influence_scores,
        layer_sharpness,
        plot_influence,
        plot_sharpness,
    )
    from anybudget.ssm.mqar import multiquery_ar

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ids, _ = multiquery_ar(args.vocab_size, args.seq_len, max(1, args.seq_len // 16), args.batch,
                           seed=args.seed, random_non_queries=True, device=device)
    depths = [int(d) for d in args.depths.split(",")]
    states = ["init"] + (["trained"] if args.models else [])
    rows, infl_curves, sharp_curves = [], {}, {}
    for state in states:
        for L in depths:
            for pol in POLS:
                model = build(pol, L, args.d_model, args.vocab_size)
                src = None
                if state == "trained":
                    src = find_weights(Path(args.models), pol, L)
                    if src is None:
                        continue
                    load_weights(model, src)
                model = model.to(device)
                infl = influence_scores(model, ids).cpu()
                sharp = layer_sharpness(model, ids, normalize=True)
                t = infl.numel() - 1
                at = {d: float(infl[t - d]) for d in (0, 16, 64, 128, 255, 511, 1023) if d <= t}
                label = f"{pol} L{L} ({state})"
                rows.append({"config": pol, "layers": L, "state": state, "weights": src.name if src else None,
                             "influence_at_distance": at,
                             "influence_drop_0_to_max": at[0] - at[max(at)],
                             "sharpness": sharp, "sharpness_last_over_first": sharp[-1] / sharp[1]})
                infl_curves[label] = infl
                sharp_curves[label] = sharp
                print(label, {k: round(v, 2) for k, v in at.items()}, [round(s, 3) for s in sharp], flush=True)
    out = Path(args.out)
    for state in states:
        pick = {k: v for k, v in infl_curves.items() if k.endswith(f"({state})")}
        plot_influence(pick, out / f"{args.name}_{state}_influence.png",
                       title=f"Recency: influence of input s on output t ({state})")
        plot_sharpness({k: v for k, v in sharp_curves.items() if k.endswith(f"({state})")},
                       out / f"{args.name}_{state}_sharpness.png",
                       title=f"Over-smoothing: normalised feature sharpness ({state})")
    config = {"inputs": f"MQAR-shaped random tokens, seq {args.seq_len}, batch {args.batch}, vocab {args.vocab_size}",
              "model": f"MambaLM d_model {args.d_model}, d_state 16 (+1/+1 polarized, exact form)",
              "influence": "log ||d h_last[t] / d x_s||_F, t = last token, mean of logs over the batch",
              "sharpness": "mean pairwise l2 distance of token features / mean feature norm, layer 0 = embedding",
              "models": args.models, "device": device}
    path = write_results(args.name, config, {"rows": rows}, out_dir=out)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
