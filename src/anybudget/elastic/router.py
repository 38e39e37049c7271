"""Flextron's static router (Sec. 3.3): budget -> per-layer (KV groups, MLP width), and ``route``.

The router is 2 FC layers with a LeakyReLU (as Flextron / Nemotron Elastic), from the budget
(a normalised target ``(target - min) / (max - min)``, or a one-hot over a budget list) to choice
logits for every layer. Training draws choices with Gumbel-softmax at a temperature annealed
``tau_init -> tau_final`` and minimises ``surrogate(p) + latency_weight * |cost(p) - target| / span``
where ``cost(p)`` is the expected cost read from the lookup table; the surrogate is refitted on
measured losses of the router's own picks, and the router only steps while the surrogate's
relative error on those fresh picks is below ``surrogate_threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from anybudget.budget import Budget, BudgetError, Quantity
from anybudget.elastic.latency import CostTable, Workload, memory_table, params_table
from anybudget.elastic.model import ElasticLlama, SubnetConfig
from anybudget.elastic.surrogate import Surrogate, measure_loss, one_hot_config
from anybudget.elastic.train import _random_subnet

__all__ = ["RouterTrainConfig", "StaticRouter", "cost_table_for", "route", "train_static_router", "uniform_configs"]

COST_KEYS = ("latency", "mem", "params")


@dataclass(frozen=True)
class RouterTrainConfig:
    """Static-router training.

    Args:
        steps: router steps. lr: router learning rate (Nemotron Elastic: 1e-2).
        hidden: router width (Megatron Flextron ``router_inter_dim`` 128).
        tau_init, tau_final: Gumbel-softmax temperature, annealed geometrically (Nemotron Elastic 1.0 -> 0.05).
        latency_weight: lambda of the cost term (Nemotron Elastic: 1).
        cost_loss: ``abs`` |cost - target| (Nemotron Elastic paper), ``hinge`` max(0, cost - target),
            or ``asymmetric`` (Megatron's Flextron code: the gap above the target as is, the gap
            below it times ``under_budget_weight``, their ``router_beta``).
        targets_per_step: budgets drawn per step, uniform over the feasible range.
        surrogate_samples: random configs measured before training; ``sample_every``: steps between
            fresh measurements of the router's picks; ``surrogate_threshold``: relative error below
            which the router may step (Flextron Fig. 3); ``surrogate_hidden``: its width.
        encoding: ``scalar`` (normalised target; any budget in range) or ``onehot`` over the
            ``onehot_budgets`` fractions of the range (Megatron's router input; a budget between
            them is served by the nearest, then fitted to the budget).
    """

    steps: int = 300
    lr: float = 1e-2
    hidden: int = 128
    tau_init: float = 1.0
    tau_final: float = 0.05
    latency_weight: float = 1.0
    cost_loss: str = "abs"
    under_budget_weight: float = 0.1
    targets_per_step: int = 8
    surrogate_samples: int = 64
    sample_every: int = 10
    surrogate_threshold: float = 0.05
    surrogate_hidden: int = 256
    encoding: str = "scalar"
    onehot_budgets: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    seed: int = 0

    def __post_init__(self):
        if self.cost_loss not in ("abs", "hinge", "asymmetric"):
            raise ValueError(f"cost_loss={self.cost_loss!r} must be 'abs', 'hinge' or 'asymmetric'")
        if self.encoding not in ("scalar", "onehot"):
            raise ValueError(f"encoding={self.encoding!r} must be 'scalar' or 'onehot'")
        if not (0 < self.tau_final <= self.tau_init):
            raise ValueError(f"tau_final={self.tau_final} must be in (0, tau_init={self.tau_init}]")


class StaticRouter(nn.Module):
    """Budget -> logits ``(N, L, A)`` over KV-group choices and ``(N, L, M)`` over MLP widths."""

    def __init__(self, num_layers: int, kv_choices, mlp_choices, key: str, min_cost: float, max_cost: float,
                 hidden: int = 128, encoding: str = "scalar", onehot_budgets=()):
        super().__init__()
        self.meta = {"num_layers": num_layers, "kv_choices": list(kv_choices), "mlp_choices": list(mlp_choices),
                     "key": key, "min_cost": min_cost, "max_cost": max_cost, "hidden": hidden,
                     "encoding": encoding, "onehot_budgets": list(onehot_budgets)}
        d_in = 1 if encoding == "scalar" else len(onehot_budgets)
        self.L, self.A, self.M = num_layers, len(kv_choices), len(mlp_choices)
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, num_layers * (self.A + self.M)))
        self.surrogate: Surrogate | None = None

    def normalise(self, target: torch.Tensor) -> torch.Tensor:
        lo, hi = self.meta["min_cost"], self.meta["max_cost"]
        return (target - lo) / max(hi - lo, 1e-12)

    def encode(self, target: torch.Tensor) -> torch.Tensor:
        t = self.normalise(target.float())
        if self.meta["encoding"] == "scalar":
            return t[:, None]
        grid = torch.tensor(self.meta["onehot_budgets"], device=t.device, dtype=t.dtype)
        return F.one_hot((t[:, None] - grid[None]).abs().argmin(-1), len(grid)).float()  # nearest budget

    def forward(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(self.encode(target)).view(-1, self.L, self.A + self.M)
        return out[..., :self.A], out[..., self.A:]

    @torch.no_grad()
    def choose(self, em: ElasticLlama, target: float) -> SubnetConfig:
        dev = next(self.parameters()).device
        a, m = self(torch.tensor([float(target)], device=dev))
        return em.from_indices(a[0].argmax(-1).tolist(), m[0].argmax(-1).tolist())

    def save(self, path) -> None:
        """safetensors with the metadata in its header (router + surrogate weights)."""
        import json

        from safetensors.torch import save_file

        from anybudget.io import atomic_path

        sd = {k: v.contiguous() for k, v in self.state_dict().items()}
        meta = dict(self.meta, surrogate_hidden=self.surrogate.net[0].out_features if self.surrogate else 0)
        with atomic_path(path) as tmp:
            save_file(sd, str(tmp), metadata={"anybudget_router": json.dumps(meta)})

    @classmethod
    def load(cls, path) -> StaticRouter:
        import json

        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["anybudget_router"])
        sh = meta.pop("surrogate_hidden")
        r = cls(**meta)
        if sh:
            r.surrogate = Surrogate(r.L, r.A, r.M, sh)
        r.load_state_dict(load_file(str(path)))
        return r


def cost_table_for(em: ElasticLlama, key: str, table: CostTable | None = None, workload: Workload | None = None) -> CostTable:
    if key == "latency":
        if table is None or table.key != "latency":
            raise BudgetError("a latency budget needs a measured latency table: "
                              "table = anybudget.elastic.measure_latency_table(em, Workload(...))")
        return table
    if key == "mem":
        wl = workload or (Workload(**table.workload) if table is not None and table.workload else Workload())
        return memory_table(em, wl)
    return params_table(em)


def uniform_configs(em: ElasticLlama) -> list[SubnetConfig]:
    return [em.uniform_choice(a, m) for a in range(len(em.kv_choices)) for m in range(len(em.mlp_choices))]


def _budget_target(budget) -> tuple[str, float]:
    b = budget if isinstance(budget, Budget) else Budget(budget)
    keys = [k for k in COST_KEYS if k in b]
    if len(keys) != 1 or len(b) != 1:
        raise BudgetError(f"budget {b} must have exactly one of latency=..., mem=..., params=... for an elastic sub-network")
    return keys[0], float(b[keys[0]].value)


def route(em: ElasticLlama, budget, router: StaticRouter | None = None, table: CostTable | None = None,
          uniform: bool = False, workload: Workload | None = None, margin: float = 0.0,
          calib: list[torch.Tensor] | Callable[[SubnetConfig], float] | None = None,
          measure: Callable[[SubnetConfig], float] | None = None, tries: int = 4) -> SubnetConfig:
    """The sub-network for ``budget`` (``"latency=20ms"``, ``"mem=2GiB"``, ``"params=20M"``).

    Flextron's part: with a router trained for this budget key, its argmax choice, with layer
    choices stepped down (largest cost saving first) until the table says it fits. Without one (or
    with ``uniform``): the uniform config of largest cost within the budget (lowest surrogate loss
    if the router has one). A budget below the smallest sub-network raises BudgetError naming the
    smallest feasible budget. ``margin`` in [0, 1): aim at ``(1 - margin) * budget`` in the table.

    Two steps of ours, beyond the paper, each off unless its argument is given:

    - ``measure`` (sub-network -> measured seconds; latency budgets only; cache it, it is called
      once per candidate): a candidate fits when its *measured* latency is within the budget, not
      its table cost. The router is asked again at ``aim * budget / measured`` (up to ``tries``
      times) so a table that over- or under-estimates is corrected by measurement; its pick is
      dropped if no answer fits. No margin is needed: nothing that measures within the budget is
      excluded, so a budget equal to the full model's measured latency gets the full model.
    - ``calib`` (held-out (B, S+1) windows, or a sub-network -> loss callable; never the test set):
      the router's fitting answers and every uniform sub-network that fits are scored on it and the lowest
      loss wins (ties: the larger cost). The result is then never worse on ``calib`` than any uniform
      width within the budget. Without ``calib`` the router's pick stands, as in Flextron.
    """
    if not 0 <= margin < 1:
        raise ValueError(f"margin={margin} must be in [0, 1)")
    if tries < 1:
        raise ValueError(f"tries={tries} must be >= 1")
    router = router if router is not None else getattr(em, "router", None)
    table = table if table is not None else getattr(em, "latency_table", None)
    key, target = _budget_target(budget)
    if measure is not None and key != "latency":
        raise ValueError(f"measure= checks latency budgets; the budget {budget!r} is on {key}")
    costs = cost_table_for(em, key, table, workload)
    timed: dict[str, float] = {}

    def measured(c: SubnetConfig) -> float:
        if str(c) not in timed:
            timed[str(c)] = float(measure(c))
        return timed[str(c)]

    smallest = measured(em.smallest()) if measure else costs.cost(em.smallest())
    if target < smallest:
        unit = {"latency": "s", "mem": "B", "params": ""}[key]
        need = Quantity(math.ceil(smallest * 1e6) / 1e6 if key == "latency" else math.ceil(smallest), unit)
        how = " (measured)" if measure else ""
        raise BudgetError(f"{key}={Quantity(target, unit)} is below the smallest sub-network "
                          f"({em.smallest()}){how}; the smallest feasible budget is {key}={need}")
    aim = max(target * (1 - margin), costs.cost(em.smallest()))

    def fits(c: SubnetConfig) -> bool:
        return measured(c) <= target if measure else costs.cost(c) <= aim

    fitting = [c for c in uniform_configs(em) if fits(c)] or [em.smallest()]
    if router is not None and router.meta["key"] == key and not uniform:
        picks = _router_picks(em, router, costs, target, aim, measured if measure else None, tries)
        if not calib:
            return picks[0] if picks else max(fitting, key=costs.cost)
        score = calib if callable(calib) else (lambda c: measure_loss(em, c, calib))
        cands = {str(c): c for c in [*picks, *fitting]}
        return min(cands.values(), key=lambda c: (score(c), -costs.cost(c)))
    if router is not None and router.surrogate is not None:
        sur = router.surrogate
        with torch.no_grad():
            sub = min(fitting, key=lambda c: float(sur(*one_hot_config(em, c))))
    else:
        sub = max(fitting, key=costs.cost)
    return sub if measure else fit_to_budget(em, sub, costs, aim)


def _router_picks(em, router, costs, target, aim, measured, tries) -> list[SubnetConfig]:
    """The router's answers that fit, best first: without ``measured`` the one table-fitted pick;
    with it, the answer at ``aim`` re-aimed by ``target / measured`` until it fits and is close, the
    fitting answer of largest measured latency first."""
    lo = costs.cost(em.smallest())
    found: dict[str, tuple[float, SubnetConfig]] = {}
    for _ in range(tries):
        aim = max(aim, lo)
        sub = fit_to_budget(em, router.choose(em, aim), costs, aim)
        if measured is None:
            return [sub]
        t = measured(sub)
        if t <= target:
            found[str(sub)] = (t, sub)
        if t <= target and t >= target * 0.99:
            break
        new_aim = aim * target / t
        if abs(new_aim - aim) <= 1e-6 * aim:
            break
        aim = new_aim
    return [c for _, c in sorted(found.values(), key=lambda x: -x[0])]


def fit_to_budget(em: ElasticLlama, sub: SubnetConfig, costs: CostTable, target: float) -> SubnetConfig:
    """Step layer choices down (largest saving first) until ``costs.cost(sub) <= target``."""
    a, m = em.indices(sub)
    while costs.cost(em.from_indices(a, m)) > target:
        best, best_save = None, -math.inf
        for li in range(em.num_layers):
            for axis, idx, n in ((0, a, len(em.kv_choices)), (1, m, len(em.mlp_choices))):
                if idx[li] + 1 < n:
                    trial = list(idx)
                    trial[li] += 1
                    aa, mm = (trial, m) if axis == 0 else (a, trial)
                    save = costs.cost(em.from_indices(a, m)) - costs.cost(em.from_indices(aa, mm))
                    if save > best_save:
                        best, best_save = (aa, mm), save
        if best is None:
            break
        a, m = best
    return em.from_indices(a, m)


def train_static_router(em: ElasticLlama, table: CostTable, windows: list[torch.Tensor],
                        config: RouterTrainConfig | None = None, quiet: bool = True) -> tuple[StaticRouter, dict]:
    """Train a static router for ``table.key`` budgets; ``windows``: held-out (B, S+1) batches for measured losses."""
    cfg = config or RouterTrainConfig()
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    lo, hi = table.cost(em.smallest()), table.cost(em.full())
    router = StaticRouter(em.num_layers, em.kv_choices, em.mlp_choices, table.key, lo, hi,
                          cfg.hidden, cfg.encoding, cfg.onehot_budgets)
    sur = Surrogate(em.num_layers, len(em.kv_choices), len(em.mlp_choices), cfg.surrogate_hidden)
    pool_kv, pool_m, pool_y = [], [], []

    def add(sub):
        a, m = one_hot_config(em, sub)
        pool_kv.append(a)
        pool_m.append(m)
        pool_y.append(measure_loss(em, sub, windows))

    subs = [em.full(), em.smallest(), *uniform_configs(em)]
    subs += [_random_subnet(em, g, False) for _ in range(max(0, cfg.surrogate_samples - len(subs)))]
    for s in tqdm(subs, desc="surrogate samples", disable=quiet):
        add(s)
    # the gate reads the error on samples the surrogate was not fitted on: hold out a fifth first
    n_fit = max(1, len(pool_y) * 4 // 5)
    perm = torch.randperm(len(pool_y), generator=g)
    fit_i, held_i = perm[:n_fit], perm[n_fit:]
    kv_all, m_all, y_all = torch.stack(pool_kv), torch.stack(pool_m), torch.tensor(pool_y)
    err = sur.fit(kv_all[fit_i], m_all[fit_i], y_all[fit_i], iters=400)
    if len(held_i):
        err = float(sur.relative_error(kv_all[held_i], m_all[held_i], y_all[held_i]))
    sur.fit(kv_all, m_all, y_all, iters=400)
    opt = torch.optim.Adam(router.parameters(), lr=cfg.lr)
    span = max(hi - lo, 1e-12)
    stats = {"router_steps": 0, "measured": len(pool_y), "surrogate_error": [err]}
    for step in tqdm(range(cfg.steps), desc="static router", disable=quiet):
        tau = cfg.tau_init * (cfg.tau_final / cfg.tau_init) ** (step / max(1, cfg.steps - 1))
        if cfg.encoding == "onehot":  # Megatron: budgets drawn from the fixed budget list
            pick = torch.randint(0, len(cfg.onehot_budgets), (cfg.targets_per_step,), generator=g)
            targets = lo + span * torch.tensor(cfg.onehot_budgets, dtype=torch.float64)[pick]
        else:
            targets = lo + span * torch.rand(cfg.targets_per_step, generator=g, dtype=torch.float64)
        if step % cfg.sample_every == 0 and step:
            fresh = [router.choose(em, float(t)) for t in targets[:2]]
            ka = torch.stack([one_hot_config(em, s)[0] for s in fresh])
            km = torch.stack([one_hot_config(em, s)[1] for s in fresh])
            y = torch.tensor([measure_loss(em, s, windows) for s in fresh])
            err = float(sur.relative_error(ka, km, y))
            stats["surrogate_error"].append(err)
            pool_kv.extend(ka)
            pool_m.extend(km)
            pool_y.extend(y.tolist())
            sur.fit(torch.stack(pool_kv), torch.stack(pool_m), torch.tensor(pool_y), iters=100)
        if err > cfg.surrogate_threshold:
            continue
        la, lm = router(targets)
        pa, pm = F.gumbel_softmax(la, tau=tau, dim=-1), F.gumbel_softmax(lm, tau=tau, dim=-1)
        cost = table.expected(pa.double(), pm.double()).float()
        gap = (cost - targets.float()) / span
        if cfg.cost_loss == "abs":
            cost_term = gap.abs()
        elif cfg.cost_loss == "hinge":
            cost_term = gap.clamp_min(0)
        else:
            cost_term = gap.clamp_min(0) + cfg.under_budget_weight * (-gap).clamp_min(0)
        loss = sur(pa, pm).mean() + cfg.latency_weight * cost_term.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        stats["router_steps"] += 1
    stats["measured"] = len(pool_y)
    router.surrogate = sur.requires_grad_(False)
    router.eval()
    stats["config"] = asdict(cfg)
    return router, stats
