"""GPU call 1: pre-train the project's small BERT (encoder + MLM head) with the masked-LM
objective on the reference corpus, or train only an MLM head on a given encoder (MiniLM).

  python benchmarks/prune/pretrain_bert.py --data .carry/prune/pretrain --out $OUT          # ~6.5 min
  python benchmarks/prune/pretrain_bert.py --data .carry/prune/pretrain --out $OUT \\
      --encoder .carry/prune/minilm --minutes 3        # MLM head on all-MiniLM-L6-v2 (frozen)
  python benchmarks/prune/pretrain_bert.py --smoke --out /tmp/x                             # CPU, s

Size: hidden 192, 4 layers, 3 heads, FFN 768, vocab 4096, 128 positions: 2.6 M parameters,
5 MiB in fp16, so that it travels back from the GPU and, with the task data, to the second call
(the working tree that travels is limited to 64 MiB, ~40 of them the repository). The number of
steps is set from a timing probe so that training fills ``--minutes``.
Writes <out>/bert/ (save_pretrained, fp16, vocab.txt), <out>/pretrain_bert.json, <out>/pretrain_bert.png.
"""

from __future__ import annotations

import argparse
import copy
import lzma
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
from anybudget.io import save_figure, write_plot, write_results
from anybudget.prune.mlm import MLMStream, add_mlm_head, mlm_accuracy
from anybudget.prune.train import FineTuneConfig, finetune

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def read_stream(path: Path) -> np.ndarray:
    return np.frombuffer(lzma.decompress(path.read_bytes()), dtype=np.uint16)


def load_vocab(path: Path) -> dict[str, int]:
    return {w: i for i, w in enumerate(path.read_text(encoding="utf-8").splitlines())}


def stream(data: Path, name: str, vocab: dict[str, int], seq_len: int) -> MLMStream:
    return MLMStream(read_stream(data / f"{name}.u16.xz"), seq_len, vocab["[CLS]"], vocab["[SEP]"],
                     vocab["[MASK]"], len(vocab))


def smoke_data(tmp: Path) -> Path:
    """A tiny corpus stream and vocabulary, for --smoke."""
    tmp.mkdir(parents=True, exist_ok=True)
    words = SPECIALS + [f"w{i}" for i in range(59)]
    (tmp / "vocab.txt").write_text("\n".join(words) + "\n")
    rng = np.random.default_rng(0)
    toks = (5 + (np.arange(6000) * 7 + rng.integers(0, 3, 6000)) % 59).astype(np.uint16)
    for n in ("mlm_train", "mlm_val"):
        (tmp / f"{n}.u16.xz").write_bytes(lzma.compress(toks.tobytes()))
    return tmp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / ".carry/prune/pretrain")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--encoder", type=Path, default=None, help="train only an MLM head on this BertModel")
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--minutes", type=float, default=6.0, help="training time to fill (default 6)")
    ap.add_argument("--max-steps", type=int, default=None, help="fix the step count instead")
    ap.add_argument("--smoke", action="store_true", help="tiny model and data on the CPU, seconds")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from transformers import BertConfig, BertForMaskedLM, BertModel

    if args.smoke:
        args.data = smoke_data(args.out / "smoke_data")
        args.hidden, args.layers, args.heads, args.intermediate = 16, 2, 2, 32
        args.seq_len, args.batch_size, args.max_steps = 32, 8, 30
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    vocab = load_vocab(args.data / "vocab.txt")
    torch.manual_seed(0)
    if args.encoder is not None:
        model = add_mlm_head(BertModel.from_pretrained(args.encoder, dtype=torch.float32))
        vocab = load_vocab(args.encoder / "vocab.txt")
        if load_vocab(args.data / "vocab.txt") != vocab:
            raise SystemExit(f"error: --data {args.data} was tokenized with another vocabulary than "
                             f"--encoder {args.encoder}; run prepare.py --vocab-file {args.encoder}/vocab.txt")
    else:
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, intermediate_size=args.intermediate,
                         max_position_embeddings=max(128, args.seq_len), pad_token_id=vocab["[PAD]"])
        model = BertForMaskedLM(cfg)
    model.to(device)
    train, val = stream(args.data, "mlm_train", vocab, args.seq_len), stream(args.data, "mlm_val", vocab, args.seq_len)
    base = {"lr": args.lr, "batch_size": args.batch_size, "weight_decay": 0.01, "warmup_ratio": 0.05}
    steps = args.max_steps
    probe_s = None
    if steps is None:  # time 30 steps on a copy, then fill the budget
        probe = copy.deepcopy(model)
        finetune(probe, train, "mlm", FineTuneConfig(**base, max_steps=5), seed=99)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        finetune(probe, train, "mlm", FineTuneConfig(**base, max_steps=30), seed=98)
        if device.type == "cuda":
            torch.cuda.synchronize()
        probe_s = (time.perf_counter() - t) / 30
        steps = max(50, int(args.minutes * 60 / probe_s))
        del probe
    curve = []
    every = max(1, steps // 20)

    def on_step(step, m):
        if step % every == 0 or step == steps:
            curve.append((step, mlm_accuracy(m, val, n_windows=64, batch_size=64)["mlm_accuracy"]))
            m.train()

    before = mlm_accuracy(model, val, n_windows=512)
    t0 = time.perf_counter()
    info = finetune(model, train, "mlm", FineTuneConfig(**base, max_steps=steps), seed=0,
                    on_step=on_step, progress=not args.quiet, desc="MLM pre-training")
    seconds = time.perf_counter() - t0
    after = mlm_accuracy(model, val, n_windows=2048)
    out = args.out / "bert"
    model.to(torch.float16).save_pretrained(out)
    (out / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n", encoding="utf-8")
    n_params = sum(p.numel() for p in model.parameters())
    metrics = {"mlm_accuracy": after["mlm_accuracy"], "mlm_loss": after["mlm_loss"],
               "mlm_accuracy_before": before["mlm_accuracy"], "steps": steps, "seconds": seconds,
               "step_seconds_probe": probe_s, "params": n_params, "train_loss_last50": info["loss"],
               "fp16_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors")),
               "tokens_seen": steps * args.batch_size * args.seq_len, "curve": curve}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["model"] = "MLM head on a frozen encoder" if args.encoder else "BERT pre-trained from scratch"
    write_results("prune_pretrain_bert" + ("_smoke" if args.smoke else ""), config, metrics, out_dir=args.out)

    def draw(path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([c[0] for c in curve], [c[1] for c in curve], marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out MLM accuracy")
        ax.set_title(f"{config['model']}: {n_params / 1e6:.1f} M params")
        fig.tight_layout()
        save_figure(fig, path)

    write_plot(args.out / "pretrain_bert.png", draw)
    print(f"MLM accuracy {before['mlm_accuracy']:.3f} -> {after['mlm_accuracy']:.3f} in {steps} steps "
          f"({seconds:.0f} s); saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
