"""Training across several GPU calls, the end-of-schedule anneal phase, and the size of what comes back.

Used by train_lm_v2.py (``--state-dir``, ``--total-minutes``, ``--anneal-*``):

* State: ``DIR/ckpt/`` holds ``model.safetensors`` (float32 weights), ``optim.safetensors`` (AdamW's
  per-parameter tensors, its ``step`` counters included), ``best.safetensors`` (the weights kept for
  selection, if any), ``rng_rank{r}.json`` (each rank's numpy generator) and ``meta.json`` (settings
  fingerprint, schedule, step, curves, selection). A checkpoint is written into ``DIR/ckpt.new`` and
  swapped in by renames, so a call killed mid-write leaves the previous checkpoint whole.
* Schedule: fixed once, in the first call, from the measured throughput and ``--total-minutes``,
  and kept in ``meta.json``; later calls resume at the saved step of the same schedule.
* Anneal (Llama 3 report, Sec. 3.1.3: up-weight the target-domain data while the learning rate
  decays to 0): the last ``frac`` of the steps; there the learning rate falls linearly from the
  cosine's value at the phase start to 0 at the last step, and ``indomain_rows`` in-domain windows
  are drawn per step (stratified: the running count stays within one row of ``p * rows``).
* Size: the weights come back as bf16 safetensors + tokenizer, tar | xz, 15 MiB parts, within the
  64 MiB that may come back from one call (``pack_estimate``, ``check_pack_fits``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from anybudget.io import atomic_write_json

# xz of the shipped v3 weights (bf16 safetensors): 38,487,596 bytes for 54,551,504 (.carry/reflm_v3xz);
# xz -6 (what the pack uses) gives 38,570,628 (+0.2%), the tokenizer.json 142,788 for 1,121,740
XZ_RATIO = 38_487_596 / 54_551_504
XZ_MARGIN = 0.03  # a longer-trained model may compress a little worse
RETURN_BYTES = 64 * 2**20  # files back from one call
RESERVE_BYTES = 2**20  # train_record.json and the log next to the pack
PART_BYTES = 15 * 2**20
MAX_FILES = 8
# settings that define a run: a state made with other values is refused
SELECT = "v1_validation"  # the anneal phase's selection set; v1_test never selects
FINGERPRINT_KEYS = ("layers", "hidden", "ffn", "seq", "batch", "lr", "min_lr_frac", "warmup", "weight_decay",
                    "seed", "max_epochs", "total_minutes", "eval_every", "val_windows", "teacher", "kd_alpha",
                    "kd_temp", "anneal_frac", "anneal_indomain_frac", "smoke", "world_size", "train_tokens",
                    "anneal_tokens", "vocab")


def llama_params(vocab: int, layers: int, hidden: int, ffn: int, head_dim: int = 64) -> int:
    """Parameters of train_lm_v2's Llama: tied embedding, GQA with half as many KV heads, SwiGLU, RMSNorms."""
    kv = (hidden // head_dim // 2) * head_dim
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn + 2 * hidden
    return vocab * hidden + layers * per_layer + hidden


def pack_estimate(n_params: int, extra_bytes: int = 0) -> int:
    """Bytes of the xz'd pack: bf16 weights at the measured xz ratio (+ margin) + ``extra_bytes``."""
    return int(n_params * 2 * XZ_RATIO * (1 + XZ_MARGIN)) + extra_bytes


def max_pack_params(extra_bytes: int = 0) -> int:
    """The most parameters whose pack still fits the return (RETURN_BYTES - RESERVE_BYTES, <= MAX_FILES - 1 parts)."""
    limit = min(RETURN_BYTES - RESERVE_BYTES, (MAX_FILES - 1) * PART_BYTES)
    return int((limit - extra_bytes) / (2 * XZ_RATIO * (1 + XZ_MARGIN)))


def tokenizer_pack_bytes(tok_dir) -> int:
    """The tokenizer files (xz shrinks the JSON vocabulary ~3x: counted at 1/2) + 0.5 MB for config, record, plot."""
    files = [p for p in Path(tok_dir).glob("tokenizer*") if p.is_file()]
    return sum(p.stat().st_size for p in files) // 2 + 500_000


def check_pack_fits(vocab: int, layers: int, hidden: int, ffn: int, extra_bytes: int) -> dict:
    """Refuse, before training, a model whose pack cannot come back; return the estimate otherwise."""
    n = llama_params(vocab, layers, hidden, ffn)
    est, n_max = pack_estimate(n, extra_bytes), max_pack_params(extra_bytes)
    if n > n_max:
        fit_ffn = max(0, (n_max - llama_params(vocab, layers, hidden, 0)) // (3 * hidden * layers) // 64 * 64)
        raise ValueError(
            f"--layers {layers} --hidden {hidden} --ffn {ffn}: {n / 1e6:.1f}M parameters pack to ~{est / 1e6:.1f} MB "
            f"(bf16 x xz ratio {XZ_RATIO:.3f} + {XZ_MARGIN:.0%}), more than the {(RETURN_BYTES - RESERVE_BYTES) / 1e6:.1f} MB "
            f"that can come back from one call; at most {n_max / 1e6:.1f}M parameters fit"
            + (f" (e.g. --ffn {fit_ffn} with this --layers/--hidden)" if fit_ffn else ""))
    return {"params": n, "pack_bytes_est": est, "max_params": n_max, "limit_bytes": RETURN_BYTES - RESERVE_BYTES}


def fit_schedule(step: int, rate: float, before_s: float, now_s: float, sched_s: float, budget_s: float,
                 warm_s: float, eval_every: int, max_steps: int, anneal_frac: float = 0.0, phase_eval_s: float = 0.0,
                 fixed_eval_s: float = 0.0) -> tuple[int, int]:
    """(total steps, calls) that fill ``sched_s`` training seconds at ``rate`` steps/s, measured at ``step``.

    ``before_s``/``now_s``: seconds trained in earlier calls / so far in this one; every later call loses
    ``warm_s`` (start, compile, state); a validation costs ~1.5 s; the anneal phase's evaluations
    ``phase_eval_s`` each (one per ``eval_every`` steps in the phase) plus ``fixed_eval_s`` (its start and end).
    """
    n_calls = math.ceil((sched_s - before_s) / budget_s - 1e-9)  # this call and the later ones
    remaining = sched_s - before_s - now_s - (n_calls - 1) * warm_s - fixed_eval_s
    remaining -= remaining * rate * anneal_frac / eval_every * phase_eval_s
    n_evals = remaining * rate / eval_every
    return min(max_steps, step + int(remaining * rate - n_evals * 1.5 * rate)), n_calls


def anneal_start(total_steps: int, frac: float) -> int | None:
    """First step of the anneal phase (the last ``frac`` of ``total_steps``), None without one."""
    if frac <= 0:
        return None
    return total_steps - max(1, round(frac * total_steps))


def learning_rate(step: int, total: int, warmup: int, peak: float, min_frac: float, start: int | None = None) -> float:
    """Linear warm-up, cosine to ``min_frac * peak`` at ``total``; from ``start`` on: linear to 0 at ``total``."""

    def cosine(s: int) -> float:
        if s < warmup:
            return peak * (s + 1) / warmup
        prog = min(1.0, (s - warmup) / max(1, total - warmup))
        return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * prog)))

    if start is None or step < start:
        return cosine(step)
    return cosine(start) * max(0.0, (total - step) / (total - start))


def indomain_rows(k: int, rows: int, p: float) -> int:
    """In-domain rows of anneal step ``k`` (0-based): floor((k + 1) r p) - floor(k r p)."""
    return math.floor((k + 1) * rows * p + 1e-9) - math.floor(k * rows * p + 1e-9)


def fingerprint(args, **extra) -> dict:
    d = {**vars(args), **extra}
    return {k: d.get(k) for k in FINGERPRINT_KEYS}


def check_fingerprint(saved: dict, now: dict, state_dir) -> None:
    diff = {k: (saved.get(k), now.get(k)) for k in FINGERPRINT_KEYS if saved.get(k) != now.get(k)}
    if diff:
        parts = ", ".join(f"{k}: {a!r} in the state, {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(f"--state-dir {state_dir} was made with other settings ({parts}); "
                         "use the same settings or a new folder")


def _optim_tensors(opt) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, st in sd["state"].items() for k, v in st.items()
               if torch.is_tensor(v)}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups}


def write_rng(tmp: Path, rank: int, rng: np.random.Generator) -> None:
    atomic_write_json(tmp / f"rng_rank{rank}.json", {"numpy": rng.bit_generator.state,
                                                     "torch": torch.get_rng_state().tolist()})


def save(state_dir, model, opt, meta: dict, best: dict | None) -> None:
    """Rank 0: weights, optimizer, best weights and meta into ckpt.new (rng files already there), then swap."""
    from safetensors.torch import save_file

    d = Path(state_dir)
    tmp, cur, old = d / "ckpt.new", d / "ckpt", d / "ckpt.old"
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    tensors, groups = _optim_tensors(opt)
    save_file(tensors, tmp / "optim.safetensors")
    if best is not None and best.get("state") is not None:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in best["state"].items()}, tmp / "best.safetensors")
    atomic_write_json(tmp / "optim_groups.json", groups)
    atomic_write_json(tmp / "meta.json", meta)  # written last: a ckpt.new without it is incomplete
    if old.exists():
        shutil.rmtree(old)
    if cur.exists():
        os.replace(cur, old)
    os.replace(tmp, cur)
    shutil.rmtree(old, ignore_errors=True)


def prepare_dir(state_dir) -> Path:
    """A fresh, empty ckpt.new (rank 0, before the ranks write their rng files)."""
    tmp = Path(state_dir) / "ckpt.new"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def read_meta(state_dir) -> dict | None:
    p = Path(state_dir) / "ckpt" / "meta.json"
    return json.loads(p.read_text()) if p.is_file() else None


def load(state_dir, model, opt, rank: int, rng: np.random.Generator, device) -> dict | None:
    """Restore model, optimizer, this rank's generators; return {'state': best weights} or None."""
    from safetensors.torch import load_file

    d = Path(state_dir) / "ckpt"
    model.load_state_dict(load_file(d / "model.safetensors", device=str(device)))
    tensors = load_file(d / "optim.safetensors")
    groups = json.loads((d / "optim_groups.json").read_text())["param_groups"]
    state: dict = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    for g in groups:
        g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
    r = json.loads((d / f"rng_rank{rank}.json").read_text())
    rng.bit_generator.state = r["numpy"]
    torch.set_rng_state(torch.tensor(r["torch"], dtype=torch.uint8))
    best = d / "best.safetensors"
    return {"state": load_file(best, device=str(device))} if best.is_file() else None


def clone(model) -> dict:
    return {k: t.detach().clone() for k, t in model.state_dict().items()}


def phase_eval(model, tok, evals, seq, device, cap, step, a_start, total, phase, best, say) -> None:
    """An anneal-phase evaluation: all sets at the phase's start and end, else the selection set and v1_test;
    the lowest v1_validation bits per byte (the phase's start included) keeps its weights in ``best``."""
    names = list(evals) if step in (a_start, total) else [SELECT, "v1_test"]
    from lm_eval import evaluate as eval_bpb

    ev = {n: eval_bpb(model, tok, evals[n], seq, 32, device, cap)["bits_per_byte"] for n in names}
    phase["curve"].append({"step": step, "bits_per_byte": ev})
    phase["start"] = a_start
    if step == a_start:
        phase["before"] = ev
    if step == total:
        phase["end"] = ev
    if step == a_start or ev[SELECT] < best["value"] or best["by"] != SELECT:
        best.update(by=SELECT, value=ev[SELECT], step=step, state=clone(model))
    say(f"anneal step {step - a_start}: " + " ".join(f"{n} {v:.4f}" for n, v in ev.items()), flush=True)


def save_all(state_dir, ddp, main_rank, rank, model, opt, rng, best, meta) -> None:
    """Every rank writes its generators into ckpt.new, rank 0 the rest, then swaps it in (the others wait)."""
    if main_rank:
        prepare_dir(state_dir)
    if ddp:
        torch.distributed.barrier()
    write_rng(Path(state_dir) / "ckpt.new", rank, rng)
    if ddp:
        torch.distributed.barrier()
    if main_rank:
        save(state_dir, model, opt, meta, best)
