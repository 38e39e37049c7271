"""The whole Flextron recipe on a model folder, phase by phase, each phase resumable from ``out``.

``out/`` holds: ``model/`` (the permuted, elastically trained model, a plain HF folder),
``elastic.json`` (phases done, and the whole configuration: a rerun with another one is refused), ``importance.safetensors``, ``ckpt/`` (training
checkpoint), ``latency_table.json``, ``router.safetensors``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from anybudget.elastic.api import make_elastic
from anybudget.elastic.data import TokenBatches, eval_windows, read_tokens
from anybudget.elastic.latency import CostTable, Workload, measure_latency_table
from anybudget.elastic.model import ElasticLlama, ElasticSpace
from anybudget.elastic.router import RouterTrainConfig, StaticRouter, train_static_router
from anybudget.elastic.train import ElasticTrainConfig, _world, train_elastic
from anybudget.io import atomic_write_json, atomic_write_text
from anybudget.measure import default_device

__all__ = ["ElasticBuildConfig", "build_elastic", "load_elastic", "tokens_from_file"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "generation_config.json")


@dataclass(frozen=True)
class ElasticBuildConfig:
    """Data settings of ``build_elastic`` (the model's own settings are in the other configs).

    Args:
        batch: sequences per training step (8).
        seq: tokens per sequence (256).
        calib_batches: calibration batches for the importance ranking (8).
        heldout_fraction: share of the tokens held out for the router's windows (0.05).
    """

    batch: int = 8
    seq: int = 256
    calib_batches: int = 8
    heldout_fraction: float = 0.05

    def __post_init__(self):
        for f in ("batch", "seq", "calib_batches"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{f}={v!r} must be an integer >= 1")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction={self.heldout_fraction!r} must be in (0, 1)")


def _token_digest(tokens: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:16]


def tokens_from_file(path: str | os.PathLike, model_dir: str | os.PathLike) -> np.ndarray:
    """Token ids of a text file (tokenised with the model folder's tokenizer) or of a .u16(.xz) file."""
    path = Path(path)
    if path.name.endswith((".u16.xz", ".u16", ".npy")):
        return read_tokens(path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return np.asarray(tok(path.read_text(encoding="utf-8"))["input_ids"], dtype=np.int64)


def load_elastic(out: str | os.PathLike, device: str | None = None) -> tuple[ElasticLlama, CostTable | None, StaticRouter | None]:
    """The elastic model, latency table and router that ``build_elastic`` wrote to ``out``."""
    from transformers import AutoModelForCausalLM

    out = Path(out)
    meta = json.loads((out / "elastic.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32)
    dev = torch.device(default_device(device))
    em = ElasticLlama(model.to(dev).eval(), ElasticSpace(**{k: tuple(v) for k, v in meta["space"].items()}))
    table = CostTable.from_json((out / "latency_table.json").read_text()) if (out / "latency_table.json").is_file() else None
    router = StaticRouter.load(out / "router.safetensors") if (out / "router.safetensors").is_file() else None
    # route(em, budget) falls back on these when no router / table is passed
    em.latency_table = table
    if router is not None:
        em.router = router
    return em, table, router


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def build_elastic(
    model_dir: str | os.PathLike,
    tokens: np.ndarray,
    out: str | os.PathLike,
    train: ElasticTrainConfig | None = None,
    router: RouterTrainConfig | None = None,
    workload: Workload | None = None,
    space: ElasticSpace | None = None,
    build: ElasticBuildConfig | None = None,
    device: str | None = None,
    quiet: bool = False,
) -> dict:
    """Importance + permutation, elastic training, latency table, static router; skips finished phases.

    ``out/elastic.json`` records the whole configuration (source model, every config, the tokens'
    count and digest); a rerun into the same ``out`` with another one raises
    :class:`anybudget.io.CheckpointMismatch` naming the keys, before any work.
    """
    from transformers import AutoModelForCausalLM

    from anybudget.io import check_checkpoint_config

    build = build or ElasticBuildConfig()
    batch, seq = build.batch, build.seq
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(default_device(device))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dev = torch.device("cuda", torch.cuda.current_device())
    rank, world = _world()  # under torchrun: rank 0 writes every file, the others wait and read
    space = space or ElasticSpace()
    train = train or ElasticTrainConfig()
    config = {"source": os.fspath(model_dir), "space": asdict(space), "train": {k: v for k, v in asdict(train).items() if k != "checkpoint_every"},
              "router": asdict(router or RouterTrainConfig()), "workload": asdict(workload) if workload else "auto",
              "build": asdict(build), "tokens": {"count": len(tokens), "sha256_16": _token_digest(tokens)}}
    n_held = max(seq + 2, int(len(tokens) * build.heldout_fraction))
    held, train_tokens = tokens[:n_held], tokens[n_held:]
    meta_path = out / "elastic.json"
    data = TokenBatches(train_tokens, batch, seq, seed=0)
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"phases": []}
    check_checkpoint_config(out, meta.get("config"), config, "--out",
                            "use another --out, or delete it to start over")
    if "permute" not in meta["phases"] and rank == 0:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(dev).eval()
        from safetensors.torch import save_file

        calib = [data(10**9 + i)[:, :-1] for i in range(build.calib_batches)]
        em = make_elastic(model, calib, space, quiet=quiet)
        save_file(em.importance.state_dict(), str(out / "importance.safetensors"))
        model.save_pretrained(str(out / "model"))
        for name in TOKENIZER_FILES:  # so that out/model and exported models are complete folders
            if (Path(model_dir) / name).is_file():
                shutil.copyfile(Path(model_dir) / name, out / "model" / name)
        meta = {"phases": ["permute"], "space": asdict(space), "source": str(model_dir), "config": config}
        atomic_write_json(meta_path, meta)
    _barrier(world)
    meta = json.loads(meta_path.read_text())
    space = ElasticSpace(**{k: tuple(v) for k, v in meta["space"].items()})
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32).to(dev).eval()
    em = ElasticLlama(model, space)
    if "train" not in meta["phases"]:
        result = train_elastic(em, data, train, checkpoint=out / "ckpt", quiet=quiet)
        if rank == 0:
            model.save_pretrained(str(out / "model"))
            meta["phases"].append("train")
            meta["train"] = {k: result[k] for k in ("steps", "tokens", "seconds", "world_size")}
            atomic_write_json(meta_path, meta)
        _barrier(world)
        if rank == 0:
            shutil.rmtree(out / "ckpt", ignore_errors=True)  # finished: the resume checkpoint is not needed
    if rank != 0:
        return meta
    windows = eval_windows(held, seq, batch)
    if "latency" not in meta["phases"]:
        wl = workload or Workload(dtype="bfloat16" if dev.type == "cuda" else "float32")
        timed = ElasticLlama(copy.deepcopy(model).to(wl.torch_dtype), space)  # keep the fp32 weights exact
        table = measure_latency_table(timed, wl, quiet=quiet)
        del timed
        atomic_write_text(out / "latency_table.json", table.to_json())
        meta["phases"].append("latency")
        atomic_write_json(meta_path, meta)
    table = CostTable.from_json((out / "latency_table.json").read_text())
    if "router" not in meta["phases"]:
        r, stats = train_static_router(em, table, windows[:4], router or RouterTrainConfig(), quiet=quiet)
        r.save(out / "router.safetensors")
        meta["phases"].append("router")
        meta["router"] = {k: stats[k] for k in ("router_steps", "measured")}
        atomic_write_json(meta_path, meta)
    return meta
