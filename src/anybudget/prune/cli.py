"""``anybudget prune imp | apply | report``. Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from anybudget.cli_types import (
    add_dataclass_args,
    as_path,
    dataclass_from_args,
    device,
    existing_file,
    fraction,
    nonneg_int,
    positive_float,
    positive_int,
    writable_dir,
)


def register(sub) -> None:
    from anybudget.prune.imp import IMPConfig
    from anybudget.prune.train import FineTuneConfig

    p = sub.add_parser("prune", help="lottery tickets: IMP with rewinding, masks as data, 2:4 export")
    ps = p.add_subparsers(dest="prune_command", metavar="VERB", required=True)

    i = ps.add_parser("imp", help="iterative magnitude pruning of a local BERT on a task (resumable)")
    i.add_argument("--model", required=True, type=Path, help="pre-trained BERT folder (save_pretrained)")
    i.add_argument("--task", required=True, help="task file name under --data/tasks, or 'mlm'")
    i.add_argument("--data", type=Path, default=Path(".carry/prune/imp"),
                   help="prepared data (benchmarks/prune/prepare.py; default .carry/prune/imp)")
    i.add_argument("--out", required=True, type=as_path(writable_dir), help="run folder: masks, checkpoints, imp.json")
    i.add_argument("--seed", type=int, default=0, help="(default 0)")
    i.add_argument("--mlm-steps", type=positive_int, default=1000, help="MLM steps per round (task mlm; default 1000)")
    # IMPConfig and FineTuneConfig hold the defaults (the paper's); one flag per field used here
    add_dataclass_args(i, IMPConfig, skip=("patterns",), title="IMP (IMPConfig)", overrides={
        "rounds": {"type": positive_int, "help": "pruning rounds (10%% of the weights each, linear)"},
        "schedule": {"choices": ("linear", "geometric")},
        "rate": {"type": fraction, "help": "per-round rate (None: 0.1 linear, 0.2 geometric)"},
        "scope": {"choices": ("global", "layerwise")},
        "rewind_step": {"type": nonneg_int, "help": "0: pre-trained weights; k: step k of round 0"},
        "head": {"choices": ("keep", "rewind")}})
    add_dataclass_args(i, FineTuneConfig, only=("epochs", "lr", "batch_size"), title="fine-tuning (FineTuneConfig)",
                       overrides={"epochs": {"type": positive_float}, "lr": {"type": positive_float},
                                  "batch_size": {"type": positive_int}})
    i.add_argument("--device", default=None, type=device, help="cpu or cuda (default: cuda if available)")
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=_imp)

    a = ps.add_parser("apply", help="apply a mask to a model and save a plain (baked) copy")
    a.add_argument("--mask", required=True, type=as_path(existing_file))
    a.add_argument("--model", required=True, type=Path)
    a.add_argument("--out", required=True, type=as_path(writable_dir))
    a.add_argument("--skip-missing", action="store_true",
                   help="ignore mask entries the model lacks (e.g. a classifier's pooler on an MLM model)")
    a.set_defaults(func=_apply)

    r = ps.add_parser("report", help="overall and per-matrix sparsity of a mask file")
    r.add_argument("--mask", required=True, type=as_path(existing_file))
    r.add_argument("--layers", action="store_true", help="one line per matrix")
    r.set_defaults(func=_report)


def _load_model(path: Path):
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(path)
    arch = (cfg.architectures or ["AutoModel"])[0]
    cls = getattr(transformers, arch, transformers.AutoModel)
    return cls.from_pretrained(path)


def _imp(args: argparse.Namespace) -> int:
    import torch

    from anybudget.prune.imp import IMPConfig, imp
    from anybudget.prune.train import FineTuneConfig, dist_setup, evaluate, finetune

    cfg = dataclass_from_args(IMPConfig, args)
    ft = dataclass_from_args(FineTuneConfig, args, max_steps=args.mlm_steps if args.task == "mlm" else None)
    device = dist_setup(args.device)
    if args.quiet:
        from transformers.utils import logging

        logging.set_verbosity_error()
    if args.task == "mlm":
        from transformers import BertForMaskedLM

        from anybudget.prune.mlm import mlm_accuracy

        train, val = _streams(args)

        def make():
            return BertForMaskedLM.from_pretrained(args.model, dtype=torch.float32).to(device)

        def train_fn(model, seed, mask=None, on_step=None):
            return finetune(model, train, "mlm", ft, seed, mask=mask, on_step=on_step, progress=not args.quiet)

        def eval_fn(model):
            return {f"dev.{k}": v for k, v in mlm_accuracy(model, val).items()}
    else:
        from transformers import BertForSequenceClassification

        from anybudget.prune.tasks import load_task

        path = next((p for p in (args.data / "tasks" / f"{args.task}.safetensors.xz",
                                 args.data / "tasks" / f"{args.task}.safetensors") if p.exists()), None)
        if path is None:
            raise SystemExit(f"error: --task {args.task!r}: no {args.task}.safetensors[.xz] under "
                             f"{args.data / 'tasks'} (run benchmarks/prune/prepare.py)")
        spec, splits, _ = load_task(path)

        def make():
            torch.manual_seed(args.seed)
            return BertForSequenceClassification.from_pretrained(
                args.model, num_labels=1 if spec.kind == "regression" else 2, dtype=torch.float32).to(device)

        def train_fn(model, seed, mask=None, on_step=None):
            return finetune(model, splits["train"], spec.kind, ft, seed, mask=mask, on_step=on_step,
                            progress=not args.quiet)

        def eval_fn(model):
            return {f"dev.{k}": v for k, v in evaluate(model, splits["dev"], spec.kind).items()}

    try:
        from dataclasses import asdict

        run = {"model": str(args.model), "task": args.task, "finetune": asdict(ft)}
        res = imp(make, train_fn, eval_fn, cfg, seed=args.seed, out_dir=args.out, progress=not args.quiet,
                  run_config=run)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    for r in res.rounds:
        print(f"round {r['round']}: sparsity {r['sparsity']:.3f}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items()))
    print(f"masks: {args.out}/round_XX.mask.safetensors")
    return 0


def _streams(args):
    import json
    import lzma

    import numpy as np

    from anybudget.prune.mlm import MLMStream

    vocab = {w: i for i, w in enumerate((args.model / "vocab.txt").read_text().splitlines())}
    max_pos = json.loads((args.model / "config.json").read_text()).get("max_position_embeddings", 128)
    out = []
    for name in ("mlm_train", "mlm_val"):
        toks = np.frombuffer(lzma.decompress((args.data / f"{name}.u16.xz").read_bytes()), dtype=np.uint16)
        out.append(MLMStream(toks, min(128, max_pos), vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"], len(vocab)))
    return out


def _apply(args: argparse.Namespace) -> int:
    from anybudget.prune.masks import bake, load_mask, sparsity_report

    mask, _ = load_mask(args.mask)
    model = _load_model(args.model)
    names = {n for n, _ in model.named_parameters()}
    prefix = getattr(model, "base_model_prefix", "") + "."
    if not set(mask) <= names and {k.removeprefix(prefix) for k in mask} <= names:
        mask = {k.removeprefix(prefix): v for k, v in mask.items()}  # a task mask on a bare encoder
    skipped = sorted(set(mask) - names) if args.skip_missing else []
    mask = {k: v for k, v in mask.items() if k not in skipped}
    try:
        baked = bake(model, mask)
    except ValueError as e:
        raise SystemExit(f"error: --mask {args.mask}: {e}") from None
    baked.save_pretrained(args.out)
    for f in args.model.iterdir():
        if f.name.startswith(("vocab", "tokenizer", "special_tokens")):
            shutil.copy(f, args.out / f.name)
    rep = sparsity_report(mask)
    print(f"applied {args.mask} ({100 * rep['overall']:.1f}% of {rep['total']:,} weights pruned) -> {args.out}")
    if skipped:
        print(f"skipped {len(skipped)} entries the model lacks: {skipped}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from anybudget.prune.masks import load_mask, sparsity_report

    mask, meta = load_mask(args.mask)
    rep = sparsity_report(mask)
    print(f"{args.mask}: {len(mask)} matrices, {rep['total']:,} weights, {rep['pruned']:,} pruned "
          f"({100 * rep['overall']:.2f}%)")
    if meta:
        print(f"metadata: {meta}")
    if args.layers:
        width = max(len(k) for k in rep["layers"])
        for k, v in rep["layers"].items():
            print(f"  {k:<{width}}  {100 * v['sparsity']:6.2f}%  of {v['numel']:,}")
    return 0
