"""``anybudget generate`` and ``anybudget kv eval``. Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse

from anybudget.cli_types import (
    device,
    fraction,
    kv_budget,
    kv_budget_list,
    nonneg_int,
    positive_int,
    require,
    utf8_file,
    writable_stem,
)

POLICY_CHOICES = ("full", "h2o", "streaming", "local", "random")
# kv.attention.DECODE_PRODUCTS, spelled here so that parsing imports no torch (a test keeps them equal)
DECODE_PRODUCT_CHOICES = ("matmul", "auto", "reduce", "triton", "triton_op")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="local model folder (default: the embedded reference LM)")
    p.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="weights dtype (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub) -> None:
    g = sub.add_parser("generate", help="generate text from a local model under a KV budget")
    _common(g)
    g.add_argument("--kv", default="h2o", choices=POLICY_CHOICES, help="eviction policy (default h2o)")
    g.add_argument("--budget", default="kv=20%", type=kv_budget, help="KV budget: kv=20%% (of tokens seen) or kv=512 (tokens)")
    g.add_argument("--recent-ratio", type=fraction, default=0.5, help="h2o/random: recent share of the cache (default 0.5)")
    g.add_argument("--sink-tokens", type=nonneg_int, default=4, help="streaming: attention sinks kept (default 4)")
    g.add_argument("--max-new-tokens", type=positive_int, default=64, help="(default 64)")
    g.add_argument("--sample", action="store_true", help="sample (temperature 0.8, top-p 0.95) instead of greedy")
    g.add_argument("--static", action="store_true", help="fixed slots, compiled decoding steps on a GPU (serving)")
    g.add_argument("--decode-products", default="matmul", choices=DECODE_PRODUCT_CHOICES,
                   help="--static: how a decoding step forms its attention (default matmul; triton: the Triton "
                        "decode kernel, opt-in until timed on a GPU)")
    g.add_argument("prompt", nargs="+", help="prompt text")
    g.set_defaults(func=_generate)

    kv = sub.add_parser("kv", help="KV-cache eviction: H2O heavy hitters, StreamingLLM sinks (eval)")
    ksub = kv.add_subparsers(dest="kv_command", metavar="VERB", required=True)
    e = ksub.add_parser("eval", help="streaming perplexity of each policy at each budget; table, JSON and PNG")
    _common(e)
    e.add_argument("--text", required=True, type=utf8_file, help="a UTF-8 text file to evaluate on (held-out text)")
    e.add_argument("--budgets", default="100%,50%,20%,10%", type=kv_budget_list, help="comma-separated KV budgets (default 100%%,50%%,20%%,10%%)")
    e.add_argument("--policies", default=",".join(POLICY_CHOICES), help="comma-separated policies")
    e.add_argument("--seq-len", type=positive_int, default=1024, help="tokens per evaluated sequence (default 1024)")
    e.add_argument("--num-seqs", type=positive_int, default=None, help="sequences to evaluate (default: all that fit, at most 16)")
    e.add_argument("--batch-size", type=positive_int, default=8, help="(default 8)")
    e.add_argument("--chunk", type=positive_int, default=1, help="tokens per forward (1 = faithful streaming)")
    e.add_argument("--out", default="kv_eval", type=writable_stem(".json", ".png"), help="output stem: writes OUT.json and OUT.png (default kv_eval)")
    e.set_defaults(func=_eval)


def load(model_dir, device=None, dtype=None):
    """Load a local causal LM + tokenizer; the embedded reference LM when ``model_dir`` is None."""
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir is None:
        model_dir = Path(__file__).resolve().parents[1] / "assets" / "reflm"
    p = Path(model_dir)
    if not (p / "config.json").is_file():
        raise SystemExit(f"error: --model {str(p)!r} is not a local model folder (no config.json); models load from local paths only")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    tok = AutoTokenizer.from_pretrained(p)
    model = AutoModelForCausalLM.from_pretrained(p, dtype=dt).to(device).eval()
    return model, tok, device


def _generate(args) -> int:
    import torch

    from anybudget.kv import cache_kwargs, enable, make_cache

    prompt = " ".join(args.prompt)
    if not prompt.strip():
        raise SystemExit("error: the prompt is empty; give some text to continue")
    model, tok, device = load(args.model, args.device, args.dtype)
    enable(model)
    kw = {}
    if args.kv in ("h2o", "random"):
        kw["recent_ratio"] = args.recent_ratio
    if args.kv == "streaming":
        kw["sink_tokens"] = args.sink_tokens
    if args.static and args.kv != "full":
        kw.update(static=True, max_new_tokens=args.max_new_tokens, decode_products=args.decode_products)
    cache = make_cache(args.kv, args.budget, **kw)
    enc = tok(prompt, return_tensors="pt").to(device)
    gen = dict(do_sample=True, temperature=0.8, top_p=0.95) if args.sample else dict(do_sample=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=args.max_new_tokens, **cache_kwargs(model, cache),
                             pad_token_id=tok.pad_token_id, **gen)
    print(tok.decode(out[0], skip_special_tokens=True))
    if args.kv != "full":
        layer = cache.layers[0]
        kept = int(layer.valid[0, 0].sum()) if cache.static else layer.length
        print(f"\n[{args.kv} {cache.budget}: kept {kept} of {int(layer.seen)} tokens per head; "
              f"KV cache {cache.used_bytes() / 2**20:.2f} MiB]")
    return 0


def _eval(args) -> int:
    from pathlib import Path

    import torch

    from anybudget.io import atomic_write_json, results_record
    from anybudget.kv.cache import parse_kv_budget
    from anybudget.kv.evaluate import evaluate_policies, plot_results

    require("plot", "matplotlib")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise SystemExit(f"error: --policies is empty; choose from {', '.join(POLICY_CHOICES)}")
    bad = [p for p in policies if p not in POLICY_CHOICES]
    if bad:
        raise SystemExit(f"error: --policies has unknown {bad}; choose from {', '.join(POLICY_CHOICES)}")
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    for b in budgets:
        parse_kv_budget(b)
    text_path = Path(args.text)
    if not text_path.is_file():
        raise SystemExit(f"error: --text {args.text!r} is not a file")
    model, tok, device = load(args.model, args.device, args.dtype)
    ids = torch.tensor(tok(text_path.read_text(encoding="utf-8"))["input_ids"])
    fit = ids.numel() // args.seq_len
    if fit < 1:
        raise SystemExit(f"error: --text has {ids.numel()} tokens, fewer than --seq-len {args.seq_len}")
    if args.num_seqs and args.num_seqs > fit:
        raise SystemExit(f"error: --num-seqs {args.num_seqs}: --text holds only {fit} sequences of --seq-len {args.seq_len}")
    n = args.num_seqs or min(fit, 16)
    evaluated = [b for b in budgets if b != "100%"] or budgets
    res = evaluate_policies(model, ids, policies=policies, budgets=evaluated, seq_len=args.seq_len, num_seqs=n,
                            batch_size=args.batch_size, chunk=args.chunk, device=device, quiet=args.quiet)
    full = next((r for r in res if r.policy == "full"), None)
    print(f"{'policy':<10} {'budget':>7} {'ppl':>9} {'vs full':>8} {'kept':>6}")
    for r in res:
        ratio = f"{r.ppl / full.ppl:.3f}" if full else "-"
        print(f"{r.policy:<10} {r.budget:>7} {r.ppl:>9.3f} {ratio:>8} {r.kept_fraction:>6.1%}")
    rec = results_record(
        Path(args.out).name,
        {"model": str(args.model or "embedded reference LM"), "text": str(text_path), "seq_len": args.seq_len,
         "num_seqs": n, "chunk": args.chunk, "policies": policies, "budgets": evaluated},
        {"results": [{"policy": r.policy, "budget": r.budget, "nll": r.nll, "ppl": r.ppl, "tokens": r.tokens,
                      "kept_fraction": r.kept_fraction} for r in res]},
        {"full_ppl": full.ppl} if full else None,
    )
    atomic_write_json(f"{args.out}.json", rec)
    plot_results(res, f"{args.out}.png")
    print(f"wrote {args.out}.json and {args.out}.png")
    return 0
