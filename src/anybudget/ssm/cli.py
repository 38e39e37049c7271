"""``anybudget ssm ...``: MQAR training / evaluation and the recency / over-smoothing diagnostics.

Only argparse is imported at module level so ``anybudget --help`` stays instant.
"""

from __future__ import annotations

import argparse

from anybudget.cli_types import (
    device,
    existing_file,
    positive_float,
    positive_int,
    require,
    writable_dir,
    writable_file,
)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mixer", choices=["mamba", "attention"], default="mamba")
    p.add_argument("--polarize", choices=["none", "one", "zero", "both"], default="none",
                   help="polarized state channels (default none = vanilla Mamba)")
    p.add_argument("--polar-form", choices=["exact", "reference"], default="exact",
                   help="exact: A-bar = 1 / 0 exactly; reference: A = 0 / -100 as in SSM-Bottleneck")
    p.add_argument("--layers", type=positive_int, default=2, help="number of blocks (default 2)")
    p.add_argument("--d-model", type=positive_int, default=128, help="model width (default 128)")
    p.add_argument("--d-state", type=positive_int, default=16, help="learned state size (default 16)")
    p.add_argument("--vocab-size", type=positive_int, default=8192, help="MQAR vocabulary (default 8192)")
    p.add_argument("--scan-backend", choices=["auto", "triton", "chunked", "ref", "op"], default="auto")
    p.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    ssm = subparsers.add_parser("ssm", help="polarized Mamba: MQAR training/eval, recency and over-smoothing")
    sub = ssm.add_subparsers(dest="ssm_command", metavar="VERB")

    m = sub.add_parser("mqar", help="train on the MQAR mixture and evaluate at seq 1024, 64/128/256 kv pairs")
    _model_args(m)
    m.add_argument("--steps", type=positive_int, default=None,
                   help="training steps (default: the reference's 64 epochs of 300k examples)")
    m.add_argument("--batch-size", type=positive_int, default=128, help="(default 128)")
    m.add_argument("--lr", type=positive_float, default=1e-3, help="(default 1e-3)")
    m.add_argument("--eval-every", type=positive_int, default=500, help="(default 500)")
    m.add_argument("--test-examples", type=positive_int, default=None, help="examples per test set (default 1000)")
    m.add_argument("--max-seq-len", type=positive_int, default=1024,
                   help="drop training segments longer than this and test at this length (kv = len/16, /8, /4)")
    m.add_argument("--time-budget", type=positive_float, default=None, help="stop and checkpoint after this many seconds")
    m.add_argument("--checkpoint", default=None, type=writable_file,
                   help="checkpoint file; resumes if it exists (default: <out>/<run name>.ckpt.pt)")
    m.add_argument("--out", default="runs/ssm", type=writable_dir, help="folder for the JSON record and PNG (default runs/ssm)")
    m.add_argument("--step", choices=["reference", "auto", "eager", "compile", "cudagraph", "compile+cudagraph",
                                      "cudagraph+bf16"],
                   default="reference",
                   help="training step: reference (masked positions), or the static-shape step without host "
                        "syncs: auto = CUDA graphs on CUDA, eager otherwise (same losses; default reference)")
    m.add_argument("--scan-kernels", choices=["default", "fastest"], default="default",
                   help="Triton scan settings on CUDA (ScanBlocks.preset): fastest = the fastest measured MQAR step "
                        "with --step compile+cudagraph (time-major tiles, Gluon grads kernel, polarized channels in "
                        "the kernels; same results; benchmarks/results/ssm/ssm_train_speed.json), also faster eager; "
                        "slower with --step compile (no CUDA graphs); no effect on CPU (default: default)")
    m.add_argument("--max-memory", type=positive_float, default=None,
                   help="GB a training step may use (default: 80%% of the free memory of the device); "
                        "larger settings are refused with a suggestion before anything is allocated")
    m.set_defaults(func=_cmd_mqar)

    d = sub.add_parser("diagnose", help="influence-vs-distance and per-layer sharpness of a model, PNG + JSON")
    _model_args(d)
    d.add_argument("--checkpoint", default=None, type=existing_file, help="a checkpoint written by `ssm mqar` (default: fresh init)")
    d.add_argument("--seq-len", type=positive_int, default=256, help="(default 256)")
    d.add_argument("--batch", type=positive_int, default=4, help="(default 4)")
    d.add_argument("--out", default="runs/ssm", type=writable_dir, help="output folder (default runs/ssm)")
    d.set_defaults(func=_cmd_diagnose)
    ssm.set_defaults(func=lambda a: (ssm.print_help(), 0)[1])


def _build(args):
    import torch

    from anybudget.ssm.lm import LMConfig, build_lm
    from anybudget.ssm.mamba import MambaConfig

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pol = None if args.polarize == "none" else args.polarize
    mcfg = MambaConfig(d_model=args.d_model, d_state=args.d_state, polarize=pol,
                       polar_form=args.polar_form, scan_backend=args.scan_backend)
    cfg = LMConfig(vocab_size=args.vocab_size, d_model=args.d_model, n_layers=args.layers,
                   mixer=args.mixer, mamba=mcfg, max_seq_len=max(1024, getattr(args, "max_seq_len", 0) or 0,
                                                                   getattr(args, "seq_len", 0) or 0))
    torch.manual_seed(args.seed)
    return build_lm(cfg).to(device), cfg, device


def _free_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _check_memory(args) -> None:
    """Refuse, before any allocation, a batch x sequence that one training step cannot hold.

    The CPU scan keeps (batch, d_inner, seq, d_state) tensors for the backward: the reference's
    batch 128 x seq 1024 needs ~100 GB on a CPU, which the kernel would kill without a word.
    """
    import torch

    from anybudget.ssm.lm import LMConfig
    from anybudget.ssm.mamba import MambaConfig
    from anybudget.ssm.train import estimate_step_bytes

    if args.mixer != "mamba":
        return
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    scan = args.scan_backend
    if scan == "auto":
        scan = "triton" if device.startswith("cuda") else "chunked"
    pol = None if args.polarize == "none" else args.polarize
    cfg = LMConfig(vocab_size=args.vocab_size, d_model=args.d_model, n_layers=args.layers,
                   mamba=MambaConfig(d_model=args.d_model, d_state=args.d_state, polarize=pol))
    limit = args.max_memory * 1e9 if args.max_memory else 0.8 * _free_bytes(device)
    need = estimate_step_bytes(cfg, args.batch_size, args.max_seq_len, scan)
    if need <= limit:
        return
    fit = next((b for b in (64, 32, 16, 8, 4, 2, 1) if b < args.batch_size
                and estimate_step_bytes(cfg, b, args.max_seq_len, scan) <= limit), None)
    if fit is not None:
        hint = f"try --batch-size {fit} (~{estimate_step_bytes(cfg, fit, args.max_seq_len, scan) / 1e9:.1f} GB)"
    else:
        hint = "try --batch-size 8 --max-seq-len 256" + ("" if device.startswith("cuda") else " or a GPU")
    raise SystemExit(
        f"error: --batch-size {args.batch_size} at --max-seq-len {args.max_seq_len} needs ~{need / 1e9:.0f} GB "
        f"for one training step on {device} ({scan} scan), more than the {limit / 1e9:.1f} GB allowed "
        f"(--max-memory); {hint}"
    )


def _run_name(args) -> str:
    return f"ssm_mqar_{args.mixer}_{args.polarize}_L{args.layers}_d{args.d_model}"


def _cmd_mqar(args) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from anybudget.io import write_results
    from anybudget.ssm.mqar import TEST_SETS, TRAIN_MIXTURE, MQARSegment
    from anybudget.ssm.plots import plot_history
    from anybudget.ssm.train import TrainConfig, train_mqar

    require("plot", "matplotlib")
    if args.vocab_size <= args.max_seq_len:
        raise SystemExit(f"error: --vocab-size {args.vocab_size} must be > --max-seq-len {args.max_seq_len}")
    _check_memory(args)
    model, cfg, device = _build(args)
    L = args.max_seq_len
    segments = tuple(s for s in TRAIN_MIXTURE if s.seq_len <= L)
    if not segments:
        raise SystemExit(f"--max-seq-len={L} leaves no training segment (shortest is 64)")
    tests = TEST_SETS if L == 1024 else tuple(MQARSegment(L, 1000, L // k) for k in (16, 8, 4))
    tcfg = TrainConfig(lr=args.lr, batch_size=args.batch_size, max_steps=args.steps, seed=args.seed,
                       eval_every=args.eval_every, vocab_size=args.vocab_size,
                       test_examples=args.test_examples)
    out = Path(args.out)
    name = _run_name(args)
    # Training always checkpoints (into the output folder unless told otherwise), so a stop by
    # --time-budget or an interruption never throws the finished steps away.
    checkpoint = args.checkpoint or out / f"{name}.ckpt.pt"
    old_scan = _scan_preset(args.scan_kernels)
    try:
        res = train_mqar(model, tcfg, segments, tests, checkpoint=checkpoint,
                         time_budget_s=args.time_budget, quiet=args.quiet, step=args.step)
    finally:
        if old_scan is not None:
            from anybudget.ssm.scan_triton import ScanBlocks

            ScanBlocks.restore(old_scan)
    if not res["done"]:
        print(f"stopped at step {res['step']} by --time-budget; checkpoint {checkpoint}: rerun the same "
              "command to resume")
        return 0
    config = {"model": asdict(cfg), "train": asdict(tcfg), "device": device,
              "train_segments": [asdict(s) for s in segments], "test_sets": [asdict(s) for s in tests]}
    path = write_results(name, config, {"final": res["final"], "history": res["history"]}, out_dir=out)
    plot_history({name: res["history"]}, out / f"{name}.png")
    fin = res["final"]
    print("  ".join(f"{k}={fin[k]:.4f}" for k in fin if k.startswith("kv") or k == "avg"))
    print(f"wrote {path} and {out / (name + '.png')}")
    return 0


def _scan_preset(name: str):
    """``ScanBlocks.preset(name)`` when Triton is there (the previous settings), else None (the CPU scans)."""
    if name == "default":
        return None
    try:
        from anybudget.ssm.scan_triton import ScanBlocks
    except ImportError:  # no triton: the chunked PyTorch scan runs, which has no such settings
        print(f"--scan-kernels {name}: triton is not installed; the PyTorch scan runs (pip install 'anybudget[gpu]')")
        return None
    return ScanBlocks.preset(name)


def _cmd_diagnose(args) -> int:
    from pathlib import Path

    from anybudget.io import write_results
    from anybudget.ssm.diagnostics import (
        influence_scores,
        layer_sharpness,
        plot_influence,
        plot_sharpness,
    )
    from anybudget.ssm.mqar import multiquery_ar

    require("plot", "matplotlib")
    model, _cfg, device = _build(args)
    if args.checkpoint:
        from anybudget.ssm.checkpoint import load_model_weights

        load_model_weights(model, args.checkpoint, device)
    ids, _ = multiquery_ar(args.vocab_size, args.seq_len, max(1, args.seq_len // 16), args.batch,
                           seed=args.seed, random_non_queries=True, device=device)
    infl = influence_scores(model, ids)
    sharp = layer_sharpness(model, ids)
    out = Path(args.out)
    name = f"ssm_diagnose_{args.mixer}_{args.polarize}_L{args.layers}_d{args.d_model}"
    # The JSON first: a failed plot never loses the numbers.
    path = write_results(name, {"args": {k: v for k, v in vars(args).items() if k != "func"}},
                         {"influence_log_norm": infl.tolist(), "sharpness": sharp}, out_dir=out)
    plot_influence({name: infl}, out / f"{name}_influence.png")
    plot_sharpness({name: sharp}, out / f"{name}_sharpness.png")
    print(f"sharpness per layer: {[round(s, 4) for s in sharp]}")
    print(f"wrote {path}")
    return 0
