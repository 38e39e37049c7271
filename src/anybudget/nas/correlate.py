"""Score NAS-Bench-201 architectures with every proxy and correlate them with the real accuracies.

TE-NAS proxies are taken on the networks its search uses (NTK: ``C=3, N=1`` with stem, batch 72;
regions: the thin ``C=1, N=1, depth=1`` network on 3,000 single-channel 3x3 crops); the
zero-cost proxies (NASWOT, synflow, snip, grad_norm) and #params on the CIFAR-10 network
(``C=16, N=5``), as their papers do. One draw per architecture, seeded by its index.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from anybudget.measure import default_device
from anybudget.nas.benchmark import DATASETS, NB201Table, kendall_spearman
from anybudget.nas.network import NB201Network
from anybudget.nas.proxies import (
    _loss_grads,
    grad_norm,
    init_model,
    linear_regions,
    naswot,
    ntk_condition_number,
    snip,
    synflow,
)
from anybudget.nas.space import NUM_ARCHS, arch_from_index

__all__ = ["PROXIES", "ProxyConfig", "correlation_table", "sample_indices", "score_arch", "score_archs", "tenas_score"]

PROXIES = ("ntk_cond", "linear_regions", "naswot", "synflow", "snip", "grad_norm", "params")
# Sign with which each proxy predicts accuracy (kappa: lower is better).
SIGNS = {"ntk_cond": -1, "linear_regions": 1, "naswot": 1, "synflow": 1, "snip": 1, "grad_norm": 1, "params": 1, "tenas": 1}


@dataclass(frozen=True)
class ProxyConfig:
    ntk_batch: int = 72
    ntk_C: int = 3
    ntk_N: int = 1
    region_samples: int = 3000
    region_batch: int = 1000
    region_C: int = 1
    region_depth: int = 1
    zc_batch: int = 64  # NASWOT / snip / grad_norm batch on the C=16, N=5 network
    zc_C: int = 16
    zc_N: int = 5
    num_classes: int = 10
    init: str = "kaiming_normal"  # or "pytorch_default"
    ntk_method: str = "auto"  # jacrev on CUDA, per-sample loop on CPU (both exact)


def sample_indices(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct benchmark indices drawn by ``seed`` (all of them, shuffled, for n=15625)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= NUM_ARCHS:
        raise ValueError(f"n={n!r} must be an integer in [1, {NUM_ARCHS}]")
    return np.random.default_rng(seed).permutation(NUM_ARCHS)[:n]


def _init(model, kind, fan, seed):
    if kind == "kaiming_normal":
        return init_model(model, f"kaiming_normal_{fan}", seed=seed)
    return init_model(model, "pytorch_default", seed=seed)


def score_arch(
    index: int,
    cfg: ProxyConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    crops: torch.Tensor,
    *,
    seed: int = 0,
    proxies=PROXIES,
    device="cpu",
) -> dict[str, float]:
    """All requested proxies of one architecture. ``images (m, 3, 32, 32)``, ``labels (m,)``,
    ``crops (k, 1, 3, 3)``; batches are the first ``ntk_batch`` / ``zc_batch`` images."""
    arch = arch_from_index(int(index))
    base_seed = seed * NUM_ARCHS + int(index)
    out: dict[str, float] = {}
    if "ntk_cond" in proxies:
        net = _init(NB201Network(arch, C=cfg.ntk_C, N=cfg.ntk_N, num_classes=cfg.num_classes).to(device), cfg.init, "fanout", base_seed)
        out["ntk_cond"] = ntk_condition_number(net, images[: cfg.ntk_batch], method=cfg.ntk_method)
    if "linear_regions" in proxies:
        thin = NB201Network(arch, C=cfg.region_C, N=1, num_classes=cfg.num_classes, depth=cfg.region_depth,
                            use_stem=False, in_channels=cfg.region_C).to(device)
        _init(thin, cfg.init, "fanin", base_seed + 1)
        x = crops[: cfg.region_samples]
        x = x if cfg.region_C == 1 else x.expand(-1, cfg.region_C, -1, -1)
        out["linear_regions"] = float(linear_regions(thin, x, batch_size=cfg.region_batch))
    zc = [p for p in ("naswot", "synflow", "snip", "grad_norm", "params") if p in proxies]
    if zc:
        big = _init(NB201Network(arch, C=cfg.zc_C, N=cfg.zc_N, num_classes=cfg.num_classes).to(device), cfg.init, "fanin", base_seed + 2)
        xb, yb = images[: cfg.zc_batch], labels[: cfg.zc_batch]
        if "naswot" in zc:
            out["naswot"] = naswot(big, xb)
        if "synflow" in zc:
            out["synflow"] = synflow(big, tuple(images.shape[1:]))
        if "snip" in zc and "grad_norm" in zc:
            # one backward serves both (same loss, same weights)
            layers, grads = _loss_grads(big, xb, yb, True)
            out["snip"] = float(sum((m.weight.detach() * g).abs().sum() for m, g in zip(layers, grads)))
            out["grad_norm"] = float(sum(g.norm() for g in grads))
        elif "snip" in zc:
            out["snip"] = snip(big, xb, yb)
        elif "grad_norm" in zc:
            out["grad_norm"] = grad_norm(big, xb, yb)
        if "params" in zc:
            out["params"] = float(sum(p.numel() for p in big.parameters()))
    return out


def score_archs(
    indices,
    cfg: ProxyConfig = ProxyConfig(),
    *,
    seed: int = 0,
    proxies=PROXIES,
    device: str | None = None,
    time_limit_s: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    quiet: bool = False,
) -> dict:
    """Score architectures in the given order: ``{"index": [...], proxy: [...]}``.

    Stops early (keeping what is done) after ``time_limit_s``; with ``checkpoint`` (a JSON
    file) the scores are saved every 100 archs and a rerun continues from them. The checkpoint
    stores the configuration, seed and proxies; a rerun that asks for another one of these is
    refused (:class:`anybudget.io.CheckpointMismatch` naming the keys), never mixed into it. A
    rerun with other ``indices`` reuses the scores it has and returns only the asked indices.
    """
    from anybudget.io import atomic_write_json, check_checkpoint_config, read_json
    from anybudget.nas.data import crops_from, photo_batch

    unknown = [p for p in proxies if p not in PROXIES]
    if unknown:
        raise ValueError(f"unknown proxies {unknown}; known: {', '.join(PROXIES)}")
    dev = default_device(device)
    n_img = max(cfg.ntk_batch, cfg.zc_batch)
    images, labels = photo_batch(n_img, seed=seed)
    crops = crops_from(photo_batch(max(256, cfg.region_samples // 12), seed=seed + 7)[0], cfg.region_samples, rng=np.random.default_rng(seed))
    images, labels, crops = images.to(dev), labels.to(dev), crops.to(dev)
    proxies = tuple(proxies)
    res: dict = {"index": [], **{p: [] for p in proxies}}
    key = {"config": asdict(cfg), "seed": seed, "proxies": sorted(proxies)}  # the set counts, not its order
    if checkpoint is not None and os.path.exists(checkpoint):
        state = read_json(checkpoint)
        stored = {"config": state.get("config"), "seed": state.get("seed"),
                  # a checkpoint from before proxies were stored: its score columns say which
                  "proxies": sorted(state.get("proxies", [p for p in state.get("scores", {}) if p != "index"]))}
        check_checkpoint_config(checkpoint, stored, key, "--checkpoint",
                                "use another --checkpoint, or delete it to start over")
        res = state["scores"]
        if any(len(res[p]) != len(res["index"]) for p in proxies):
            raise ValueError(f"--checkpoint {os.fspath(checkpoint)!r} is damaged (score lists of unequal "
                             "length); delete it to start over")
    done = set(res["index"])
    todo = list(dict.fromkeys(int(i) for i in indices if int(i) not in done))
    t0 = time.perf_counter()
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="scoring archs", unit="arch")
    for k, i in enumerate(todo):
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            break
        s = score_arch(i, cfg, images, labels, crops, seed=seed, proxies=proxies, device=dev)
        res["index"].append(i)
        for p in proxies:
            v = s[p]
            res[p].append(v if np.isfinite(v) else None)
        if bar is not None:
            bar.update(1)
        if checkpoint is not None and (k + 1) % 100 == 0:
            atomic_write_json(checkpoint, {**key, "scores": res})
    if bar is not None:
        bar.close()
    if checkpoint is not None:
        atomic_write_json(checkpoint, {**key, "scores": res})
    want = {int(i) for i in indices}
    if set(res["index"]) <= want:
        return res
    keep = [j for j, i in enumerate(res["index"]) if i in want]  # the checkpoint may hold more
    return {p: [v[j] for j in keep] for p, v in res.items()}


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="min") - 1  # 0 = smallest, ties share


def tenas_score(ntk_cond, regions) -> np.ndarray:
    """TE-NAS's combined score for a set of architectures: ``-(rank(kappa) + rank(-R))``, so that
    higher is better (rank 0 = lowest kappa, resp. most regions; ties share the lower rank)."""
    k = np.asarray(ntk_cond, dtype=np.float64)
    r = np.asarray(regions, dtype=np.float64)
    k = np.where(np.isfinite(k), k, np.inf)
    return -(_ranks(k) + _ranks(-r)).astype(np.float64)


def correlation_table(scores: dict, table: NB201Table) -> dict:
    """``{proxy: {dataset: {"kendall": tau, "spearman": rho}}}`` over the scored archs, raw sign
    (so kappa is expected negative); ``tenas`` is the negated rank sum. ``None`` where fewer
    than 3 archs have a finite score."""
    idx = np.asarray(scores["index"], dtype=np.int64)
    cols = {p: np.array([np.nan if v is None else v for v in scores[p]], dtype=np.float64)
            for p in scores if p != "index"}
    if "ntk_cond" in cols and "linear_regions" in cols:
        cols["tenas"] = tenas_score(np.nan_to_num(cols["ntk_cond"], nan=np.inf), cols["linear_regions"])
    out = {}
    for p, v in cols.items():
        out[p] = {}
        for ds in DATASETS:
            try:
                tau, rho = kendall_spearman(v, table.acc[ds][idx])
            except ValueError:  # fewer than 3 finite scores: no correlation to report
                tau = rho = None
            out[p][ds] = {"kendall": tau, "spearman": rho}
    return out
