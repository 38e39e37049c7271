"""``anybudget fit`` (plan an elastic model + KV cache for a device budget) and ``anybudget generate
--plan DIR`` (kv's ``generate``, served from a plan folder). Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anybudget.cli_types import device, existing_file, positive_int, utf8_file, writable_dir

BUILD_HINT = "anybudget elastic build --model HF_FOLDER --text TRAIN.txt --out DIR"
POLICIES = ("h2o", "streaming", "local", "random")


def elastic_dir(text: str) -> str:
    """A folder written by ``anybudget elastic build`` (``elastic.json`` + ``model/``)."""
    p = Path(text)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder; build one with: {BUILD_HINT}")
    if not (p / "elastic.json").is_file() or not (p / "model" / "config.json").is_file():
        what = "a plain model folder" if (p / "config.json").is_file() else "no elastic.json and model/"
        raise argparse.ArgumentTypeError(f"{text!r} was not built by elastic ({what}); build it first: {BUILD_HINT}")
    return text


def plan_budget(text: str) -> str:
    """A budget with ``mem`` and/or ``latency`` (per decoding step) only."""
    from anybudget.budget import Budget, BudgetError

    try:
        b = Budget(text)
    except BudgetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    extra = [k for k in b if k not in ("mem", "latency")]
    if not b or extra:
        raise argparse.ArgumentTypeError(f"{text!r}: give mem=... and/or latency=... (e.g. mem=6GiB,latency=20ms); "
                                         f"{', '.join(extra) or 'nothing'} is not planned for")
    return text


def at_least_two(text: str) -> int:
    v = positive_int(text)
    if v < 2:
        raise argparse.ArgumentTypeError(f"{v} must be >= 2 (the per-token latency is measured over new tokens)")
    return v


def policy_list(text: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in items if p not in POLICIES]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: choose a comma-separated subset of {', '.join(POLICIES)}")
    return items


def percent_list(text: str) -> tuple[float, ...]:
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            v = float(item.rstrip("%"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not a percentage like 20%") from None
        if not 0 < v < 100:
            raise argparse.ArgumentTypeError(f"{item!r} must be a percentage in (0, 100) (the full cache is always a candidate)")
        out.append(v)
    if not out:
        raise argparse.ArgumentTypeError("is empty; give e.g. 50%,20%,10%")
    return tuple(out)


def register(sub) -> None:
    from anybudget.kv import cli as kv_cli

    f = sub.add_parser("fit", help="plan an elastic sub-network + KV cache that meets a memory/latency budget, measured")
    f.add_argument("--model", required=True, type=elastic_dir, help="folder written by `anybudget elastic build`")
    f.add_argument("--budget", required=True, type=plan_budget, help="mem=6GiB, latency=20ms (per decoding step) or both")
    f.add_argument("--prompt", type=positive_int, default=2048, help="prompt tokens per sequence (default 2048)")
    f.add_argument("--new", type=at_least_two, default=256, help="new tokens per sequence (default 256)")
    f.add_argument("--batch", type=positive_int, default=8, help="concurrent sequences (default 8)")
    f.add_argument("--out", required=True, type=writable_dir, help="folder for model/, cache.json, plan.json, candidates.png")
    f.add_argument("--text", type=utf8_file, default=None, help="held-out text for the quality data (default: the embedded passage)")
    f.add_argument("--quality", type=existing_file, default=None,
                   help="reuse the measured quality data of an earlier plan.json of this model (skips measuring it)")
    f.add_argument("--quality-tokens", type=at_least_two, default=256,
                   help="tokens per quality window: the workload's prompt + new tokens, shrunk alike to this (default 256)")
    f.add_argument("--serve", choices=("eager", "static"), default="eager",
                   help="eager caches, or fixed-slot caches whose decoding generate compiles on CUDA (default eager)")
    f.add_argument("--policies", type=policy_list, default=("h2o", "streaming", "local"), help="KV policies (default h2o,streaming,local)")
    f.add_argument("--kv-budgets", type=percent_list, default=(50.0, 20.0, 10.0), help="KV budgets (default 50%%,20%%,10%%)")
    f.add_argument("--max-trials", type=positive_int, default=5, help="candidates measured before giving up (default 5)")
    f.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda if available)")
    f.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="weights and cache dtype (default: bfloat16 on cuda, float32 on cpu)")
    f.add_argument("--quiet", action="store_true", help="no progress output")
    f.set_defaults(func=_fit)

    kv_cli.register(sub)  # `generate` and `kv`; generate learns --plan
    g = sub.choices["generate"]
    g.add_argument("--plan", default=None, help="a folder written by `anybudget fit` (its model and cache settings "
                   "replace --model/--kv/--budget)")
    g.set_defaults(func=_generate_with(g.get_default("func")))


def _fit(args) -> int:
    import torch

    from anybudget.plan import Quality, ServingWorkload, fit_folder, write_plan

    cfg = json.loads((Path(args.model) / "model" / "config.json").read_text())
    limit = cfg.get("max_position_embeddings")
    if limit and args.prompt + args.new > limit:
        raise SystemExit(f"error: --prompt {args.prompt} + --new {args.new} = {args.prompt + args.new} tokens exceeds "
                         f"the model's max_position_embeddings {limit}")
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = args.dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    wl = ServingWorkload(args.prompt, args.new, args.batch, dtype)
    quality = None
    if args.quality is not None:
        try:
            quality = Quality.from_dict(json.loads(Path(args.quality).read_text(encoding="utf-8"))["quality"])
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: --quality {args.quality!r} is not a plan.json with quality data ({e})") from None
    plan, em = fit_folder(args.model, args.budget, wl, text=args.text, quality=quality, device=str(dev), policies=args.policies,
                          kv_percents=args.kv_budgets, max_trials=args.max_trials,
                          quality_tokens=args.quality_tokens, quiet=args.quiet, serve=args.serve)
    out = write_plan(plan, em, args.out, source_model_dir=Path(args.model) / "model")
    print(plan.format_table())
    m = plan.measured
    print(f"\nchosen {plan.candidate.label}: measured {m['peak_bytes'] / 2**20:.1f} MiB ({m['peak_kind']}), "
          f"{m['step_s'] * 1e3:.3f} ms per decoding step; predicted ppl {plan.predicted['ppl']:.2f}")
    print(f"wrote {out / 'model'}, {out / 'cache.json'}, {out / 'plan.json'}"
          + (f", {out / 'candidates.png'}" if (out / "candidates.png").is_file() else ""))
    print(f"serve it: anybudget generate --plan {out} \"your prompt\"")
    return 0


def _generate_with(kv_generate):
    def run(args) -> int:
        if args.plan is None:
            return kv_generate(args)
        from anybudget.plan import generate

        prompt = " ".join(args.prompt)
        if not prompt.strip():
            raise SystemExit("error: the prompt is empty; give some text to continue")
        if not (Path(args.plan) / "plan.json").is_file():
            raise SystemExit(f"error: --plan {args.plan!r} has no plan.json; write one with `anybudget fit ... --out DIR`")
        gen = {"do_sample": True, "temperature": 0.8, "top_p": 0.95} if args.sample else {}
        print(generate(args.plan, prompt, args.max_new_tokens, args.device, **gen))
        s = json.loads((Path(args.plan) / "cache.json").read_text())
        print(f"\n[plan {args.plan}: cache {s['policy']} {s['budget']}]")
        return 0

    return run
