"""Train the reference causal LM (Llama architecture, ~19M parameters) on the reference corpus.

Sized for one 10-minute call on an H100: bf16 autocast, torch.compile, AdamW with warm-up and
cosine decay scheduled to a wall-clock budget (``--minutes``), capped at ``--max-epochs``.
Validation loss is measured periodically and the best weights are kept (the corpus is small,
~6M tokens, so several epochs are needed and overfitting is watched for).

GPU:  python benchmarks/zoo/train_lm.py --out $OUT --minutes 7.5
      (reads .carry/zoo/train.u16.xz and tokenizer/, benchmarks/zoo/data/{validation,test}.u16.xz)
CPU:  python benchmarks/zoo/train_lm.py --smoke --out /tmp/smoke      (tiny config, a few steps)
Resume: a full checkpoint (weights + optimizer + step) is written to --ckpt every eval and read
back if present; ``--init-from DIR`` starts from saved weights (e.g. a previous call's output).

Output (into --out): model/ (save_pretrained, bf16 safetensors, shards < 15 MB),
train_record.json (config, tokens, time, loss curve, validation/test perplexity, samples),
loss.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
from anybudget.io import atomic_path, atomic_write_json  # noqa: E402
from anybudget.measure import device_record  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_eval import read_ids, window_losses

PROMPTS = [
    "The Python interpreter",
    "In the Linux kernel, a device driver",
    "To install a package on a Debian system,",
    "This module provides functions for",
    "When the file is opened,",
]


def model_config(vocab: int, smoke: bool, eos_id: int):
    from transformers import LlamaConfig

    if smoke:
        dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    else:
        # 19.4M parameters: 10 layers x 1.62M + tied 8192x384 embedding; GQA 6 query / 3 KV heads.
        dims = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=10, num_attention_heads=6, num_key_value_heads=3)
    return LlamaConfig(
        vocab_size=vocab,
        head_dim=dims["hidden_size"] // dims["num_attention_heads"],
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        attention_bias=False,
        mlp_bias=False,
        **dims,
    )


def evaluate(model, ids: np.ndarray, seq: int, batch: int, device, max_windows: int | None = None) -> float:
    """Mean token NLL over non-overlapping windows of ``seq`` tokens (each window predicted fully)."""
    total, targets = window_losses(model, ids, seq, batch, device, max_windows)
    return total / max(targets.size, 1)


@torch.no_grad()
def samples(model, tok, device, max_new_tokens=60, prompts=PROMPTS) -> list[dict]:
    """Greedy (repetition penalty 1.1) and sampled (t 0.8, top-p 0.95) continuations of ``prompts``."""
    model.eval()
    out = []
    for i, p in enumerate(prompts):
        enc = tok(p, return_tensors="pt").to(device)
        g = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.1)
        torch.manual_seed(i)
        s = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_p=0.95)
        out.append({"prompt": p, "greedy_rp1.1": tok.decode(g[0], skip_special_tokens=True),
                    "sampled_t0.8_p0.95": tok.decode(s[0], skip_special_tokens=True)})
    model.train()
    return out


def plot(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    tr = [c for c in curve if "train_loss" in c]
    va = [c for c in curve if "val_loss" in c]
    ax.plot([c["epoch"] for c in tr], [c["train_loss"] for c in tr], label="train (batch)", alpha=0.6)
    ax.plot([c["epoch"] for c in va], [c["val_loss"] for c in va], "o-", label="validation")
    ax.set_xlabel("epochs of the train split")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("reference LM training")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def lm_step(fwd, model, opt, x: torch.Tensor) -> torch.Tensor:
    """One optimiser step on windows ``x`` (B, S+1): bf16 autocast on CUDA, next-token cross-entropy in
    float32, gradients clipped to norm 1; returns the loss (``fwd``: the model or its compiled forward)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        logits = fwd(input_ids=x[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default=str(ROOT / ".carry/zoo/train.u16.xz"))
    ap.add_argument("--val", default=str(ROOT / "benchmarks/zoo/data/validation.u16.xz"))
    ap.add_argument("--test", default=str(ROOT / "benchmarks/zoo/data/test.u16.xz"))
    ap.add_argument("--tokenizer", default=str(ROOT / ".carry/zoo/tokenizer"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", default=str(ROOT / ".carry/zoo/ckpt.pt"))
    ap.add_argument("--init-from", default=None, help="start from saved weights (save_pretrained folder)")
    ap.add_argument("--minutes", type=float, default=7.5, help="wall-clock budget for the training loop")
    ap.add_argument("--max-epochs", type=float, default=12.0)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps, CPU-friendly")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer, LlamaForCausalLM

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    train, val, test = read_ids(args.train), read_ids(args.val), read_ids(args.test)
    if args.smoke:
        args.seq, args.batch, args.eval_every, args.warmup = 64, 4, 5, 2
        train = train[:200_000]
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = model_config(len(tok), args.smoke, eos)
    model = (LlamaForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
             if args.init_from else LlamaForCausalLM(cfg))
    model.config._attn_implementation = "sdpa"
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda",
    )
    step, tokens_seen, curve, best = 0, 0, [], (float("inf"), None, 0)
    if Path(args.ckpt).exists() and not args.smoke:
        ck = torch.load(args.ckpt, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, tokens_seen, curve = ck["step"], ck["tokens_seen"], ck["curve"]
        best = (ck["best_val"], None, ck["best_step"])
        print(f"resumed from {args.ckpt} at step {step}", flush=True)
    fwd = model if args.no_compile or device.type != "cuda" else torch.compile(model)

    tokens_per_step = args.batch * args.seq
    max_steps_epochs = int(args.max_epochs * len(train) / tokens_per_step)
    total_steps = max_steps_epochs if args.smoke else None  # set from measured speed below
    if args.smoke:
        total_steps = 12
    budget_s = args.minutes * 60
    t_start = time.perf_counter()
    t_rate0, step_rate0 = None, None

    def lr_at(s: int) -> float:
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        ts = total_steps or max_steps_epochs
        prog = min(1.0, (s - args.warmup) / max(1, ts - args.warmup))
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog)))

    model.train()
    start_step = step
    while True:
        if total_steps is not None and step >= total_steps:
            break
        starts = rng.integers(0, len(train) - args.seq - 1, size=args.batch)
        x = torch.from_numpy(np.stack([train[s: s + args.seq + 1] for s in starts])).to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = lm_step(fwd, model, opt, x)
        step += 1
        tokens_seen += tokens_per_step
        if step - start_step == 30:  # compile and warm-up done: measure speed from here
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_rate0, step_rate0 = time.perf_counter(), step
        if total_steps is None and t_rate0 is not None and step - step_rate0 == 50:
            torch.cuda.synchronize()
            rate = 50 / (time.perf_counter() - t_rate0)
            remaining = budget_s - (time.perf_counter() - t_start)
            # ~8% of the remaining time goes to evaluations
            total_steps = min(max_steps_epochs, step + int(0.92 * remaining * rate))
            print(f"{rate:.2f} steps/s = {rate * tokens_per_step / 1e6:.2f} M tok/s; schedule: {total_steps} steps "
                  f"= {total_steps * tokens_per_step / len(train):.1f} epochs", flush=True)
        if step % 25 == 0:
            curve.append({"step": step, "epoch": tokens_seen / len(train), "train_loss": loss.item(), "lr": lr_at(step)})
        if step % args.eval_every == 0 or (total_steps is not None and step == total_steps):
            v = evaluate(model, val, args.seq, 32, device, max_windows=None if not args.smoke else 4)
            curve.append({"step": step, "epoch": tokens_seen / len(train), "val_loss": v,
                          "elapsed_s": time.perf_counter() - t_start})
            print(f"step {step} epoch {tokens_seen / len(train):.2f} train {loss.item():.3f} val {v:.3f} "
                  f"ppl {math.exp(v):.2f} ({time.perf_counter() - t_start:.0f}s)", flush=True)
            if v < best[0]:
                best = (v, {k: t.detach().clone() for k, t in model.state_dict().items()}, step)
            if not args.smoke:
                with atomic_path(args.ckpt) as tmp:
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                                "tokens_seen": tokens_seen, "curve": curve, "best_val": best[0],
                                "best_step": best[2]}, tmp)
        if time.perf_counter() - t_start > budget_s * 1.05:
            print("time budget reached", flush=True)
            break
    train_time = time.perf_counter() - t_start
    if best[1] is not None:
        model.load_state_dict(best[1])
    val_nll = evaluate(model, val, args.seq, 32, device, max_windows=None if not args.smoke else 4)
    test_nll = evaluate(model, test, args.seq, 32, device, max_windows=None if not args.smoke else 4)
    smp = samples(model, tok, device, max_new_tokens=60 if not args.smoke else 8)
    for s in smp:
        print(json.dumps(s), flush=True)
    model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out / "model", max_shard_size="15MB", safe_serialization=True)
    record = {
        "name": "reflm_train",
        "config": {**{k: v for k, v in vars(args).items()}, "model": cfg.to_dict() if not args.init_from else model.config.to_dict()},
        "metrics": {
            "params": n_params,
            "steps": step,
            "tokens_seen": tokens_seen,
            "epochs": tokens_seen / len(train),
            "train_tokens": int(len(train)),
            "train_time_s": train_time,
            "best_step": best[2],
            "val_nll": val_nll, "val_ppl": math.exp(val_nll),
            "test_nll": test_nll, "test_ppl": math.exp(test_nll),
            "eval_seq": args.seq,
            "curve": curve,
            "samples": smp,
        },
        "baseline": None,
        "device": device_record(),
    }
    record.update({"torch": record["device"]["torch"], "transformers": record["device"]["transformers"],
                   "commit": record["device"]["commit"], "date": record["device"]["date"]})
    atomic_write_json(out / "train_record.json", record)
    plot(curve, out / "loss.png")
    print(f"done: val ppl {math.exp(val_nll):.2f} test ppl {math.exp(test_nll):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
