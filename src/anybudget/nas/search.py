"""TE-NAS: prune a NAS-Bench-201 super-network op by op, by the sum of two ranks (Alg. 1).

Start from the super-network with every op but ``none`` on every edge. Each round, for every op
still on an edge that has more than one: remove it, and measure over ``repeat`` draws the
relative change of the NTK condition number ``(k(N) - k(N\\op)) / k(N)`` and of the linear
regions ``(R(N) - R(N\\op)) / R(N)`` (each rounded to ``precision`` decimals, then averaged).
Rank ops by the first descending (removing it lowers kappa most -> rank 0) and by the second
ascending (removing it loses fewest regions -> rank 0), ties sharing a rank; prune, per edge,
the ``prune_number`` ops with the smallest rank sum. Stop when every edge has one op.

Budget rule (ours; the paper has none): costs are additive over edges (``cost.edge_costs``), so
before a round and after each edge's prune, every op that belongs to no architecture within the
budget (its cost + the cheapest op of every other edge > limit) is removed first. The remaining
super-network then always contains a feasible architecture, and so does the final single path.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from anybudget.measure import default_device
from anybudget.nas.network import NB201Network, mask_to_arch
from anybudget.nas.proxies import init_model, linear_regions, ntk_condition_number
from anybudget.nas.space import EDGES, NUM_EDGES, OPS, arch_index, format_arch

__all__ = ["SearchResult", "TENASConfig", "budget_limit", "enforce_budget", "rank_ops", "score_candidates", "tenas_search"]

INITS = ("kaiming_normal", "reference")


@dataclass(frozen=True)
class TENASConfig:
    """TE-NAS on NAS-Bench-201 with the reference launcher's settings (``prune_launch.py``).

    ``init="kaiming_normal"`` (paper): Kaiming-normal weights, fan-out for the NTK network and
    fan-in for the region network, re-drawn for every repeat. ``init="reference"``: what the
    released code runs (PyTorch default init, drawn once per round for the NTK network and once
    per candidate for the region network, so repeats differ only in their input batch).
    """

    batch_size: int = 72  # NTK batch
    repeat: int = 3
    precision: int = 3  # decimals kept of each relative change
    prune_number: int = 1  # ops pruned per edge per round
    C: int = 3  # NTK super-network: C=3, N=1, with stem
    N: int = 1
    thin_C: int = 1  # region super-network: C=1, N=1, depth=1, no stem
    thin_depth: int = 1
    region_samples: int = 3000  # 3 batches of 1000 single-channel 3x3 crops
    region_batch: int = 1000
    region_crop: int = 3
    num_classes: int = 10
    init: str = "kaiming_normal"
    train_mode: bool = True  # BN uses batch statistics for both proxies
    image_pool: int = 2048  # photographs crops drawn once per search; batches are sampled from it
    ntk_method: str = "auto"  # jacrev on CUDA, per-sample loop on CPU (both exact)

    def __post_init__(self):
        for name in ("batch_size", "repeat", "prune_number", "C", "N", "thin_C", "thin_depth",
                     "region_samples", "region_batch", "region_crop", "num_classes", "image_pool"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1")
        if self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size} must be >= 2 (a kernel needs two samples)")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} is not known; choose one of {', '.join(INITS)}")
        if self.image_pool < self.batch_size:
            raise ValueError(f"image_pool={self.image_pool} must be >= batch_size={self.batch_size}")
        if self.ntk_method not in ("auto", "jacrev", "loop"):
            raise ValueError(f"ntk_method={self.ntk_method!r} must be 'auto', 'jacrev' or 'loop'")
        if not 0 <= self.precision <= 12:
            raise ValueError(f"precision={self.precision} must be in [0, 12]")


@dataclass
class SearchResult:
    arch: tuple[str, ...]
    arch_string: str
    index: int
    seconds: float
    rounds: list[dict] = field(default_factory=list)
    cost: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _round_to(number: float, precision: int, eps: float = 1e-8) -> float:
    """Round to ``precision`` significant digits (the reference's sort key)."""
    if number == 0 or not math.isfinite(number):
        return number
    sign = 1.0 if number > 0 else -1.0
    number = abs(number) + eps
    power = math.floor(math.log10(number)) + 1
    return sign * round(number * 10 ** (-power), precision) * 10**power


def _dense_ranks(items: list[tuple[float, tuple]], descending: bool, precision: int) -> tuple[list, dict]:
    # Reference rule: sort (stable) by the value rounded to `precision` significant digits; walk
    # the sorted list and give an item its predecessor's rank when the raw values are equal,
    # else the predecessor's rank + 1.
    order = sorted(items, key=lambda t: _round_to(t[0], precision), reverse=descending)
    ranks: dict = {}
    for i, (v, key) in enumerate(order):
        if i == 0:
            ranks[key] = 0
        else:
            prev_v, prev_key = order[i - 1]
            ranks[key] = ranks[prev_key] if v == prev_v else ranks[prev_key] + 1
    return order, ranks


def rank_ops(
    ntk_changes: dict[tuple[int, int], float],
    region_changes: dict[tuple[int, int], float],
    prune_number: int = 1,
    precision: int = 3,
) -> tuple[dict[int, list[tuple[int, int]]], dict]:
    """Pick the ops to prune from their scores: ``{(edge,): [(edge, op), ...]}`` and the ranks.

    Keys are ``(edge, op)`` (or ``(cell_type, edge, op)``: everything but the last item names
    the edge). ``ntk_changes[(edge, op)]`` = mean relative drop of kappa when the op is removed (higher ->
    prune first); ``region_changes`` = mean relative loss of regions (lower -> prune first).
    Ties share a rank; equal rank sums keep the order of the NTK ranking (the reference's stable
    sorts), so the NTK breaks ties.
    """
    if set(ntk_changes) != set(region_changes):
        raise ValueError("ntk_changes and region_changes must score the same (edge, op) candidates")
    # Candidates enter in (edge, op) order, as the reference's loops do.
    keys = sorted(ntk_changes)
    ntk_order, ntk_rank = _dense_ranks([(ntk_changes[k], k) for k in keys], True, precision)
    _, reg_rank = _dense_ranks([(region_changes[k], k) for k in keys], False, precision)
    in_order = [k for _, k in ntk_order]
    by_sum = sorted(in_order, key=lambda k: ntk_rank[k] + reg_rank[k])
    choice: dict = {}
    for k in by_sum:
        lst = choice.setdefault(k[:-1], [])
        if len(lst) < prune_number:
            lst.append(k)
    ranks = {k: (ntk_rank[k], reg_rank[k]) for k in keys}
    return choice, ranks


# ---------------------------------------------------------------- budget


def budget_limit(budget, *, C: int = 16, N: int = 5, num_classes: int = 10, resolution: int = 32,
                 device: str | None = None):
    """``(key, limit, base, per_op)`` for a ``flops``, ``params`` or ``latency`` budget.

    Latency uses an additive model measured on this device: base = the all-``none`` network,
    per-op term = (all edges ``op`` - all ``none``) / 6 (batch 1, eval mode).
    """
    from anybudget.budget import Budget, BudgetError
    from anybudget.nas.cost import edge_costs, measure_latency

    b = budget if isinstance(budget, Budget) else Budget(budget)
    keys = [k for k in ("flops", "params", "latency") if k in b]
    other = [k for k in b if k not in ("flops", "params", "latency")]
    if other or len(keys) != 1:
        raise BudgetError(
            f"a NAS budget takes exactly one of flops, params or latency (e.g. 'flops=100M'); got {str(b) or 'nothing'}"
        )
    key = keys[0]
    q = b[key]
    if key in ("flops", "params"):
        base, per = edge_costs(C, N, num_classes, resolution)
        return key, float(q.value), float(getattr(base, key)), {o: float(getattr(c, key)) for o, c in per.items()}
    kw = {"C": C, "N": N, "num_classes": num_classes, "resolution": resolution, "device": device,
          "warmup": 2, "repeat": 10}
    none = measure_latency(("none",) * NUM_EDGES, **kw)
    per = {o: (measure_latency((o,) * NUM_EDGES, **kw) - none) / NUM_EDGES for o in OPS}
    per = {o: max(0.0, v) for o, v in per.items()}
    return key, float(q.value), none, per


def _fmt(key: str, value: float, as_budget: bool = False) -> str:
    if as_budget:
        from anybudget.budget import Budget

        raw = f"{value!r}s" if key == "latency" else (int(value) if float(value).is_integer() else value)
        try:
            return str(Budget({key: raw}))
        except ValueError:
            return f"{key}={_fmt(key, value)}"
    if key == "latency":
        return f"{value * 1e3:.3g} ms"
    return f"{value / 1e6:.3g}M {key}"


def enforce_budget(mask: torch.Tensor, limit: float, base: float, per_op: dict[str, float], key: str = "flops") -> torch.Tensor:
    """Remove every op that is in no architecture within ``limit``; raise if none is left."""
    from anybudget.budget import BudgetError

    mask = mask.clone()
    cost = torch.tensor([per_op[o] for o in OPS], dtype=torch.float64)
    while True:
        masked = torch.where(mask, cost.expand_as(mask), torch.full_like(mask, math.inf, dtype=torch.float64))
        mins = masked.min(1).values
        smallest = base + float(mins.sum())
        if smallest > limit:
            raise BudgetError(
                f"{_fmt(key, limit, True)} is below every architecture left in the search space; "
                f"the smallest costs {_fmt(key, smallest)}. Raise the budget."
            )
        others = mins.sum() - mins  # cheapest completion of the other edges
        feasible = mask & (base + cost[None, :] + others[:, None] <= limit * (1 + 1e-12))
        if bool((feasible == mask).all()):
            return mask
        mask = feasible


# ---------------------------------------------------------------- search


def _removed(mask: torch.Tensor, key: tuple) -> torch.Tensor:
    out = mask.clone()
    out[key] = False
    return out


def score_candidates(mask, cands, build_ntk, build_thin, images, cfg, rng, dev, progress=None, *, thin_channels=1):
    """Mean relative changes ``(ntk_changes, region_changes)`` when each candidate op is removed.

    ``mask``: bool tensor whose last axis is ops; ``cands``: index tuples into it. ``build_ntk``
    / ``build_thin``: mask -> freshly built network (NTK network, region network). Each repeat
    draws a new NTK batch from ``images`` and new region crops; the origin and the pruned
    network share weights (the pruned one loads the origin's, minus the removed op).
    """
    from anybudget.nas.data import crops_from

    shared_origin = build_ntk(mask) if cfg.init == "reference" else None  # default init, once a round
    ntk_changes, region_changes = {}, {}
    for key in cands:
        pruned = _removed(mask, key)
        dk, dr = [], []
        thin_seed = int(rng.integers(2**31))
        for _ in range(cfg.repeat):
            if shared_origin is not None:
                origin = shared_origin
            else:
                origin = init_model(build_ntk(mask), "kaiming_normal_fanout", seed=int(rng.integers(2**31)))
            other = build_ntk(pruned)
            other.load_state_dict(origin.state_dict(), strict=False)
            pick = torch.from_numpy(rng.choice(images.shape[0], cfg.batch_size, replace=False)).to(images.device)
            batch = images[pick]
            k0 = ntk_condition_number(origin, batch, train_mode=cfg.train_mode, method=cfg.ntk_method)
            k1 = ntk_condition_number(other, batch, train_mode=cfg.train_mode, method=cfg.ntk_method)
            # A singular kernel (kappa = inf) gives no usable ratio; count it as no change
            # (the reference would propagate inf/nan into its sort).
            ok = math.isfinite(k0) and math.isfinite(k1)
            dk.append(round((k0 - k1) / k0, cfg.precision) if ok else 0.0)
            crops = crops_from(images, cfg.region_samples, crop=cfg.region_crop, rng=rng)
            if thin_channels > 1:
                crops = crops.expand(-1, thin_channels, -1, -1)
            # reference: one default-initialised thin origin per candidate, shared by its repeats
            rseed = thin_seed if cfg.init == "reference" else int(rng.integers(2**31))
            torch.manual_seed(rseed)
            thin0 = build_thin(mask)
            if cfg.init == "kaiming_normal":
                init_model(thin0, "kaiming_normal_fanin", seed=rseed)
            thin1 = build_thin(pruned)
            thin1.load_state_dict(thin0.state_dict(), strict=False)
            r0 = linear_regions(thin0, crops, batch_size=cfg.region_batch, train_mode=cfg.train_mode)
            r1 = linear_regions(thin1, crops, batch_size=cfg.region_batch, train_mode=cfg.train_mode)
            dr.append(round((r0 - r1) / r0, cfg.precision))
        ntk_changes[key] = float(np.mean(dk))
        region_changes[key] = float(np.mean(dr))
        if progress is not None:
            progress.update(1)
    return ntk_changes, region_changes


def tenas_search(
    config: TENASConfig = TENASConfig(),
    *,
    seed: int = 0,
    budget=None,
    device: str | None = None,
    quiet: bool = False,
    checkpoint: str | os.PathLike | None = None,
    images: torch.Tensor | None = None,
) -> SearchResult:
    """Run TE-NAS on NAS-Bench-201 and return the single-path architecture it keeps.

    ``budget``: ``Budget`` or string with one of ``flops`` / ``params`` / ``latency`` for the
    CIFAR-10 network (``C=16, N=5``); see the module docstring for the rule. ``images``: proxy
    inputs ``(m, 3, 32, 32)``; default: ``config.image_pool`` photograph crops (``data.DATA_NOTE``).
    ``checkpoint``: a JSON file written after every round; a run finds it and resumes (rounds
    are seeded by ``(seed, round)``, so a resumed run matches an uninterrupted one).
    """
    from anybudget.io import check_checkpoint_config
    from anybudget.nas.data import photo_batch

    dev = default_device(device)
    t_start = time.perf_counter()
    mask = torch.ones(NUM_EDGES, len(OPS), dtype=torch.bool)
    mask[:, OPS.index("none")] = False  # the reference masks `none` out from the start
    limit_info = None
    if budget is not None:
        key, limit, base, per_op = budget_limit(budget, num_classes=10, device=dev)
        limit_info = (key, limit, base, per_op)
        mask = enforce_budget(mask, limit, base, per_op, key)
    rounds: list[dict] = []
    elapsed_before = 0.0
    if checkpoint is not None and os.path.exists(checkpoint):
        with open(checkpoint) as f:
            state = json.load(f)
        check_checkpoint_config(
            checkpoint, {k: state.get(k) for k in ("seed", "config", "budget")},
            {"seed": seed, "config": asdict(config), "budget": str(budget) if budget else None}, "checkpoint",
            "it belongs to another run; use another checkpoint, or delete it to start over")
        mask = torch.tensor(state["mask"], dtype=torch.bool)
        rounds = state["rounds"]
        elapsed_before = state["seconds"]
    if images is None:
        images, _ = photo_batch(config.image_pool, seed=seed)
    images = images.to(dev)
    progress = None
    if not quiet:
        from tqdm.auto import tqdm

        progress = tqdm(desc=f"TE-NAS seed {seed}", unit="op")

    while not bool((mask.sum(1) == 1).all()):
        rnd = len(rounds)
        rng = np.random.default_rng([seed, rnd])
        torch_seed = int(rng.integers(2**31))
        torch.manual_seed(torch_seed)
        prune_number = min(config.prune_number, int(mask[0].sum()) - 1) or 1
        cands = [(e, o) for e in range(NUM_EDGES) if int(mask[e].sum()) > 1 for o in range(len(OPS)) if bool(mask[e, o])]
        if progress is not None:
            progress.reset(total=len(cands))
            progress.set_postfix(round=rnd)
        ntk_kw = {"C": config.C, "N": config.N, "num_classes": config.num_classes}
        thin_kw = {"C": config.thin_C, "N": 1, "num_classes": config.num_classes, "depth": config.thin_depth,
                       "use_stem": False, "in_channels": config.thin_C}
        ntk_changes, region_changes = score_candidates(
            mask, cands,
            lambda m, kw=ntk_kw: NB201Network(m, **kw).to(dev),
            lambda m, kw=thin_kw: NB201Network(m, **kw).to(dev),
            images, config, rng, dev, progress, thin_channels=config.thin_C,
        )
        choice, ranks = rank_ops(ntk_changes, region_changes, prune_number, config.precision)
        pruned_now = []
        for edge in sorted(choice):
            for (e, o) in choice[edge]:
                if bool(mask[e, o]) and int(mask[e].sum()) > 1:
                    mask[e, o] = False
                    pruned_now.append(f"{EDGES[e][0]}<-{EDGES[e][1]}:{OPS[o]}")
                if limit_info is not None:
                    mask = enforce_budget(mask, limit_info[1], limit_info[2], limit_info[3], limit_info[0])
        rounds.append({
            "round": rnd,
            "pruned": pruned_now,
            "scores": {f"{e},{OPS[o]}": [ntk_changes[(e, o)], region_changes[(e, o)], *ranks[(e, o)]] for e, o in cands},
            "mask": mask.int().tolist(),
        })
        if checkpoint is not None:
            from anybudget.io import atomic_write_json

            atomic_write_json(checkpoint, {
                "seed": seed, "config": asdict(config), "budget": str(budget) if budget else None,
                "mask": mask.int().tolist(), "rounds": rounds,
                "seconds": elapsed_before + time.perf_counter() - t_start,
            })
    if progress is not None:
        progress.close()
    arch = mask_to_arch(mask)
    result = SearchResult(arch, format_arch(arch), arch_index(arch), elapsed_before + time.perf_counter() - t_start, rounds)
    if limit_info is not None:
        key, limit, base, per_op = limit_info
        result.cost = {"key": key, "limit": limit, "value": base + sum(per_op[o] for o in arch)}
    return result
