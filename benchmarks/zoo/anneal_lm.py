"""Anneal the reference LM: short continued training on an in-domain-heavy mixture, learning rate to 0.

End-of-training data-mixture annealing (Llama 3 report, Sec. 3.1.3): continue a trained model for a few
steps on a mixture up-weighted towards the target domains while the learning rate decays linearly to 0.
Here the target is v1's six documentation packages (benchmarks/zoo/build/train.txt, ~7% of v3's mix;
every one of its documents is already in v2's train split, so no new text is added, only re-weighted),
mixed with documents of v2's train split (the general mix), starting from the shipped v3 model.

  python benchmarks/zoo/anneal_lm.py --prepare            (CPU, ~2 min: no-leak check, token files in
                                                            .carry/reflm_anneal/ and /work/main/.carry/reflm_anneal/)
  python benchmarks/zoo/anneal_lm.py --out $OUT [--lr 3e-5,1e-4,3e-4] [--steps 600] [--minutes 5.5]
  python benchmarks/zoo/anneal_lm.py --smoke --out /tmp/smoke  (CPU, tiny random model, seconds)

One run per (--lr, --indomain-frac) pair, each from the same starting weights (fresh AdamW, betas
0.9/0.95, weight decay 0.1 on matrices, bf16 autocast, fused on CUDA), linear warm-up over --warmup
steps then linear decay to 0 at --steps. The default peak (1e-4) is v3's final learning rate (2e-3 x
min-lr-frac 0.05), the default batch v3's per-GPU 64 x 1024 tokens: a fresh AdamW moves every weight
by about lr per step, so a higher peak or a small batch first pushes the model away (CPU pilot: 40
steps of 4 x 512 tokens at 3e-4 raised v1-test bits per byte by 1.8%; 27 steps at 3e-5: +0.1%).
Bits per byte (lm_eval.py, 1024-token windows) on v1_validation (v1's in-domain validation
documents: the selection set), v1_test (the target), test, validation and heldout, before training,
every --eval-every steps and at the end. The checkpoint with the lowest v1_validation bits per byte
over all runs and evaluation points (step 0, the starting model, included) is the result; v1_test
never selects. --minutes guards the wall clock: a run shortens its schedule to fit the time left,
and training stops early so that the final evaluation and saving still fit.

Writes to --out: <--name>.json (write_results: every run's curve), anneal.png, train_record.json
and pack.tar.part-* (the selected model, bf16 safetensors + tokenizer, its record and plot: tar | xz,
15 MiB parts, read by ``package_reflm.py --parts``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from anneal_data import (
    BOS,
    Mixture,
    document_slice,
    encode_documents,
    leak_check,
    split_documents,
    write_u16_xz,
)
from lm_eval import evaluate as eval_bpb
from lm_eval import read_ids
from train_lm import lm_step

from anybudget.io import atomic_write_json, write_plot, write_results

CARRY = ROOT / ".carry/reflm_anneal"
MAIN_CARRY = Path("/work/main/.carry/reflm_anneal")
ASSETS = ROOT / "src/anybudget/assets/reflm"
DATA2 = ROOT / "benchmarks/zoo/data_v2"
EVAL_SETS = ("v1_validation", "v1_test", "test", "validation", "heldout")
SELECT = "v1_validation"
LR_DEFAULT = "1e-4"
XZ_PY = "import lzma, shutil, sys; f = lzma.open(sys.stdout.buffer, 'wb'); shutil.copyfileobj(sys.stdin.buffer, f); f.close()"


def prepare(args) -> int:
    """No-leak check, then the in-domain, in-domain validation and general-slice token files."""
    from transformers import AutoTokenizer

    build, build2 = Path(args.build), Path(args.build_v2)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)

    def read(p):
        return split_documents(p.read_text(encoding="utf-8"))

    train, val, test = read(build / "train.txt"), read(build / "validation.txt"), read(build2 / "v1_test.txt")
    leak = {"v1_test": leak_check(train, test), "v1_validation": leak_check(train, val)}
    if not leak["v1_test"]["ok"]:
        raise SystemExit(f"leak check failed: {leak['v1_test']}")
    v2_train = {d.strip() for d in read(build2 / "train.txt")} if (build2 / "train.txt").is_file() else None
    general = document_slice(read_ids(args.general_source).astype(np.uint16),
                             tok.convert_tokens_to_ids(BOS), args.general_tokens)
    arrays = {"indomain": encode_documents(tok, train), "indomain_val": encode_documents(tok, val), "general": general}
    record = {"leak_check": leak, "files": {},
              "indomain_documents_in_v2_train": None if v2_train is None else sum(d.strip() in v2_train for d in train)}
    for dest in dict.fromkeys([Path(args.carry), *([Path(args.mirror)] if args.mirror else [])]):
        if dest != Path(args.carry) and not dest.parent.is_dir():
            continue  # no main checkout's .carry here
        for name, ids in arrays.items():
            nbytes = write_u16_xz(dest / f"{name}.u16.xz", ids)
            record["files"][name] = {"tokens": int(ids.size), "xz_bytes": nbytes}
        atomic_write_json(dest / "prepare.json", record)
        print("wrote", dest, record["files"], flush=True)
    print("leak check v1_test:", {k: v for k, v in leak["v1_test"].items() if k != "examples"})
    return 0


def lr_at(step: int, steps: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then linear decay to 0 at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (steps - step) / max(1, steps - warmup))


def evaluate_all(model, tok, evals: dict, seq: int, device, max_windows: int | None) -> dict:
    return {name: eval_bpb(model, tok, ids, seq, 32, device, max_windows) for name, ids in evals.items()}


def smoke_setup(args, work: Path):
    """A tiny random Llama with the shipped tokenizer, and small slices of the committed eval files as data."""
    from train_lm_v2 import model_config
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ASSETS)
    torch.manual_seed(0)
    cfg = model_config(len(tok), True, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(work / "init")
    tok.save_pretrained(work / "init")
    val = read_ids(DATA2 / "validation.u16.xz")
    data = {"indomain": val[:20_000], "indomain_val": val[20_000:24_000], "general": val[30_000:50_000]}
    args.seq, args.eval_seq, args.batch, args.steps, args.warmup, args.eval_every, args.eval_windows = 64, 64, 4, 6, 2, 3, 2
    if args.lr == LR_DEFAULT:
        args.lr = "3e-4,1e-3"
    return work / "init", data


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    from anybudget.io import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("v1_test", SELECT, "heldout") if n in runs[0]["curve"][0]["eval"]] if runs else []
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.3 * max(1, len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in runs:
            pts = [c for c in r["curve"] if "eval" in c]
            ax.plot([c["step"] for c in pts], [c["eval"][name]["bits_per_byte"] for c in pts], "o-", label=f"lr {r['lr']:g} frac {r['indomain_frac']:g}")
        ax.set_title(name)
        ax.set_xlabel("anneal step")
        ax.set_ylabel("bits per byte")
        ax.legend()
    save_figure(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="write the token files (CPU) and exit")
    ap.add_argument("--build", default=str(ROOT / "benchmarks/zoo/build"), help="v1 corpus (train/validation.txt)")
    ap.add_argument("--build-v2", default=str(ROOT / "benchmarks/zoo/build_v2"), help="v2 corpus (v1_test.txt)")
    ap.add_argument("--general-source", default=str(ROOT / ".carry/zoo2/train.u16.xz"))
    ap.add_argument("--general-tokens", type=int, default=4_000_000)
    ap.add_argument("--carry", default=str(CARRY))
    ap.add_argument("--mirror", default=str(MAIN_CARRY), help="--prepare also writes here ('' for nowhere)")
    ap.add_argument("--tokenizer", default=str(ASSETS))
    ap.add_argument("--init", default=str(ASSETS), help="the model folder to anneal (save_pretrained)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="reflm_anneal", help="the results record's name")
    ap.add_argument("--lr", default=LR_DEFAULT, help="peak learning rate; a comma list runs one anneal per value")
    ap.add_argument("--indomain-frac", default="0.7", help="in-domain share of the windows; a comma list: one run per (lr, frac)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64, help="windows per step (v3: 64 per GPU, 2 GPUs)")
    ap.add_argument("--seq", type=int, default=1024, help="training window (evaluation always uses --eval-seq)")
    ap.add_argument("--eval-seq", type=int, default=1024)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--log-every", type=int, default=25, help="training-loss points (and progress lines)")
    ap.add_argument("--eval-windows", type=int, default=None, help="cap on windows per eval set (default: all)")
    ap.add_argument("--eval-sets", default=",".join(EVAL_SETS))
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--minutes", type=float, default=5.5, help="wall-clock guard for the whole call")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward (CUDA)")
    ap.add_argument("--no-save", action="store_true", help="write the records only (no weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.prepare:
        return prepare(args)
    if args.out is None:
        ap.error("--out is required (except with --prepare)")
    fracs = [float(x) for x in str(args.indomain_frac).split(",")]
    if any(not 0.0 <= f <= 1.0 for f in fracs):
        ap.error(f"--indomain-frac {args.indomain_frac}: every value must be in [0, 1]")
    if args.steps < 1 or not 0 <= args.warmup < args.steps:
        ap.error(f"--steps {args.steps} / --warmup {args.warmup}: need steps >= 1 and 0 <= warmup < steps")
    if args.threads:
        torch.set_num_threads(args.threads)
    from train_lm import samples
    from train_lm_v2 import PROMPTS
    from transformers import AutoTokenizer, LlamaForCausalLM

    t_start = time.perf_counter()
    budget = args.minutes * 60
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    if args.smoke:
        init, data = smoke_setup(args, work)
    else:
        init = Path(args.init)
        data = {n: read_ids(Path(args.carry) / f"{n}.u16.xz") for n in ("indomain", "indomain_val", "general")}
    lrs = [float(x) for x in str(args.lr).split(",")]
    if any(not 0 < x < 1 for x in lrs):
        ap.error(f"--lr {args.lr}: every value must be in (0, 1)")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    tok = AutoTokenizer.from_pretrained(init)
    model = LlamaForCausalLM.from_pretrained(init, dtype=torch.float32).to(device)
    model.config._attn_implementation = "sdpa"
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    all_evals = {"v1_validation": data["indomain_val"], **{s: read_ids(DATA2 / f"{s}.u16.xz") for s in EVAL_SETS[1:]}}
    names = args.eval_sets.split(",")
    if SELECT not in names or not set(names) <= set(all_evals):
        ap.error(f"--eval-sets {args.eval_sets}: must include {SELECT} and be among {list(all_evals)}")
    evals = {n: all_evals[n] for n in names}
    fwd = torch.compile(model) if args.compile and device.type == "cuda" else model
    t0 = time.perf_counter()
    before = evaluate_all(model, tok, evals, args.eval_seq, device, args.eval_windows)
    eval_s = time.perf_counter() - t0
    print("start:", {n: round(r["bits_per_byte"], 4) for n, r in before.items()}, f"({eval_s:.0f}s)", flush=True)
    best = {"bpb": before[SELECT]["bits_per_byte"], "lr": None, "step": 0, "state": None, "eval": before}
    runs, tokens_per_step = [], args.batch * args.seq
    plan = [(lr, f) for f in fracs for lr in lrs]
    for i, (lr, frac) in enumerate(plan):
        model.load_state_dict(start_state)  # in place: a compiled forward stays valid
        mix = Mixture(data["indomain"], data["general"], frac, args.seq, args.seed + i)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        rest = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
        steps, curve = args.steps, [{"step": 0, "eval": before}]
        run_t0, rate_t0 = time.perf_counter(), None
        reserve = eval_s * 2 + 60  # a final evaluation, the samples and saving
        model.train()
        step = 0
        while step < steps:
            x = torch.from_numpy(mix.batch(args.batch)[0]).to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, args.warmup, lr)
            loss = lm_step(fwd, model, opt, x)
            step += 1
            if step in (10, 40) and device.type == "cuda":
                torch.cuda.synchronize()
            if step == 10:
                rate_t0 = time.perf_counter()
            if step == 40 and rate_t0 is not None:  # fit this run's schedule into its share of the time left
                per_step = (time.perf_counter() - rate_t0) / 30
                left = budget - (time.perf_counter() - t_start) - reserve * (len(plan) - i)
                n_evals = max(0, (steps - step) // args.eval_every)
                fit = step + int((left / (len(plan) - i) - n_evals * eval_s) / per_step)
                if fit < steps:
                    steps = max(step + 1, fit)
                    print(f"lr {lr:g} frac {frac:g}: schedule shortened to {steps} steps to fit --minutes", flush=True)
            if step % args.log_every == 0 or step == steps:
                curve.append({"step": step, "train_loss": loss.item(), "lr": lr_at(step - 1, steps, args.warmup, lr)})
                print(f"lr {lr:g} frac {frac:g} step {step}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t_start:.0f}s)",
                      flush=True)
            out_of_time = time.perf_counter() - t_start > budget - reserve * (len(plan) - i)
            if step % args.eval_every == 0 or step == steps or out_of_time:
                ev = evaluate_all(model, tok, evals, args.eval_seq, device, args.eval_windows)
                curve.append({"step": step, "eval": ev, "elapsed_s": time.perf_counter() - t_start})
                print(f"lr {lr:g} frac {frac:g} step {step}/{steps} loss {loss.item():.3f}",
                      {n: round(r["bits_per_byte"], 4) for n, r in ev.items()},
                      f"({time.perf_counter() - t_start:.0f}s)", flush=True)
                if ev[SELECT]["bits_per_byte"] < best["bpb"]:
                    best = {"bpb": ev[SELECT]["bits_per_byte"], "lr": lr, "frac": frac, "run": i, "step": step, "eval": ev,
                            "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
            if out_of_time:
                print("time guard: stopping this run", flush=True)
                break
        final = curve[-1]["eval"]
        runs.append({"lr": lr, "indomain_frac": frac, "steps_planned": args.steps, "steps_scheduled": steps, "steps_done": step,
                     "tokens": step * tokens_per_step, "indomain_rows_frac": mix.in_rows / max(1, mix.rows),
                     "indomain_passes": mix.in_rows * (args.seq + 1) / len(data["indomain"]),
                     "train_s": time.perf_counter() - run_t0, "curve": curve,
                     "final": {n: r["bits_per_byte"] for n, r in final.items()}})
        if time.perf_counter() - t_start > budget - reserve:
            print("time guard: no further runs", flush=True)
            break
    model.load_state_dict(best["state"] if best["state"] is not None else start_state)  # step 0: the start
    sel = {n: r["bits_per_byte"] for n, r in best["eval"].items()}
    base = {n: r["bits_per_byte"] for n, r in before.items()}
    metrics = {"selected": {"lr": best["lr"], "indomain_frac": best.get("frac"), "step": best["step"], "by": SELECT, "bits_per_byte": sel},
               "start": base, "change_pct": {n: 100 * (sel[n] / base[n] - 1) for n in sel},
               "target_v1_test_bpb": 1.034, "runs": runs, "wall_s": time.perf_counter() - t_start,
               "data_tokens": {n: int(a.size) for n, a in data.items()}}
    config = {k: v for k, v in vars(args).items()}
    write_results(args.name, config, metrics, baseline={"model": str(init), "bits_per_byte": base}, out_dir=out)
    png = write_plot(out / "anneal.png", lambda path: plot(runs, path))
    print("selected:", metrics["selected"], "change %:", {n: round(v, 2) for n, v in metrics["change_pct"].items()})
    if args.no_save:
        return 0
    smp = samples(model, tok, device, max_new_tokens=8 if args.smoke else 60, prompts=PROMPTS)
    pack = work / "pack"
    model.to(torch.bfloat16).save_pretrained(pack / "model", safe_serialization=True)
    tok.save_pretrained(pack / "model")
    n_params = sum(p.numel() for p in model.parameters())
    run = runs[best["run"]] if best["lr"] is not None else None
    tokens_seen = best["step"] * tokens_per_step
    from anybudget.io import results_record

    rec = results_record(f"{args.name}_train", {**config, "world_size": 1, "tokens_per_step": tokens_per_step},
                         {"params": n_params, "tokens_seen": tokens_seen,
                          "epochs": tokens_seen * (best.get("frac") or 0.0) / len(data["indomain"]),
                          "train_tokens": int(len(data["indomain"]) + len(data["general"])),
                          "train_time_s": run["train_s"] if run else 0.0, "eval": best["eval"], "samples": smp,
                          "anneal": metrics["selected"], "start_model": str(init)})
    rec["corpus"] = "benchmarks/zoo/build/train.txt (in-domain) + .carry/zoo2/train.u16.xz slice (general)"
    atomic_write_json(pack / "train_record.json", rec)
    atomic_write_json(out / "train_record.json", rec)
    members = "model train_record.json"
    if png is not None:  # package_reflm.py copies it as <record name>_loss.png
        (pack / "loss.png").write_bytes(png.read_bytes())
        members += " loss.png"
    compress = "xz -T0 -6" if shutil.which("xz") else f"{sys.executable} -c {XZ_PY!r}"
    subprocess.run(f"tar cf - -C {pack} {members} | {compress} | split -b 15M - {out}/pack.tar.part-",
                   shell=True, check=True)
    print(f"done in {time.perf_counter() - t_start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
