"""What a sub-network costs: a measured per-layer latency lookup table, an analytic memory model and
the parameter count, all as one additive :class:`CostTable` (Flextron Sec. 3.3: the routers' latency
loss reads a lookup table of per-layer latencies measured on the target device).

``cost(subnet) = fixed + sum_l table[l][kv choice][mlp choice]``. For latency, ``fixed`` is the
measured embedding + final norm + LM head; for memory, weights + KV cache + an activation workspace
taken at the full width (an upper bound for every sub-network, which keeps the model additive); for
parameters, the embeddings / head / final norm.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from anybudget.elastic.families import decoder_layers
from anybudget.elastic.model import ElasticLlama, LayerConfig, SubnetConfig

__all__ = ["CostTable", "Workload", "measure_latency_table", "memory_bytes", "memory_table", "param_count", "params_table"]

UNITS = {"latency": "s", "mem": "B", "params": ""}


@dataclass(frozen=True)
class Workload:
    """What one timed call is: ``batch`` sequences; ``prefill`` of ``seq`` tokens, or one ``decode`` step
    after ``seq`` cached tokens; ``dtype`` of weights and activations."""

    batch: int = 8
    seq: int = 512
    mode: str = "prefill"
    dtype: str = "bfloat16"

    def __post_init__(self):
        if self.mode not in ("prefill", "decode"):
            raise ValueError(f"mode={self.mode!r} must be 'prefill' or 'decode'")
        for k in ("batch", "seq"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)!r} must be an integer >= 1")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r} must be float32, bfloat16 or float16")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def bytes_per_value(self) -> int:
        return 4 if self.dtype == "float32" else 2


@dataclass
class CostTable:
    """``per_layer[l][a][m]``: cost of layer ``l`` with ``kv_choices[a]`` groups and ``mlp_choices[m]`` neurons."""

    key: str
    fixed: float
    per_layer: list
    kv_choices: tuple
    mlp_choices: tuple
    workload: dict | None = None
    device: str = "analytic"
    extra: dict = field(default_factory=dict)

    def cost(self, subnet: SubnetConfig) -> float:
        """Total cost of ``subnet`` (seconds, bytes or a count)."""
        total = self.fixed
        for row, x in zip(self.per_layer, subnet.layers):
            total += row[self.kv_choices.index(x.kv_groups)][self.mlp_choices.index(x.mlp_width)]
        return total

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.per_layer, dtype=torch.float64)

    def expected(self, p_kv: torch.Tensor, p_mlp: torch.Tensor) -> torch.Tensor:
        """Differentiable expected cost: ``fixed + sum_l p_kv[l] @ T[l] @ p_mlp[l]``; p: (..., L, A), (..., L, M)."""
        t = self.tensor().to(p_kv.device, p_kv.dtype)
        return self.fixed + torch.einsum("...la,lam,...lm->...", p_kv, t, p_mlp)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unit"] = UNITS[self.key]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str | dict) -> CostTable:
        d = dict(json.loads(text) if isinstance(text, str) else text)
        d.pop("unit", None)
        d["kv_choices"], d["mlp_choices"] = tuple(d["kv_choices"]), tuple(d["mlp_choices"])
        return cls(**d)


def _layer_params(em: ElasticLlama, g: int, w: int) -> int:
    s, hd = em.shape, em.shape["head_dim"]
    layer = decoder_layers(em.model)[0]
    a, m = layer.self_attn, layer.mlp
    q, kv = g * em.n_rep * hd, g * hd
    n = s["hidden"] * (q + 2 * kv) + q * s["hidden"] + 3 * s["hidden"] * w
    n += (q + 2 * kv) * (a.q_proj.bias is not None) + s["hidden"] * (a.o_proj.bias is not None)
    n += (2 * w + s["hidden"]) * (m.gate_proj.bias is not None)
    n += sum(p.numel() for name, p in layer.named_parameters() if "norm" in name)
    return n


def params_table(em: ElasticLlama) -> CostTable:
    """Parameter count as a cost table (embeddings, untied head and final norm in ``fixed``)."""
    s = em.shape
    fixed = s["vocab"] * s["hidden"] * (1 if s["tied"] else 2) + sum(p.numel() for p in em.model.model.norm.parameters())
    per = [[[float(_layer_params(em, g, w)) for w in em.mlp_choices] for g in em.kv_choices] for _ in range(em.num_layers)]
    return CostTable("params", float(fixed), per, em.kv_choices, em.mlp_choices)


def param_count(em: ElasticLlama, subnet: SubnetConfig) -> int:
    return int(params_table(em).cost(em.validate(subnet)))


def memory_table(em: ElasticLlama, workload: Workload) -> CostTable:
    """Bytes: weights + KV cache (``2 * batch * seq * g * head_dim`` per layer) + activation workspace."""
    s, b = em.shape, workload.bytes_per_value
    tokens = workload.batch * (workload.seq if workload.mode == "prefill" else 1)
    kv_len = workload.batch * (workload.seq + (1 if workload.mode == "decode" else 0))
    params = params_table(em)
    per = [[[params.per_layer[0][a][m] * b + 2 * kv_len * g * s["head_dim"] * b
             for m in range(len(em.mlp_choices))] for a, g in enumerate(em.kv_choices)]
           for _ in range(em.num_layers)]
    # workspace at full width: residual + normed + q/k/v/attn + 3 MLP intermediates, and fp32 logits
    q = s["heads"] * s["head_dim"]
    work = tokens * (2 * s["hidden"] + 2 * q + 2 * s["kv_heads"] * s["head_dim"] + 3 * s["intermediate"]) * b
    work += tokens * s["vocab"] * 4
    return CostTable("mem", params.fixed * b + work, per, em.kv_choices, em.mlp_choices, asdict(workload))


def memory_bytes(em: ElasticLlama, subnet: SubnetConfig, workload: Workload) -> int:
    return int(memory_table(em, workload).cost(em.validate(subnet)))


class _PastCache:
    """A cache holding ``seq`` fixed past keys/values per layer; ``update`` concatenates like DynamicCache."""

    def __init__(self, past: dict):
        self.past = past

    def update(self, k, v, layer_idx, *args, **kwargs):
        pk, pv = self.past[(layer_idx, k.shape[1])]
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)


@torch.no_grad()
def measure_latency_table(
    em: ElasticLlama,
    workload: Workload | None = None,
    warmup: int = 3,
    repeat: int = 10,
    per_layer: bool = True,
    monotone: bool = True,
    fixed: str = "model",
    quiet: bool = True,
) -> CostTable:
    """Time every decoder layer under every (KV groups, MLP width) choice, and the fixed part.

    CUDA events on a GPU, ``perf_counter`` on the CPU (anybudget.measure.latency). With
    ``per_layer=False`` layer 0 is timed and its row copied to the others (all layers have one shape).
    ``monotone``: timing noise can make a wider choice read faster than a narrower one; each entry is
    raised to the largest entry of any choice it contains (nested sub-networks never cost less), so
    the raw medians are kept in ``extra["raw"]``.
    ``fixed``: ``"parts"`` times embedding + final norm + LM head alone; ``"model"`` (prefill only,
    default) takes the full model's measured forward minus the sum of its layers' entries, so the
    glue a layer-by-layer timing misses (rotary tables, masks, Python between layers) is counted
    once and the table reproduces the full model's measured latency; both are kept in ``extra``.
    """
    if fixed not in ("model", "parts"):
        raise ValueError(f"fixed={fixed!r} must be 'model' or 'parts'")
    from anybudget.measure import latency

    workload = workload or Workload()
    model = em.model
    p = next(model.parameters())
    dev, dt, s = p.device, workload.torch_dtype, em.shape
    if p.dtype != dt:
        raise ValueError(f"workload dtype={workload.dtype} but the model is {p.dtype}; cast the model first")
    B, S = workload.batch, workload.seq
    T = S if workload.mode == "prefill" else 1
    pos = torch.arange(S - T, S, device=dev)[None].expand(B, T)
    x = torch.randn(B, T, s["hidden"], device=dev, dtype=dt)
    cos_sin = model.model.rotary_emb(x, pos)
    cache = None
    layers = decoder_layers(model)
    if workload.mode == "decode":
        past = {}
        for li in range(len(layers)):
            for g in em.kv_choices:
                kv = torch.randn(B, g, S, s["head_dim"], device=dev, dtype=dt)
                past[(li, g)] = (kv, kv.clone())
        cache = _PastCache(past)
    # transformers renamed the layer's past_key_values argument to cache (5.2x); pass what it takes
    params = inspect.signature(layers[0].forward).parameters
    cache_kw = {} if cache is None else {("cache" if "cache" in params else "past_key_values"): cache}
    timed = range(len(layers)) if per_layer else range(1)
    per = []
    was_training = model.training
    model.eval()
    device = "cuda" if dev.type == "cuda" else "cpu"
    try:
        bar = tqdm(total=len(timed) * len(em.kv_choices) * len(em.mlp_choices), desc="latency table", disable=quiet)
        for li in timed:
            rows = []
            for g in em.kv_choices:
                row = []
                for w in em.mlp_choices:
                    sub = em.full().layers[:li] + (LayerConfig(g, w),) + em.full().layers[li + 1:]
                    with em.use(SubnetConfig(sub)):
                        t = latency(layers[li], x, position_embeddings=cos_sin, position_ids=pos, **cache_kw,
                                    warmup=warmup, repeat=repeat, device=device)
                    row.append(t.median_s)
                    bar.update()
                rows.append(row)
            per.append(rows)
        bar.close()
        ids = torch.randint(0, s["vocab"], (B, T), device=dev)

        def fixed_part():
            h = model.model.embed_tokens(ids)
            return model.lm_head(model.model.norm(h))

        parts = latency(fixed_part, warmup=warmup, repeat=repeat, device=device).median_s
        whole = None
        if fixed == "model" and workload.mode == "prefill":
            with em.use(em.full()):
                whole = latency(lambda: model(input_ids=ids, use_cache=False), warmup=warmup, repeat=repeat,
                                device=device).median_s
    finally:
        model.train(was_training)
    if not per_layer:
        per = per * len(layers)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    raw = per
    if monotone:
        # choices are sorted widest first: a reversed cumulative max along both axes
        t = torch.tensor(per, dtype=torch.float64).flip(1, 2).cummax(1).values.cummax(2).values.flip(1, 2)
        per = t.tolist()
    layers_full = sum(row[0][0] for row in per)
    from_model = whole is not None and whole > layers_full
    fixed_s = whole - layers_full if from_model else parts
    extra = {"raw": raw, "monotone": monotone, "warmup": warmup, "repeat": repeat, "fixed_parts_s": parts,
             "full_model_s": whole, "fixed_from": "model" if from_model else "parts"}
    return CostTable("latency", fixed_s, per, em.kv_choices, em.mlp_choices, asdict(workload), name, extra)
