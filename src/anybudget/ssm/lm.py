"""Small language models for MQAR: a Mamba stack and an attention baseline of the same width.

``MambaLM``: embedding -> N x (x + Mamba(RMSNorm(x))) -> RMSNorm -> head tied to the embedding,
no MLP and no position embedding (the SSM-Bottleneck / Zoology Mamba setting). Init follows the
reference ``MambaInit``: zero Linear biases except dt, embedding N(0, 0.02), ``out_proj``
rescaled by 1/sqrt(n_layers) (GPT-2 scheme).

``AttentionLM``: the Zoology transformer baseline: learned positions, N x (pre-norm causal MHA +
pre-norm MLP x4), dropout 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anybudget.ssm.mamba import Mamba, MambaConfig, MambaState

__all__ = ["AttentionLM", "LMConfig", "MambaLM", "build_lm"]


@dataclass(frozen=True)
class LMConfig:
    """A small LM. ``mixer``: ``"mamba"`` or ``"attention"``; ``mamba`` holds the mixer settings
    (its ``d_model`` is overwritten by this ``d_model``). Defaults: the paper's MQAR setting."""

    vocab_size: int = 8192
    d_model: int = 128
    n_layers: int = 2
    mixer: str = "mamba"
    mamba: MambaConfig = field(default_factory=lambda: MambaConfig(d_model=128))
    n_heads: int = 1
    mlp_ratio: int = 4
    dropout: float = 0.1
    max_seq_len: int = 1024
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self):
        for name, low in (("vocab_size", 2), ("d_model", 1), ("n_layers", 1), ("n_heads", 1),
                          ("max_seq_len", 1), ("mlp_ratio", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name}={v!r} must be an integer >= {low}")
        if self.mixer not in ("mamba", "attention"):
            raise ValueError(f"mixer={self.mixer!r}; allowed: 'mamba', 'attention'")
        if self.mixer == "attention" and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.mamba.d_model != self.d_model:
            object.__setattr__(self, "mamba", replace(self.mamba, d_model=self.d_model))


def _check_ids(ids: Tensor, vocab: int) -> None:
    if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be an integer tensor (batch, seq), got {tuple(ids.shape)} {ids.dtype}")


class _MambaBlock(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = Mamba(cfg.mamba)

    def forward(self, x: Tensor, return_state: bool = False):
        if return_state:
            y, st = self.mixer(self.norm(x), return_state=True)
            return x + y, st
        return x + self.mixer(self.norm(x))


class MambaLM(nn.Module):
    """input_ids (batch, seq) -> logits (batch, seq, vocab). ``step`` decodes one token at a time."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.config = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(_MambaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def _init_weights(self) -> None:
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Embedding):
                    nn.init.normal_(m.weight, std=0.02)
            for name, p in self.named_parameters():
                if name.endswith("out_proj.weight"):
                    nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                    p /= math.sqrt(self.config.n_layers)

    def forward_embeddings(self, x: Tensor, return_hidden: bool = False):
        """x: (batch, seq, d_model) embeddings -> logits [, list of n_layers+1 hidden states]."""
        hidden = [x]
        for layer in self.layers:
            x = layer(x)
            hidden.append(x)
        logits = self.lm_head(self.norm_f(x))
        return (logits, hidden) if return_hidden else logits

    def features(self, input_ids: Tensor) -> Tensor:
        """input_ids (batch, seq) -> final normed hidden states (batch, seq, d_model), before the head.

        Lets MQAR compute logits only where a label exists (the loss is identical, the
        (batch, seq, vocab) logits tensor is never built)."""
        _check_ids(input_ids, self.config.vocab_size)
        x = self.embedding(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)

    def forward(self, input_ids: Tensor, return_states: bool = False):
        """input_ids (batch, seq) -> logits [, list of per-layer MambaState after the last token]."""
        _check_ids(input_ids, self.config.vocab_size)
        x = self.embedding(input_ids)
        if not return_states:
            return self.forward_embeddings(x)
        states = []
        for layer in self.layers:
            x, st = layer(x, return_state=True)
            states.append(st)
        return self.lm_head(self.norm_f(x)), states

    def init_states(self, batch: int) -> list[MambaState]:
        return [layer.mixer.init_state(batch) for layer in self.layers]

    def step(self, input_ids: Tensor, states: list[MambaState]) -> tuple[Tensor, list[MambaState]]:
        """input_ids (batch,) -> logits (batch, vocab), new per-layer states."""
        x = self.embedding(input_ids)
        new = []
        for layer, st in zip(self.layers, states):
            y, st = layer.mixer.step(layer.norm(x), st)
            x = x + y
            new.append(st)
        return self.lm_head(self.norm_f(x)), new


class _AttnBlock(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(), nn.Linear(cfg.mlp_ratio * d, d),
            nn.Dropout(cfg.dropout),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.n_heads, d // self.n_heads).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.mlp(self.norm2(x))


class AttentionLM(nn.Module):
    """Transformer baseline of the same width: input_ids (batch, seq) -> logits (batch, seq, vocab)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.config = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(_AttnBlock(cfg) for _ in range(cfg.n_layers))
        self.norm_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # Zoology initialises every embedding N(0, 0.02). nn.Embedding's default N(0, 1) for the
        # positions would be 50x the tokens: after the first LayerNorm the token identity is ~2% of
        # the signal and tiny MQAR stays at chance (loss ln(V/2)) for 1000+ steps.
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def forward_embeddings(self, x: Tensor, return_hidden: bool = False):
        x = self.drop(x + self.pos.weight[: x.shape[1]])
        hidden = [x]
        for layer in self.layers:
            x = layer(x)
            hidden.append(x)
        logits = self.lm_head(self.norm_f(x))
        return (logits, hidden) if return_hidden else logits

    def features(self, input_ids: Tensor) -> Tensor:
        """input_ids (batch, seq) -> final normed hidden states (batch, seq, d_model)."""
        self._check(input_ids)
        x = self.drop(self.embedding(input_ids) + self.pos.weight[: input_ids.shape[1]])
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)

    def _check(self, input_ids: Tensor) -> None:
        _check_ids(input_ids, self.config.vocab_size)
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"seq={input_ids.shape[1]} exceeds max_seq_len={self.config.max_seq_len}")

    def forward(self, input_ids: Tensor) -> Tensor:
        self._check(input_ids)
        return self.forward_embeddings(self.embedding(input_ids))


def build_lm(cfg: LMConfig) -> nn.Module:
    """The model ``cfg.mixer`` names."""
    return MambaLM(cfg) if cfg.mixer == "mamba" else AttentionLM(cfg)
