"""``ElasticLlama``: one set of weights, a per-layer choice of KV groups and MLP width per call.

Flextron (Cai et al., ICML 2024, Sec. 3.1) nests every sub-network in the full one: after the
importance permutation (``permute.py``) a sub-network keeps the first ``g`` KV groups of a layer
(with their query heads) and the first ``w`` MLP neurons. Here that is done by turning each
projection ``nn.Linear`` of the wrapped model into an :class:`ElasticLinear` in place (same module,
same Parameter objects, no copy) whose forward multiplies by a prefix slice of its weight. The
transformers attention and MLP code runs unchanged: it infers the head count from the tensor shape.

    em = ElasticLlama(model)
    with em.use(em.uniform(0.5)):
        logits = model(ids).logits       # or em(ids, subnet=em.uniform(0.5))
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from anybudget.elastic.families import check_family, decoder_layers, shape_of

__all__ = ["ElasticLinear", "ElasticLlama", "ElasticSpace", "LayerConfig", "SubnetConfig"]


class ElasticLinear(nn.Linear):
    """An ``nn.Linear`` that multiplies by its weight's leading ``out_active`` rows / ``in_active`` columns.

    Shapes: ``x (..., in_active or in_features) -> (..., out_active or out_features)``.
    ``None`` means the full size, and then the forward is exactly ``nn.Linear``'s.
    """

    out_active: int | None = None
    in_active: int | None = None

    @classmethod
    def convert(cls, linear: nn.Linear) -> ElasticLinear:
        if not isinstance(linear, ElasticLinear):
            linear.__class__ = cls  # same object, same parameters and hooks: nothing is copied
            linear.out_active = None
            linear.in_active = None
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_active is None and self.in_active is None:
            return F.linear(x, self.weight, self.bias)
        o = self.out_active or self.out_features
        i = self.in_active or self.in_features
        bias = None if self.bias is None else self.bias[:o]
        return F.linear(x, self.weight[:o, :i], bias)


@dataclass(frozen=True)
class ElasticSpace:
    """Which widths a layer may take, as fractions of the full size (Flextron: nested widths).

    Args:
        mlp_fractions: MLP intermediate widths; the paper's elastic MLP uses a discrete set,
            default 100/75/50/25%. Each width is ``round(f * intermediate_size)``.
        kv_fractions: attention widths as fractions of the KV groups (a group = one KV head and its
            query heads, so GQA stays intact); ``max(1, round(f * kv_heads))``, duplicates dropped.
    """

    mlp_fractions: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    kv_fractions: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)

    def __post_init__(self):
        for name in ("mlp_fractions", "kv_fractions"):
            fr = tuple(float(f) for f in getattr(self, name))
            object.__setattr__(self, name, fr)
            if not fr or any(not (0 < f <= 1) for f in fr):
                raise ValueError(f"{name}={fr} must be non-empty fractions in (0, 1]")
            if 1.0 not in fr:
                raise ValueError(f"{name}={fr} must contain 1.0 (the full model is always a choice)")

    def mlp_widths(self, intermediate: int) -> tuple[int, ...]:
        ws = {max(1, round(f * intermediate)) for f in self.mlp_fractions}
        return tuple(sorted(ws, reverse=True))

    def kv_groups(self, kv_heads: int) -> tuple[int, ...]:
        gs = {max(1, round(f * kv_heads)) for f in self.kv_fractions}
        return tuple(sorted(gs, reverse=True))


@dataclass(frozen=True)
class LayerConfig:
    """One decoder layer's choice: ``kv_groups`` KV heads (with their query heads), ``mlp_width`` neurons."""

    kv_groups: int
    mlp_width: int


@dataclass(frozen=True)
class SubnetConfig:
    """A sub-network: one :class:`LayerConfig` per decoder layer; serialises to JSON."""

    layers: tuple[LayerConfig, ...] = field(default_factory=tuple)

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(
            x if isinstance(x, LayerConfig) else LayerConfig(**x) for x in self.layers))

    @property
    def is_uniform(self) -> bool:
        return len(set(self.layers)) <= 1

    def to_dict(self) -> dict:
        return {"layers": [{"kv_groups": x.kv_groups, "mlp_width": x.mlp_width} for x in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | dict) -> SubnetConfig:
        d = json.loads(text) if isinstance(text, str) else text
        return cls(tuple(LayerConfig(int(x["kv_groups"]), int(x["mlp_width"])) for x in d["layers"]))

    def __str__(self) -> str:
        if self.is_uniform and self.layers:
            x = self.layers[0]
            return f"uniform(kv={x.kv_groups}, mlp={x.mlp_width}) x {len(self.layers)}"
        return " ".join(f"{x.kv_groups}/{x.mlp_width}" for x in self.layers)


class ElasticLlama(nn.Module):
    """A loaded Llama / Mistral / Qwen2 / Qwen3 causal LM with elastic width per layer.

    The wrapped ``model`` keeps its class, weights and ``state_dict`` keys; only its projection
    layers become :class:`ElasticLinear`. ``use(subnet)`` selects a sub-network for the calls inside
    the block; outside any block (or with :meth:`full`) the model is exactly the original.
    Sub-networks are prefixes, so the weights must first be permuted by importance
    (:func:`anybudget.elastic.make_elastic` does both).
    """

    def __init__(self, model: nn.Module, space: ElasticSpace | None = None):
        super().__init__()
        self.family = check_family(model)
        self.model = model
        self.space = space or ElasticSpace()
        self.shape = shape_of(model)
        self.mlp_choices = self.space.mlp_widths(self.shape["intermediate"])
        self.kv_choices = self.space.kv_groups(self.shape["kv_heads"])
        self.n_rep = self.shape["heads"] // self.shape["kv_heads"]
        for layer in decoder_layers(model):
            a, m = layer.self_attn, layer.mlp
            for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
                ElasticLinear.convert(lin)
        self._active: SubnetConfig | None = None

    @property
    def num_layers(self) -> int:
        return self.shape["layers"]

    # --- configurations -------------------------------------------------------------------
    def full(self) -> SubnetConfig:
        return self.uniform_choice(0, 0)

    def smallest(self) -> SubnetConfig:
        return self.uniform_choice(len(self.kv_choices) - 1, len(self.mlp_choices) - 1)

    def uniform_choice(self, kv_index: int, mlp_index: int) -> SubnetConfig:
        x = LayerConfig(self.kv_choices[kv_index], self.mlp_choices[mlp_index])
        return SubnetConfig((x,) * self.num_layers)

    def uniform(self, fraction: float, kv_fraction: float | None = None) -> SubnetConfig:
        """Every layer at ``fraction`` of the MLP width and ``kv_fraction`` (default the same) of the KV groups."""
        kv_fraction = fraction if kv_fraction is None else kv_fraction
        w, g = round(fraction * self.shape["intermediate"]), max(1, round(kv_fraction * self.shape["kv_heads"]))
        if w not in self.mlp_choices:
            raise ValueError(f"fraction={fraction} gives MLP width {w}, not a choice; allowed widths {self.mlp_choices}")
        if g not in self.kv_choices:
            raise ValueError(f"kv_fraction={kv_fraction} gives {g} KV groups, not a choice; allowed {self.kv_choices}")
        return SubnetConfig((LayerConfig(g, w),) * self.num_layers)

    def from_indices(self, kv_idx: Sequence[int], mlp_idx: Sequence[int]) -> SubnetConfig:
        return SubnetConfig(tuple(LayerConfig(self.kv_choices[int(a)], self.mlp_choices[int(m)])
                                  for a, m in zip(kv_idx, mlp_idx)))

    def indices(self, subnet: SubnetConfig) -> tuple[list[int], list[int]]:
        self.validate(subnet)
        return ([self.kv_choices.index(x.kv_groups) for x in subnet.layers],
                [self.mlp_choices.index(x.mlp_width) for x in subnet.layers])

    def validate(self, subnet: SubnetConfig) -> SubnetConfig:
        if not isinstance(subnet, SubnetConfig):
            raise TypeError(f"subnet must be a SubnetConfig, not {type(subnet).__name__}")
        if len(subnet.layers) != self.num_layers:
            raise ValueError(f"subnet has {len(subnet.layers)} layers; the model has {self.num_layers}")
        for i, x in enumerate(subnet.layers):
            if x.mlp_width not in self.mlp_choices:
                raise ValueError(f"layer {i}: mlp_width={x.mlp_width} is not a choice; allowed {self.mlp_choices}")
            if x.kv_groups not in self.kv_choices:
                raise ValueError(f"layer {i}: kv_groups={x.kv_groups} is not a choice; allowed {self.kv_choices}")
        return subnet

    # --- selection ------------------------------------------------------------------------
    def _select(self, subnet: SubnetConfig | None) -> None:
        hd, full = self.shape["head_dim"], subnet is None
        layers = decoder_layers(self.model)
        for i, layer in enumerate(layers):
            a, m = layer.self_attn, layer.mlp
            x = None if full else subnet.layers[i]
            kv = None if full or x.kv_groups == self.shape["kv_heads"] else x.kv_groups * hd
            q = None if kv is None else x.kv_groups * self.n_rep * hd
            w = None if full or x.mlp_width == self.shape["intermediate"] else x.mlp_width
            a.q_proj.out_active, a.k_proj.out_active, a.v_proj.out_active, a.o_proj.in_active = q, kv, kv, q
            m.gate_proj.out_active, m.up_proj.out_active, m.down_proj.in_active = w, w, w
        self._active = subnet

    @contextlib.contextmanager
    def use(self, subnet: SubnetConfig | None) -> Iterator[ElasticLlama]:
        """Run the calls inside the block with ``subnet`` (None = the full model); restores on exit.

        A KV cache filled under one sub-network must be used with the same one (its heads differ).
        """
        if subnet is not None:
            self.validate(subnet)
        previous = self._active
        self._select(subnet)
        try:
            yield self
        finally:
            self._select(previous)

    @property
    def active(self) -> SubnetConfig | None:
        return self._active

    def unwrap(self) -> nn.Module:
        """The wrapped model with plain ``nn.Linear`` layers again (full width); ``self`` is unusable after."""
        self._select(None)
        for layer in decoder_layers(self.model):
            a, m = layer.self_attn, layer.mlp
            for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
                lin.__class__ = nn.Linear
                lin.__dict__.pop("out_active", None)
                lin.__dict__.pop("in_active", None)
        return self.model

    def forward(self, *args, subnet: SubnetConfig | None = None, **kwargs):
        """``model(*args, **kwargs)`` under ``subnet`` (None: the one selected by ``use``, else full)."""
        if subnet is None:
            return self.model(*args, **kwargs)
        with self.use(subnet):
            return self.model(*args, **kwargs)
