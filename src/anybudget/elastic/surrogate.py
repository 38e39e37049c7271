"""Flextron's surrogate model (Sec. 3.3, Fig. 3): an MLP that predicts the LM loss of a sub-network
from its per-layer choice probabilities, so the router's objective becomes differentiable.

It is fitted on ``(config, measured loss)`` pairs of the elastic model; the router is updated only
while the surrogate's error on fresh samples is below a threshold.
"""

from __future__ import annotations

import torch
from torch import nn

from anybudget.elastic.evaluate import autocast_for, lm_loss
from anybudget.elastic.model import ElasticLlama, SubnetConfig

__all__ = ["Surrogate", "measure_loss", "one_hot_config"]


def one_hot_config(em: ElasticLlama, subnet: SubnetConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_layers, A), (num_layers, M) one-hot choice matrices of ``subnet``."""
    a, m = em.indices(subnet)
    return (nn.functional.one_hot(torch.tensor(a), len(em.kv_choices)).float(),
            nn.functional.one_hot(torch.tensor(m), len(em.mlp_choices)).float())


@torch.no_grad()
def measure_loss(em: ElasticLlama, subnet: SubnetConfig, windows: list[torch.Tensor]) -> float:
    """Mean next-token loss of ``subnet`` over ``windows`` (each (B, S+1))."""
    dev = next(em.model.parameters()).device
    total = 0.0
    with em.use(subnet), autocast_for(dev):
        for w in windows:
            w = w.to(dev)
            total += float(lm_loss(em.model(input_ids=w[:, :-1], use_cache=False).logits, w))
    return total / len(windows)


class Surrogate(nn.Module):
    """``loss ~= f([p_kv, p_mlp])``: 2 FC layers with LeakyReLU; p: (..., L, A), (..., L, M) -> (...)."""

    def __init__(self, num_layers: int, n_kv: int, n_mlp: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_layers * (n_kv + n_mlp), hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, p_kv: torch.Tensor, p_mlp: torch.Tensor) -> torch.Tensor:
        x = torch.cat([p_kv.flatten(-2), p_mlp.flatten(-2)], dim=-1)
        return self.net(x).squeeze(-1) * self.std + self.mean

    def fit(self, p_kv: torch.Tensor, p_mlp: torch.Tensor, loss: torch.Tensor, iters: int = 200, lr: float = 3e-3) -> float:
        """Fit to the samples (MSE on standardised losses); returns the final relative mean error."""
        with torch.no_grad():
            self.mean.copy_(loss.mean())
            self.std.copy_(loss.std().clamp_min(1e-3) if loss.numel() > 1 else torch.ones(()))
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        for _ in range(iters):
            opt.zero_grad()
            err = ((self(p_kv, p_mlp) - loss) / self.std).pow(2).mean()
            err.backward()
            opt.step()
        with torch.no_grad():
            return float(self.relative_error(p_kv, p_mlp, loss))

    @torch.no_grad()
    def relative_error(self, p_kv, p_mlp, loss) -> torch.Tensor:
        return ((self(p_kv, p_mlp) - loss).abs() / loss.abs().clamp_min(1e-6)).mean()
