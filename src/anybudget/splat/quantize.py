"""LightGaussian vector quantisation of colour ("VecTree", Sec. 3.4): the SH coefficients (degree 0
and rest) of the ``ratio`` (60%) least significant Gaussians are replaced by the nearest of
``codebook_size`` (8,192) codewords learnt by significance-weighted k-means; the others keep their
SH in float16. Opacity, scales and rotations are stored in float16, positions in float32 (or, as
an option, 16-bit uniform quantisation per axis).

k-means as in the released code: exponential-moving-average updates (decay 0.8) on random batches,
each sample weighted by its significance, and every step the 10 least-used codewords are replaced
by the 10 most significant samples of the batch (dead-code refresh).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from anybudget.splat.prune import check_ratio
from anybudget.splat.scene import GaussianScene

__all__ = [
    "QuantizeConfig",
    "QuantizedScene",
    "dequantize_positions",
    "quantize_positions",
    "nearest_code",
    "quantize",
    "weighted_kmeans",
]


@dataclass(frozen=True)
class QuantizeConfig:
    """Args:
        codebook_size: codewords (8,192 = 2^13).
        ratio: fraction of Gaussians (least significant first) whose SH is vector-quantised (0.6).
        iterations: k-means steps (1,000); batch: samples per step (80,000).
        decay: EMA decay (0.8); refresh: dead codewords replaced per step (10).
        position_bits: 0 keeps float32 positions (the paper), 16 quantises each axis uniformly.
        seed: 0.
    """

    codebook_size: int = 8192
    ratio: float = 0.6
    iterations: int = 1000
    batch: int = 80_000
    decay: float = 0.8
    refresh: int = 10
    position_bits: int = 0
    seed: int = 0

    def __post_init__(self):
        check_ratio(self.ratio)
        if self.codebook_size < 1:
            raise ValueError(f"codebook_size={self.codebook_size} must be >= 1")
        if self.position_bits not in (0, 16):
            raise ValueError(f"position_bits={self.position_bits}; allowed 0 (float32) or 16")


@dataclass
class QuantizedScene:
    """What the compact file stores, exactly. ``vq_mask (N,)`` True where SH is a codeword;
    ``indices (M,)`` codeword per VQ Gaussian (file order); ``codebook (K, D)`` and ``sh_fp16
    (N - M, D)`` float16 with D = 3 (D_c + 1)^2 laid out [dc(3), rest (K, 3) coefficient-major];
    ``means (N, 3)`` float32 (the dequantised positions when ``position_bits`` = 16, with
    ``means_q`` the integer codes and ``means_range`` (2, 3) their float32 bounds)."""

    means: torch.Tensor
    opacity: torch.Tensor  # float16 logits (N,)
    log_scales: torch.Tensor  # float16 (N, 3)
    quats: torch.Tensor  # float16 (N, 4)
    vq_mask: torch.Tensor
    indices: torch.Tensor
    codebook: torch.Tensor
    sh_fp16: torch.Tensor
    sh_degree: int
    means_q: torch.Tensor | None = None
    means_range: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.means.shape[0])

    def to_scene(self) -> GaussianScene:
        """The decoded scene in float32, ready to render or write as a standard ``.ply``."""
        n, d = len(self), self.codebook.shape[1] if self.codebook.numel() else self.sh_fp16.shape[1]
        sh = torch.empty(n, d, dtype=torch.float32)
        sh[self.vq_mask] = self.codebook.float()[self.indices.long()]
        sh[~self.vq_mask] = self.sh_fp16.float()
        k = d // 3 - 1
        return GaussianScene(
            means=self.means.float().clone(), log_scales=self.log_scales.float(), quats=self.quats.float(),
            opacity_logits=self.opacity.float(), sh_dc=sh[:, :3].contiguous(),
            sh_rest=sh[:, 3:].reshape(n, k, 3).contiguous(), normals=torch.zeros(n, 3),
        )


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Index of the nearest codeword (Euclidean) for every row of ``x`` ``(M, D)``."""
    out = []
    for i in range(0, x.shape[0], chunk):
        out.append(torch.cdist(x[i : i + chunk], codebook).argmin(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def weighted_kmeans(x: torch.Tensor, weights: torch.Tensor, codebook_size: int, iterations: int = 1000,
                    batch: int = 80_000, decay: float = 0.8, refresh: int = 10, seed: int = 0,
                    progress: bool = False) -> torch.Tensor:
    """Codebook ``(K, D)`` of significance-weighted EMA k-means on ``x (M, D)``, weights ``(M,)``."""
    m = x.shape[0]
    k = min(codebook_size, m)
    gen = torch.Generator().manual_seed(seed)
    x, w = x.float(), weights.float().clamp_min(0) + 1e-12
    code = x[torch.randperm(m, generator=gen)[:k].to(x.device)].clone()
    size = torch.ones(k, device=x.device)
    embed = code.clone()
    for _ in tqdm(range(iterations), desc="vq k-means", disable=not progress):
        pick = torch.randint(m, (min(batch, m),), generator=gen).to(x.device)
        xb, wb = x[pick], w[pick]
        idx = nearest_code(xb, code)
        bsize = torch.zeros(k, device=x.device).index_add_(0, idx, wb)
        bsum = torch.zeros_like(code).index_add_(0, idx, xb * wb[:, None])
        size = decay * size + (1 - decay) * bsize
        embed = decay * embed + (1 - decay) * bsum
        norm = (size + 1e-5) / (size.sum() + k * 1e-5) * size.sum()  # Laplace smoothing
        code = embed / norm[:, None]
        r = min(refresh, k, xb.shape[0])
        if r:
            dead = torch.argsort(size)[:r]
            best = torch.argsort(wb, descending=True)[:r]
            code[dead], embed[dead], size[dead] = xb[best], xb[best], 1.0
    return code


def dequantize_positions(q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """float32 positions of 16-bit codes; the encoder and the decoder both call this."""
    step = (hi - lo) / float(2**bits - 1)
    return (lo + q.to(torch.float32) * step).to(torch.float32)


def quantize_positions(means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16-bit codes of ``means (N, 3)``, uniform per axis over their bounding box: returns the
    dequantised float32 positions, the integer codes and the ``(2, 3)`` bounds."""
    lo, hi = means.min(0).values, means.max(0).values
    hi = torch.where(hi > lo, hi, lo + 1e-6)
    means_q = torch.round((means - lo) / (hi - lo) * (2**16 - 1)).clamp(0, 2**16 - 1).to(torch.int32)
    return dequantize_positions(means_q, lo, hi), means_q, torch.stack([lo, hi])


def quantize(scene: GaussianScene, significance: torch.Tensor, config: QuantizeConfig = QuantizeConfig(),
             progress: bool = False) -> QuantizedScene:
    """Quantise ``scene``'s colour by significance (``(N,)``, higher = more important)."""
    n = len(scene)
    if significance.shape != (n,):
        raise ValueError(f"significance has shape {tuple(significance.shape)}; expected ({n},)")
    # k-means runs where the scene lives (a GPU makes 8,192 codewords x 80k samples cheap); the
    # stored result is on the CPU.
    dev = scene.device
    s = scene.detach().to("cpu")
    sh = torch.cat([s.sh_dc, s.sh_rest.reshape(n, -1)], dim=1)
    order = torch.argsort(significance.cpu(), stable=True)
    m = round(config.ratio * n)
    vq_mask = torch.zeros(n, dtype=torch.bool)
    vq_mask[order[:m]] = True
    if m:
        x = sh[vq_mask].to(dev)
        code = weighted_kmeans(x, significance[vq_mask.to(significance.device)].to(dev), config.codebook_size,
                               config.iterations, config.batch, config.decay, config.refresh, config.seed, progress)
        codebook = code.half().cpu()
        indices = nearest_code(x, codebook.float().to(dev)).to(torch.int32).cpu()
    else:
        codebook, indices = torch.zeros(0, sh.shape[1], dtype=torch.float16), torch.zeros(0, dtype=torch.int32)
    means, means_q, rng = s.means.clone(), None, None
    if config.position_bits:
        means, means_q, rng = quantize_positions(s.means)
    return QuantizedScene(
        means=means, opacity=s.opacity_logits.half(), log_scales=s.log_scales.half(), quats=s.quats.half(),
        vq_mask=vq_mask, indices=indices, codebook=codebook, sh_fp16=sh[~vq_mask].half(),
        sh_degree=s.sh_degree, means_q=means_q, means_range=rng,
    )
