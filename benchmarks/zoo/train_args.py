"""The options of train_lm_v2.py (and train_lm_v3.py, which passes its other options on), checked.

``parse_args`` refuses bad values with a message naming the option, value and allowed range, and,
unless --no-pack or --smoke, a model whose xz'd bf16 pack cannot come back from one GPU call
(train_state.check_pack_fits), before any data is read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import train_state as ts

ROOT = Path(__file__).resolve().parents[2]


def build_parser(doc: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default=str(ROOT / ".carry/zoo2/train.u16.xz"))
    ap.add_argument("--tokenizer", default=str(ROOT / ".carry/zoo2/tokenizer"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=8.3, help="wall-clock budget of this call's training loop")
    ap.add_argument("--total-minutes", type=float, default=None,
                    help="with --state-dir: training minutes of all calls together (fixes the schedule; default --minutes)")
    ap.add_argument("--state-dir", default=None, help="save/resume the run here (a git-ignored folder, e.g. .carry/reflm4_state)")
    ap.add_argument("--resume-only", action="store_true",
                    help="with --state-dir: refuse to start a new run (a later call on a machine that lost the state)")
    ap.add_argument("--stop-after-steps", type=int, default=None, help="end this call after this many steps (tests, planning)")
    ap.add_argument("--max-epochs", type=float, default=30.0)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64, help="sequences per GPU per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--val-windows", type=int, default=96)
    ap.add_argument("--log-every", type=int, default=25, help="training-loss points in the curve")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512, help="a multiple of 128")
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--name", default="reflm_v2_train", help="the record's name")
    ap.add_argument("--teacher", default=None, help="distil from this saved causal LM (same tokenizer)")
    ap.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation term, in [0, 1]")
    ap.add_argument("--kd-temp", type=float, default=1.0, help="distillation temperature, > 0")
    ap.add_argument("--anneal-frac", type=float, default=0.0, help="anneal phase: this fraction of the steps at the end, in [0, 1)")
    ap.add_argument("--anneal-data", default=str(ROOT / ".carry/reflm_anneal/indomain.u16.xz"), help="in-domain tokens")
    ap.add_argument("--anneal-val", default=str(ROOT / ".carry/reflm_anneal/indomain_val.u16.xz"),
                    help="the selection set (v1_validation) of the anneal phase")
    ap.add_argument("--anneal-indomain-frac", type=float, default=0.5, help="share of in-domain windows in the phase, in [0, 1]")
    ap.add_argument("--finish-s", type=float, default=60.0,
                    help="with --state-dir: past --minutes, go on if the schedule ends within this many seconds")
    ap.add_argument("--corpus", default=None, help="what the model was trained on (a manifest), kept in the record")
    ap.add_argument("--keep", default=None, help="also save the final model (and tokenizer) to this folder")
    ap.add_argument("--no-pack", action="store_true", help="write only train_record.json to --out (no weights)")
    ap.add_argument("--smoke", action="store_true")
    return ap


def parse_args(argv=None, vocab: int | None = None, doc: str | None = None) -> argparse.Namespace:
    """Parse and check the options; unless --no-pack, refuse a model too large to come back (train_state)."""
    ap = build_parser(doc)
    args = ap.parse_args(argv)
    if args.hidden % 128:
        ap.error(f"--hidden {args.hidden}: must be a multiple of 128 (64-wide heads, 2 query heads per KV head)")
    if not 0.0 <= args.kd_alpha <= 1.0:
        ap.error(f"--kd-alpha {args.kd_alpha}: must be in [0, 1]")
    if args.kd_temp <= 0:
        ap.error(f"--kd-temp {args.kd_temp}: must be > 0")
    if not 0.0 <= args.anneal_frac < 1.0:
        ap.error(f"--anneal-frac {args.anneal_frac}: must be in [0, 1)")
    if not 0.0 <= args.anneal_indomain_frac <= 1.0:
        ap.error(f"--anneal-indomain-frac {args.anneal_indomain_frac}: must be in [0, 1]")
    if args.total_minutes is not None and (args.state_dir is None or args.total_minutes < args.minutes):
        ap.error(f"--total-minutes {args.total_minutes}: needs --state-dir and must be >= --minutes {args.minutes}")
    if args.resume_only and not args.state_dir:
        ap.error("--resume-only: needs --state-dir")
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        ap.error(f"--stop-after-steps {args.stop_after_steps}: must be >= 1")
    for flag in ("anneal_data", "anneal_val"):
        if args.anneal_frac > 0 and not Path(getattr(args, flag)).is_file():
            ap.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: no such file (anneal_lm.py --prepare, restage_v3.py)")
    if not args.no_pack and not args.smoke:
        if vocab is None:
            from transformers import AutoTokenizer

            vocab = len(AutoTokenizer.from_pretrained(args.tokenizer))
        try:
            args.pack = ts.check_pack_fits(vocab, args.layers, args.hidden, args.ffn, ts.tokenizer_pack_bytes(args.tokenizer))
        except ValueError as err:
            ap.error(str(err))
    return args
