"""The units of work of run_imp.py, each a plain function of a dict (run in worker processes).

job_imp        IMP on one task and seed (rounds of fine-tune -> prune 10% -> rewind to theta_0)
job_mlm_imp    IMP with the masked-LM objective (the paper's "universal" ticket search)
job_control    one control subnetwork at an IMP round's sparsity, fine-tuned and evaluated
job_transfer   the MLM mask (or any saved mask) on a task, fine-tuned from theta_0
job_24         a 2:4 magnitude mask on theta_0, fine-tuned (the exportable structured ticket)
"""

from __future__ import annotations

import functools
import lzma
import time
from pathlib import Path

import numpy as np
import torch

from anybudget.prune.controls import control
from anybudget.prune.imp import IMPConfig, imp
from anybudget.prune.masks import apply_mask, load_mask, mask_sparsity, save_mask
from anybudget.prune.mlm import MLMStream, mlm_accuracy
from anybudget.prune.sparse24 import prune_24
from anybudget.prune.tasks import load_task
from anybudget.prune.train import FineTuneConfig, evaluate, finetune


def _device(j) -> torch.device:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    torch.set_num_threads(j.get("threads", 2))
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device(j["device"])
    if dev.type == "cuda" and dev.index is not None:  # run_imp.spread put this job on one of several GPUs
        torch.cuda.set_device(dev)
    return dev


@functools.lru_cache(maxsize=2)
def _pretrained(model_dir: str):
    from transformers import AutoConfig, BertForMaskedLM

    cfg = AutoConfig.from_pretrained(model_dir)
    m = BertForMaskedLM.from_pretrained(model_dir, dtype=torch.float32)
    return cfg, {k: v.clone() for k, v in m.state_dict().items()}


def task_factory(model_dir: str, kind: str, device, head_seed: int):
    """make_model(): a classifier/regressor with theta_0 body and a head initialised from head_seed."""
    from transformers import BertForSequenceClassification

    cfg, sd = _pretrained(model_dir)

    def make():
        torch.manual_seed(head_seed)
        d = {k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id")}
        c = cfg.__class__.from_dict({**d, "num_labels": 1 if kind == "regression" else 2})
        m = BertForSequenceClassification(c)
        m.bert.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("bert.")}, strict=False)
        return m.to(device)

    return make


def mlm_factory(model_dir: str, device):
    from transformers import BertForMaskedLM

    cfg, sd = _pretrained(model_dir)

    def make():
        m = BertForMaskedLM(cfg)
        m.load_state_dict(sd, strict=False)
        m.tie_weights()
        return m.to(device)

    return make


def _ft(j) -> FineTuneConfig:
    return FineTuneConfig(**j["finetune"])


def _task_fns(j, device):
    spec, splits, _ = load_task(Path(j["data"]) / "tasks" / f"{j['task']}.safetensors.xz")
    cfg = _ft(j)

    def train_fn(model, seed, mask=None, on_step=None):
        return finetune(model, splits["train"], spec.kind, cfg, seed, mask=mask, on_step=on_step)

    def eval_fn(model):
        out = {}
        for s in ("dev", "test"):
            out.update({f"{s}.{k}": v for k, v in evaluate(model, splits[s], spec.kind).items()})
        return out

    return spec, train_fn, eval_fn


def _stream(data: Path, name: str, model_dir: str, seq_len: int) -> MLMStream:
    vocab = {w: i for i, w in enumerate((Path(model_dir) / "vocab.txt").read_text().splitlines())}
    toks = np.frombuffer(lzma.decompress((data / f"{name}.u16.xz").read_bytes()), dtype=np.uint16)
    return MLMStream(toks, seq_len, vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"], len(vocab))


def run(fn: str, j: dict) -> dict:
    """Run job ``fn``; a failure is returned as a skipped job with its error, not raised, so one
    broken job (say, a transfer whose MLM mask is missing) does not lose the whole GPU call."""
    import traceback

    try:
        return globals()[fn](j)
    except Exception as e:  # noqa: BLE001
        return {**j, "skipped": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}


def _late(j) -> bool:
    return time.time() > j.get("deadline", float("inf"))


class _Deadline(Exception):
    pass


def _imp_until_deadline(j, make, train_fn, eval_fn) -> dict:
    """IMP whose rounds stop starting at the deadline; the rounds done are kept (imp.json)."""
    import json

    def guarded(model, **kw):
        if _late(j):
            raise _Deadline
        return train_fn(model, **kw)

    t = time.time()
    try:
        res = imp(make, guarded, eval_fn, IMPConfig(**j["imp"]), seed=j["seed"], out_dir=j["work"], progress=False)
        rounds, note = res.rounds, None
    except _Deadline:
        f = Path(j["work"]) / "imp.json"
        rounds = json.loads(f.read_text())["rounds"] if f.exists() else []
        note = f"deadline after {len(rounds)} rounds"
    return {**j, "rounds": rounds, "seconds": time.time() - t, "note": note}


def job_imp(j) -> dict:
    if _late(j):
        return {**j, "skipped": "deadline"}
    device = _device(j)
    spec, train_fn, eval_fn = _task_fns(j, device)
    make = task_factory(j["model"], spec.kind, device, head_seed=j["seed"])
    return _imp_until_deadline(j, make, train_fn, eval_fn)


def job_mlm_imp(j) -> dict:
    if _late(j):
        return {**j, "skipped": "deadline"}
    device = _device(j)
    data = Path(j["data"])
    train = _stream(data, "mlm_train", j["model"], j["seq_len"])
    val = _stream(data, "mlm_val", j["model"], j["seq_len"])
    cfg = _ft(j)

    def train_fn(model, seed, mask=None, on_step=None):
        return finetune(model, train, "mlm", cfg, seed, mask=mask, on_step=on_step)

    def eval_fn(model):
        return {f"dev.{k}": v for k, v in mlm_accuracy(model, val, n_windows=j["eval_windows"]).items()}

    return _imp_until_deadline(j, mlm_factory(j["model"], device), train_fn, eval_fn)


def job_control(j) -> dict:
    """j: task, seed, kind, round, imp_work (the IMP run's folder holding round_XX masks)."""
    if _late(j):
        return {**j, "skipped": "deadline"}
    device = _device(j)
    spec, train_fn, eval_fn = _task_fns(j, device)
    make = task_factory(j["model"], spec.kind, device, head_seed=j["seed"])
    mask = load_mask(Path(j["imp_work"]) / f"round_{j['round']:02d}.mask.safetensors")[0]
    model, m = control(j["kind"], make, mask, seed=1000 + j["seed"])
    train_fn(model, seed=j["seed"] * 1000 + 500 + j["round"], mask=m)
    return {**j, "sparsity": mask_sparsity(m), "metrics": eval_fn(model)}


def job_transfer(j) -> dict:
    """The mask at ``mask_path`` (found by MLM IMP) applied to the task model at theta_0."""
    if _late(j):
        return {**j, "skipped": "deadline"}
    device = _device(j)
    spec, train_fn, eval_fn = _task_fns(j, device)
    model = task_factory(j["model"], spec.kind, device, head_seed=j["seed"])()
    mask = load_mask(j["mask_path"])[0]
    apply_mask(model, mask, strict=False)
    train_fn(model, seed=j["seed"] * 1000 + 700, mask=mask)
    return {**j, "sparsity": mask_sparsity(mask), "metrics": eval_fn(model)}


def job_24(j) -> dict:
    """2:4 magnitude mask on theta_0, fine-tuned; saves the fp16 model for the speed test."""
    if _late(j):
        return {**j, "skipped": "deadline"}
    device = _device(j)
    spec, train_fn, eval_fn = _task_fns(j, device)
    model = task_factory(j["model"], spec.kind, device, head_seed=j["seed"])()
    mask = prune_24(model)
    apply_mask(model, mask)
    train_fn(model, seed=j["seed"] * 1000 + 900, mask=mask)
    out = {**j, "sparsity": mask_sparsity(mask), "metrics": eval_fn(model)}
    if j.get("save"):
        Path(j["save"]).mkdir(parents=True, exist_ok=True)
        model.half().save_pretrained(j["save"])
        save_mask(Path(j["save"]) / "mask.safetensors", mask, {"pattern": "2:4", "task": j["task"]})
    return out
