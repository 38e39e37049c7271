"""Flextron's dynamic router (Sec. 3.3): per token and per layer, an MLP width chosen from the
token's hidden state and the budget.

Per layer: 2 FC layers with LeakyReLU on ``[h, t]`` (``h`` the MLP's input, ``t`` the normalised
target) -> logits over the MLP widths. Training (model frozen): Gumbel-softmax probabilities ``p``
make a soft prefix mask ``sum_k p_k [j < w_k]`` on the MLP's intermediate neurons (a hook on
``down_proj``'s input); loss = forward KL from the full model + ``latency_weight *
|E[latency] - target| / span``. At evaluation the choice is the argmax per token.

Latency accounting (stated, not measured): a token routed to width ``w`` in layer ``l`` costs the
lookup-table entry ``T[l][attention choice][w]``; a call's latency is ``fixed + sum_l mean over
tokens of T[l][a][w_token]``, i.e. the expected LUT latency if tokens were grouped by width.
Masking itself computes the full width, so measured wall time does not fall; per-token kernels
that gather tokens by width are not part of this library.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from anybudget.elastic.evaluate import autocast_for
from anybudget.elastic.families import decoder_layers
from anybudget.elastic.latency import CostTable
from anybudget.elastic.model import ElasticLlama
from anybudget.elastic.train import forward_kl

__all__ = ["DynamicRouter", "DynamicTrainConfig", "dynamic_routing", "train_dynamic_router"]


@dataclass(frozen=True)
class DynamicTrainConfig:
    """Args: steps, lr (router), hidden (router width), tau_init/tau_final (annealed Gumbel-softmax
    temperature), latency_weight (lambda of the latency penalty), seed."""

    steps: int = 200
    lr: float = 3e-3
    hidden: int = 64
    tau_init: float = 1.0
    tau_final: float = 0.1
    latency_weight: float = 1.0
    seed: int = 0


class DynamicRouter(nn.Module):
    """Per-layer token routers: ``(B, S, d) hidden + target -> (B, S, M)`` width logits."""

    def __init__(self, num_layers: int, hidden_size: int, mlp_choices, min_cost: float, max_cost: float, hidden: int = 64):
        super().__init__()
        self.mlp_choices = tuple(mlp_choices)
        self.min_cost, self.max_cost = float(min_cost), float(max_cost)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size + 1, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, len(mlp_choices)))
            for _ in range(num_layers))

    def normalise(self, target: float) -> float:
        return (target - self.min_cost) / max(self.max_cost - self.min_cost, 1e-12)

    def logits(self, layer: int, h: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((*h.shape[:-1], 1), t, dtype=h.dtype, device=h.device)
        x = torch.cat([h, tt], dim=-1)
        net = self.layers[layer]
        return F.linear(F.leaky_relu(F.linear(x, net[0].weight.to(x.dtype), net[0].bias.to(x.dtype)), 0.1),
                        net[2].weight.to(x.dtype), net[2].bias.to(x.dtype)).float()


@contextlib.contextmanager
def dynamic_routing(em: ElasticLlama, router: DynamicRouter, target: float, table: CostTable,
                    tau: float | None = None, kv_index: int = 0):
    """Route MLP widths per token inside the block. ``tau=None``: hard argmax; else Gumbel-softmax.

    Yields a dict whose ``"latency"`` (a tensor, differentiable when soft) accumulates the LUT
    accounting of the calls made inside the block (fixed + sum_l mean_tokens T[l][kv][w]).
    """
    t = router.normalise(target)
    widths = torch.tensor(router.mlp_choices)
    lut = table.tensor()[:, kv_index, :]  # (L, M)
    acc = {"latency": 0.0, "calls": 0}
    prefix = None
    handles = []
    probs: dict[int, torch.Tensor] = {}

    def route_hook(li):
        def hook(mod, args):
            h = args[0]
            lg = router.logits(li, h.detach() if tau is None else h, t)
            p = F.one_hot(lg.argmax(-1), len(widths)).float() if tau is None else F.gumbel_softmax(lg, tau=tau, dim=-1)
            probs[li] = p
            acc["latency"] = acc["latency"] + (p.mean(dim=(0, 1)) * lut[li].to(p.device, p.dtype)).sum()
        return hook

    def mask_hook(li):
        def hook(mod, args):
            nonlocal prefix
            x = args[0]
            if prefix is None or prefix.device != x.device:
                prefix = (torch.arange(x.shape[-1])[None] < widths[:, None]).float().to(x.device)  # (M, I)
            return (x * (probs[li] @ prefix[:, :x.shape[-1]]).to(x.dtype),)
        return hook

    def count_hook(mod, args, kwargs):
        acc["latency"] = acc["latency"] + table.fixed
        acc["calls"] += 1

    for li, layer in enumerate(decoder_layers(em.model)):
        handles.append(layer.mlp.register_forward_pre_hook(route_hook(li)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(mask_hook(li)))
    handles.append(em.model.register_forward_pre_hook(count_hook, with_kwargs=True))
    try:
        yield acc
    finally:
        for h in handles:
            h.remove()


def train_dynamic_router(em: ElasticLlama, table: CostTable, batches, config: DynamicTrainConfig | None = None,
                         quiet: bool = True) -> tuple[DynamicRouter, dict]:
    """Train per-token routers with the model frozen; ``batches(step, rank)`` -> (B, S+1) windows."""
    cfg = config or DynamicTrainConfig()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = em.model
    dev = next(model.parameters()).device
    full_kv = em.uniform_choice(0, len(em.mlp_choices) - 1)
    lo, hi = table.cost(full_kv), table.cost(em.full())
    router = DynamicRouter(em.num_layers, em.shape["hidden"], em.mlp_choices, lo, hi, cfg.hidden).to(dev)
    opt = torch.optim.Adam(router.parameters(), lr=cfg.lr)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False).eval()
    span, history = max(hi - lo, 1e-12), []
    try:
        for step in tqdm(range(cfg.steps), desc="dynamic router", disable=quiet):
            tau = cfg.tau_init * (cfg.tau_final / cfg.tau_init) ** (step / max(1, cfg.steps - 1))
            target = lo + span * float(torch.rand((), generator=g))
            w = batches(step, 0).to(dev)
            with torch.no_grad(), autocast_for(dev):
                teacher = model(input_ids=w[:, :-1], use_cache=False).logits
            with dynamic_routing(em, router, target, table, tau=tau) as acc, autocast_for(dev):
                logits = model(input_ids=w[:, :-1], use_cache=False).logits
            kd = forward_kl(logits, teacher)
            lat = (acc["latency"] - target) / span
            loss = kd + cfg.latency_weight * lat.abs()
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append([step, float(kd.detach()), float(acc["latency"].detach()), target])
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    router.eval()
    return router, {"history": history, "config": asdict(cfg), "min_latency": lo, "max_latency": hi}
