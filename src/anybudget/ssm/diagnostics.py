"""Recency and over-smoothing diagnostics (Wang et al., ICLR 2025, Sec. 3 Fig. 1 and Sec. 4 Fig. 5).

* Influence score (recency): log ||d y_t / d x_s||_F of the model's last hidden state at position
  t with respect to the input embedding at position s, against the distance t - s. Theorem 3.1
  bounds it by a product of A-bar entries, so for vanilla Mamba it falls about linearly in the
  distance (exponential recency); the one-polarized channel keeps a floor.
* Sharpness (over-smoothing): the mean pairwise l2 distance between the token features of a
  layer, mean_{i != j} ||f_i - f_j||; lower means smoother. The paper does not state a
  normalization; ``normalize=True`` divides by the mean feature norm so layers of different
  scale compare.

Both take any model with ``forward_embeddings(x, return_hidden=True)`` (``MambaLM``, ``AttentionLM``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["feature_sharpness", "influence_scores", "layer_sharpness", "plot_influence", "plot_sharpness"]


def influence_scores(model, input_ids: Tensor, position: int | None = None, eps: float = 1e-30) -> Tensor:
    """log ||d h_t / d x_s||_F for s = 0..t, averaged (in log space) over the batch.

    input_ids: (batch, seq) -> (t + 1,) float32, index s; distance is ``t - s``. ``position`` t
    defaults to the last token. Uses one backward pass per output feature (d_model passes).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    seq = input_ids.shape[1]
    t = seq - 1 if position is None else position
    if not 0 <= t < seq:
        raise ValueError(f"position={position} must be in [0, {seq - 1}]")
    was_training = model.training
    model.eval()
    x = model.embedding(input_ids).detach().requires_grad_(True)
    _, hidden = model.forward_embeddings(x, return_hidden=True)
    y = hidden[-1][:, t]  # (batch, d_model)
    sq = torch.zeros(input_ids.shape[0], t + 1, dtype=torch.float64, device=x.device)
    for i in range(y.shape[1]):
        (g,) = torch.autograd.grad(y[:, i].sum(), x, retain_graph=i + 1 < y.shape[1])
        sq += g[:, : t + 1].double().pow(2).sum(-1)
    model.train(was_training)
    return (0.5 * torch.log(sq + eps)).mean(0).float()


def feature_sharpness(features: Tensor, normalize: bool = False) -> Tensor:
    """Mean pairwise l2 distance among tokens: features (batch, seq, d) -> (batch,)."""
    if features.dim() != 3 or features.shape[1] < 2:
        raise ValueError(f"features must be (batch, seq >= 2, d), got shape {tuple(features.shape)}")
    f = features.float()
    n = f.shape[1]
    dist = torch.cdist(f, f)  # (b, n, n), zero diagonal
    score = dist.sum((1, 2)) / (n * (n - 1))
    if normalize:
        score = score / f.norm(dim=-1).mean(-1).clamp_min(1e-12)
    return score


@torch.no_grad()
def layer_sharpness(model, input_ids: Tensor, normalize: bool = False) -> list[float]:
    """Sharpness of the embedding and of each block's output: a list of n_layers + 1 floats."""
    was_training = model.training
    model.eval()
    _, hidden = model.forward_embeddings(model.embedding(input_ids), return_hidden=True)
    model.train(was_training)
    return [float(feature_sharpness(h, normalize).mean()) for h in hidden]


def plot_influence(curves: dict[str, Tensor], path: str | Path, title: str = "Influence vs distance") -> Path:
    """curves: label -> influence scores (index s, from :func:`influence_scores`); PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anybudget.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, sc in curves.items():
        sc = sc.detach().cpu()
        dist = torch.arange(sc.numel() - 1, -1, -1)
        ax.plot(dist.numpy(), sc.numpy(), label=label)
    ax.set_xlabel("distance t - s (tokens)")
    ax.set_ylabel("log ||dy_t / dx_s||")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def plot_sharpness(curves: dict[str, list[float]], path: str | Path, title: str = "Feature sharpness per layer") -> Path:
    """curves: label -> per-layer sharpness (from :func:`layer_sharpness`); PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anybudget.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, vals in curves.items():
        ax.plot(range(len(vals)), vals, marker="o", label=label)
    ax.set_xlabel("layer (0 = embedding)")
    ax.set_ylabel("mean pairwise token distance")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
