"""Train the v2 reference LM (Llama: GQA, RoPE, RMSNorm, SwiGLU; 27.3M parameters) on the v2 corpus.

One GPU, or several through ``torchrun`` (DDP; each rank draws its own random windows):
  torchrun --nproc_per_node 2 benchmarks/zoo/train_lm_v2.py --out $OUT --minutes 8.3
CPU smoke run (tiny model, a few steps):
  python benchmarks/zoo/train_lm_v2.py --smoke --out /tmp/smoke

bf16 autocast, torch.compile, fused AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear
warm-up then cosine decay scheduled to the wall-clock budget. Validation loss every --eval-every
steps; the best weights are kept. At the end: bits per byte on the v2 validation and test splits,
on v1's test documents and on the held-out domain (lm_eval.py), greedy and sampled continuations.

Distillation (--teacher DIR, a saved causal LM with the same tokenizer): the loss becomes
(1 - a) * CE(student, next token) + a * T^2 * KL(teacher_T || student_T) per token (Hinton et al. 2015,
eq. 2; a = --kd-alpha, T = --kd-temp), the teacher frozen in bf16. --keep DIR also saves the final model
there (e.g. a teacher for a later call on the same machine, when it is too large to come back).

Across calls (--state-dir DIR, a git-ignored folder such as .carry/reflm4_state; train_state.py):
the first call fixes the schedule (total steps) from its measured throughput and --total-minutes
(all calls' training minutes), every call trains for its --minutes and then saves weights, fused-AdamW
state, step, generators and curves atomically; a later call with the same DIR resumes that schedule
at that step and refuses a DIR made with other settings. Only the call that ends the schedule packs
the weights; earlier calls write train_record.json only.

Anneal phase (--anneal-frac F > 0; Llama 3 report, Sec. 3.1.3): the last F of the steps up-weight
the in-domain tokens (--anneal-data: v1's six documentation packages) while the learning rate falls
linearly from the cosine's value at the phase start to 0. --anneal-indomain-frac (default 0.5) is
their share of the windows: the in-domain text is ~7% of v3's mix, so 0.5 up-weights it ~7x, and the
other half of every batch stays general because an all-in-domain anneal of v3 (anneal_lm.py, 100%)
made general text worse by 0.8-2.4% while v1_test gained 1.5%; the call prints the passes over the
9.2M in-domain tokens this implies (keep them <~4: repeated data loses value beyond a few epochs,
Muennighoff et al. 2023). Bits per byte of every eval set are recorded at the phase's start and end;
the checkpoint with the lowest v1_validation (--anneal-val) bits per byte among the phase's
evaluations, its start included, is the result; v1_test never selects.

Output: the model folder (save_pretrained, bf16), train_record.json and loss.png, tar | xz, split into
15 MiB parts (``pack.tar.part-aa`` ...) so that they come back from the GPU machine, plus a copy of
train_record.json; a model whose pack cannot come back (train_state.check_pack_fits) is refused
before training. Unpack with ``cat pack.tar.part-* | xz -dcf | tar xf -`` (package_reflm.py --parts).
"""

from __future__ import annotations

import json
import os
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
import train_args
import train_state as ts
from lm_eval import evaluate as eval_bpb
from lm_eval import read_ids, window_losses
from train_lm import plot, samples

from anybudget.elastic.data import read_tokens
from anybudget.io import atomic_write_json
from anybudget.measure import device_record

PROMPTS = [
    "The Linux kernel",
    "In the Linux kernel, a device driver",
    "To install a package on a Debian system,",
    "Abdication, n. The act of",
    "The history of the printing press",
    "When the file is opened,",
]
DATA2 = ROOT / "benchmarks/zoo/data_v2"
SELECT = ts.SELECT
XZ_PY = "import lzma, shutil, sys; f = lzma.open(sys.stdout.buffer, 'wb'); shutil.copyfileobj(sys.stdin.buffer, f); f.close()"


def model_config(vocab: int, smoke: bool, bos: int, eos: int, pad: int, layers: int = 8, hidden: int = 512,
                 ffn: int = 1024):
    from transformers import LlamaConfig

    if smoke:
        dims = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2}
    else:
        # 27.3M parameters: 8 layers x 2.36M + tied 16384 x 512 embedding; GQA 8 query / 4 KV heads.
        # (the defaults; --layers/--hidden/--ffn change them, heads stay 64 wide with 2 query heads per KV head)
        dims = {"hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
                "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 128}
    return LlamaConfig(vocab_size=vocab, head_dim=64 if not smoke else 16, max_position_embeddings=4096,
                       rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=bos,
                       eos_token_id=eos, pad_token_id=pad, attention_bias=False, mlp_bias=False, **dims)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temp: float) -> torch.Tensor:
    """Mean per-token T^2 * KL(softmax(teacher / T) || softmax(student / T)) (Hinton et al. 2015, eq. 2), float32."""
    s = torch.log_softmax(student.float().reshape(-1, student.size(-1)) / temp, dim=-1)
    t = torch.log_softmax(teacher.float().reshape(-1, teacher.size(-1)) / temp, dim=-1)
    return torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean") * temp * temp


def load_teacher(path: str, cfg, device):
    """A frozen teacher in eval mode (bf16 on the GPU, float32 on the CPU); its vocabulary must be the student's."""
    from transformers import AutoModelForCausalLM

    if not Path(path).is_dir():
        raise FileNotFoundError(f"--teacher {path}: no such folder (a save_pretrained causal LM)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    if teacher.config.vocab_size != cfg.vocab_size:
        raise ValueError(f"--teacher {path}: vocabulary {teacher.config.vocab_size} != the student's {cfg.vocab_size}")
    teacher.config._attn_implementation = "sdpa"
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def parse_args(argv=None, vocab: int | None = None):
    """The options (train_args.py), checked; the model's pack must fit the trip back unless --no-pack."""
    return train_args.parse_args(argv, vocab, __doc__)


def main(argv=None, train=None, extra_evals=None) -> int:
    """Train; ``train`` (token ids, any integer dtype) replaces --train, ``extra_evals`` adds evaluation sets."""
    args = parse_args(argv)
    from transformers import AutoTokenizer, LlamaForCausalLM

    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    if ddp:
        import torch.distributed as dist

        local = int(os.environ["LOCAL_RANK"])
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            dist.init_process_group("nccl")
            device = torch.device("cuda", local)
        else:  # CPU smoke run of the distributed path
            dist.init_process_group("gloo")
            device = torch.device("cpu")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    main_rank = rank == 0
    say = print if main_rank else (lambda *a, **k: None)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + 1000 * rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    train = read_ids(args.train) if train is None else train
    evals = {s: read_ids(DATA2 / f"{s}.u16.xz") for s in ("validation", "test", "v1_test", "heldout")}
    evals.update(extra_evals or {})
    anneal = read_tokens(args.anneal_data) if args.anneal_frac > 0 else None
    if anneal is not None:
        evals[SELECT] = read_ids(args.anneal_val)
    if args.smoke:
        args.seq, args.batch, args.eval_every, args.warmup, args.val_windows, args.log_every = 64, 4, 5, 2, 4, 1
        train = train[:200_000]
    cap = 4 if args.smoke else None
    cfg = model_config(len(tok), args.smoke, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                       args.layers, args.hidden, args.ffn)
    model = LlamaForCausalLM(cfg).to(device)
    model.config._attn_implementation = "sdpa"
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    tokens_per_step = args.batch * args.seq * world
    max_steps = int(args.max_epochs * len(train) / tokens_per_step)
    total_steps = 12 if args.smoke else None
    step, tokens_seen, curve, train_s_before, calls = 0, 0, [], 0.0, []
    best = {"by": "val_loss", "value": float("inf"), "step": 0, "state": None}
    phase = {"start": None, "indomain_rows": 0, "before": None, "end": None, "curve": []}
    fp = ts.fingerprint(args, world_size=world, train_tokens=len(train), vocab=len(tok),
                        anneal_tokens=0 if anneal is None else len(anneal))
    meta = ts.read_meta(args.state_dir) if args.state_dir else None
    if args.resume_only and meta is None:
        if ddp:
            torch.distributed.destroy_process_group()
        raise SystemExit(f"error: --resume-only: no checkpoint in --state-dir {args.state_dir} (the machine was not kept "
                         "warm?); stage again and train in one call (--total-minutes = --minutes) or start a new schedule")
    if meta is not None:  # resume: same settings, same schedule, the saved step
        try:
            ts.check_fingerprint(meta["fingerprint"], fp, args.state_dir)
        except ValueError as err:
            if ddp:
                torch.distributed.destroy_process_group()
            raise SystemExit(f"error: {err}") from None
        saved = ts.load(args.state_dir, model, opt, rank, rng, device)
        step, tokens_seen, curve, total_steps = meta["step"], meta["tokens_seen"], meta["curve"], meta["total_steps"]
        train_s_before, calls, phase = meta["train_time_s"], meta["calls"], meta["anneal"]
        best = {**meta["best"], "state": saved["state"] if saved else None}
        best["value"] = float("inf") if best["value"] is None else best["value"]
        say(f"resumed {args.state_dir} at step {step} of {total_steps}", flush=True)
    net = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(net) if device.type == "cuda" else net
    teacher = load_teacher(args.teacher, cfg, device) if args.teacher else None
    t_fwd = torch.compile(teacher) if teacher is not None and device.type == "cuda" else teacher

    budget_s = args.minutes * 60
    sched_s = (args.total_minutes or args.minutes) * 60
    t_start = time.perf_counter()
    t_rate0 = rate = None
    step0 = step

    def lr_at(s: int) -> float:
        total = total_steps or max_steps
        return ts.learning_rate(s, total, args.warmup, args.lr, args.min_lr_frac,
                                ts.anneal_start(total_steps, args.anneal_frac) if total_steps else None)

    def sync_int(v: int) -> int:
        if not ddp:
            return v
        t = torch.tensor([v], device=device)
        torch.distributed.broadcast(t, 0)
        return int(t.item())

    def windows(starts, src) -> list:
        return [src[s: s + args.seq + 1] for s in starts]

    model.train()
    while total_steps is None or step < total_steps:
        a_start = ts.anneal_start(total_steps, args.anneal_frac) if total_steps else None
        if a_start is not None and step >= a_start:  # anneal phase: in-domain rows up-weighted
            n_in = ts.indomain_rows(step - a_start, args.batch, args.anneal_indomain_frac)
            rows = windows(rng.integers(0, len(anneal) - args.seq - 1, size=n_in), anneal)
            rows += windows(rng.integers(0, len(train) - args.seq - 1, size=args.batch - n_in), train)
            phase["indomain_rows"] += n_in
        else:
            rows = windows(rng.integers(0, len(train) - args.seq - 1, size=args.batch), train)
        x = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = fwd(input_ids=x[:, :-1]).logits
            if teacher is not None:
                with torch.no_grad():
                    t_logits = t_fwd(input_ids=x[:, :-1]).logits
        logits = logits.float()  # once: the CE and the KD term both read it
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        if teacher is not None:
            loss = (1 - args.kd_alpha) * loss + args.kd_alpha * kd_loss(logits, t_logits, args.kd_temp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        if step - step0 == 30 and device.type == "cuda":  # compile and warm-up done: measure speed from here
            torch.cuda.synchronize()
            t_rate0 = time.perf_counter()
        if t_rate0 is not None and step - step0 == 90:
            torch.cuda.synchronize()
            rate = 60 / (time.perf_counter() - t_rate0)
            if total_steps is None:  # the first call fixes the schedule of all calls
                warm_s = max(0.0, t_rate0 - t_start - 30 / rate) + (15 if args.state_dir else 0)  # per later call
                eval_tok_s = 2 * rate * tokens_per_step / world  # rank 0 alone, forward only: ~2x a step's tokens/s
                phase_s = 0 if anneal is None else (len(evals[SELECT]) + len(evals["v1_test"])) / eval_tok_s
                fixed_s = 0 if anneal is None else 2 * sum(len(e) for e in evals.values()) / eval_tok_s
                total_steps, n_calls = ts.fit_schedule(step, rate, train_s_before, time.perf_counter() - t_start, sched_s,
                                                       budget_s, warm_s, args.eval_every, max_steps, args.anneal_frac,
                                                       phase_s, fixed_s)
                total_steps = sync_int(total_steps)
                a = ts.anneal_start(total_steps, args.anneal_frac)
                passes = 0 if a is None else ((total_steps - a) * args.batch * world * args.anneal_indomain_frac
                                              * (args.seq + 1) / len(anneal))
                say(f"{rate:.2f} steps/s = {rate * tokens_per_step / 1e6:.2f} M tok/s on {world} GPU(s); "
                    f"schedule {total_steps} steps over {n_calls} call(s) = {total_steps * tokens_per_step / 1e6:.0f}M "
                    f"tokens = {total_steps * tokens_per_step / len(train):.1f} epochs"
                    + ("" if a is None else f"; anneal from step {a}: {passes:.1f} passes over the in-domain tokens"), flush=True)
        if step % args.log_every == 0 and main_rank:
            curve.append({"step": step, "epoch": tokens_seen / len(train), "train_loss": loss.item(), "lr": lr_at(step - 1)})
        a_start = ts.anneal_start(total_steps, args.anneal_frac) if total_steps else None
        in_phase = a_start is not None and step >= a_start
        phase_eval = in_phase and (step == a_start or (step - a_start) % args.eval_every == 0 or step == total_steps)
        if step % args.eval_every == 0 or step == total_steps or phase_eval:
            if main_rank:
                v_sum, v_t = window_losses(model, evals["validation"], args.seq, 32, device, args.val_windows)
                v = v_sum / v_t.size
                curve.append({"step": step, "epoch": tokens_seen / len(train), "val_loss": v,
                              "elapsed_s": train_s_before + time.perf_counter() - t_start})
                say(f"step {step} epoch {tokens_seen / len(train):.2f} train {loss.item():.3f} val {v:.3f} "
                    f"({time.perf_counter() - t_start:.0f}s)", flush=True)
                if not in_phase and v < best["value"]:
                    best = {"by": "val_loss", "value": v, "step": step, "state": ts.clone(model)}
                if phase_eval:
                    ts.phase_eval(model, tok, evals, args.seq, device, cap, step, a_start, total_steps, phase, best, say)
            if ddp:
                torch.distributed.barrier()
        if args.stop_after_steps and step - step0 >= args.stop_after_steps and step != total_steps:
            break
        over = time.perf_counter() - t_start > budget_s * (1.0 if args.state_dir else 1.04)
        if over and args.state_dir and rate and total_steps and (total_steps - step) / rate < args.finish_s:
            over = False  # the schedule ends within --finish-s: finish it in this call rather than another
        if step % 50 == 0 and sync_int(int(over)):
            say("time budget reached", flush=True)
            break
    call_s = time.perf_counter() - t_start
    train_time = train_s_before + call_s
    calls.append({"steps": [step0, step], "train_s": call_s, "steps_per_s": rate})
    complete = total_steps is not None and step >= total_steps
    if args.state_dir:
        ts.save_all(args.state_dir, ddp, main_rank, rank, model, opt, rng, best, {
            "fingerprint": fp, "step": step, "tokens_seen": tokens_seen, "total_steps": total_steps, "curve": curve,
            "train_time_s": train_time, "calls": calls, "anneal": phase, "complete": complete,
            "best": {k: v for k, v in best.items() if k != "state"}})
    if ddp:
        torch.distributed.barrier()
    if not main_rank:
        torch.distributed.destroy_process_group()
        return 0
    metrics = {"params": n_params, "steps": step, "total_steps": total_steps, "tokens_seen": tokens_seen,
               "epochs": tokens_seen / len(train), "train_tokens": len(train), "train_time_s": train_time,
               "calls": calls, "schedule_complete": complete, "best_step": best["step"], "selected_by": best["by"],
               "best_value": best["value"], "curve": curve}
    if args.anneal_frac > 0:
        metrics["anneal"] = {**phase, "frac": args.anneal_frac, "indomain_frac": args.anneal_indomain_frac,
                             "indomain_passes": phase["indomain_rows"] * world * (args.seq + 1) / len(anneal)}
    rec = device_record()
    config = {**vars(args), "world_size": world, "tokens_per_step": tokens_per_step, "model": cfg.to_dict()}
    record = {"name": args.name, "corpus": args.corpus, "config": config, "metrics": metrics, "baseline": None, "device": rec,
              "torch": rec["torch"], "transformers": rec["transformers"], "commit": rec["commit"], "date": rec["date"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.state_dir and not complete:  # an earlier call of the schedule: the record only
        atomic_write_json(out / "train_record.json", record)
        say(f"state saved at step {step} of {total_steps}; run again with --state-dir {args.state_dir}", flush=True)
        if ddp:
            torch.distributed.destroy_process_group()
        return 0
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    metrics["eval"] = {s: eval_bpb(model, tok, ids, args.seq, 32, device, cap) for s, ids in evals.items()}
    for s, r in metrics["eval"].items():
        say(f"{s}: ppl {r['ppl']:.2f}  bits/byte {r['bits_per_byte']:.4f}  ({r['tokens']} tokens)", flush=True)
    if metrics.get("anneal", {}).get("before"):  # the selected weights against the phase's start, in %
        before = metrics["anneal"]["before"]
        metrics["anneal"]["change_pct"] = {n: 100 * (metrics["eval"][n]["bits_per_byte"] / before[n] - 1) for n in before}
        say("anneal change %:", {n: round(v, 2) for n, v in metrics["anneal"]["change_pct"].items()}, flush=True)
    metrics["samples"] = samples(model, tok, device, max_new_tokens=60 if not args.smoke else 8, prompts=PROMPTS)
    for s in metrics["samples"]:
        say(json.dumps(s), flush=True)
    work = Path(tempfile.mkdtemp())
    model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(work / "model", safe_serialization=True)
    tok.save_pretrained(work / "model")
    if args.keep:
        model.save_pretrained(args.keep, safe_serialization=True)
        tok.save_pretrained(args.keep)
    atomic_write_json(work / "train_record.json", record)
    plot(curve, work / "loss.png")
    atomic_write_json(out / "train_record.json", record)
    if not args.no_pack:
        compress = "xz -T0 -6" if shutil.which("xz") else f"{sys.executable} -c {XZ_PY!r}"
        subprocess.run(f"tar cf - -C {work} model train_record.json loss.png | {compress} | split -b 15M - {out}/pack.tar.part-",
                       shell=True, check=True)
    say(f"done in {time.perf_counter() - t_start:.0f}s", flush=True)
    if ddp:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
