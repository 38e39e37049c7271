"""What a candidate (elastic sub-network x KV policy x KV budget) costs and how good it is, predicted.

Memory (analytic, bytes, the peak of one ``generate`` call of the workload)::

    weights     = params(subnet) * bytes_per_value              (tied embeddings counted once)
    kv_used     = layers * 2 * batch * kv_groups * head_dim * bytes * kept(seen_end)
    kv_alloc    = what the cache allocates for that (slot metadata, growth head-room, one layer
                  holding the whole prompt before its first eviction), an upper bound
    activations = one layer's prefill workspace at the sub-network's widths, H2O's chunked
                  attention logits, the last position's logits
    mem         = weights + kv_alloc + activations + mem_correction

``mem_correction`` is fitted on the device like the latency overheads (``plan.decode_latency_model``):
the measured peak minus the analytic sum for the full model with each cache kind (full, and each
policy at its smallest budget), and for a sub-network scaled by its share of the KV groups (what
the analytic terms miss is held by KV-sized tensors: a layer's cache copied while it grows, the
whole prompt's keys before eviction; static serving keeps the gap unscaled). Never negative; zero
without a measurement.

Latency (seconds per decoding step, i.e. per new token of every sequence in the batch)::

    step = scale * (fixed + sum_l t_l(g, w, ctx)) + overhead_generate + layers * overhead_policy

``t_l(g, w, ctx)`` is the elastic latency table measured in decode mode (``anybudget.elastic.
measure_latency_table``, Flextron Sec. 3.3) at two cached lengths and interpolated linearly in the
number of cached tokens the layer attends over (``ctx`` = the mean kept length over the decoding
steps: ``ceil(f * (prompt + new/2))`` at a KV budget ``f``). The overheads are fitted on the device:
``overhead_generate`` from the full model with the full cache (or, when the tables add up to more
than that measurement, ``scale`` < 1 instead), ``overhead_policy`` (per layer and step: the cache's
eviction bookkeeping, >= 0) from the full model at each policy's smallest budget.

Static serving (``serve="static"``, the fixed-slot caches whose decoding steps ``generate``
compiles, CUDA graphs; ``anybudget.kv.static_slots``): the full cache is transformers'
``StaticCache`` of ``prompt + new + 1`` slots, a policy keeps ``capacity + 1`` slots with
``capacity = ceil(f * (prompt + new))``, and its prompt is prefilled in row micro-batches of at most
``PREFILL_TOKENS`` tokens. A compiled step has no host overhead left to model, so its latency is
linear in the bytes it reads, fitted per cache kind from two compiled measurements::

    step = t0[kind] + s[kind] * (weights + kv_read)      kv_read: every slot's keys, values (+ slot metadata)

Quality (assumption, stated): eviction adds the same negative log-likelihood to every sub-network,
so ``ppl(c) = ppl_elastic(subnet) * ratio_kv(policy, budget)``, with ``ppl_elastic`` measured per
sub-network (full cache) and ``ratio_kv`` measured on the full model (ppl with eviction / full),
both on the workload's own protocol (new tokens after a prefilled prompt, ``plan.quality``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

__all__ = [
    "Candidate",
    "LatencyModel",
    "Quality",
    "ServingWorkload",
    "enumerate_candidates",
    "kept_tokens",
    "memory_terms",
    "predict",
    "step_bytes",
]

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SCORE_POLICIES = ("h2o", "random")  # policies whose prefill attention materialises chunked logits
SERVE_MODES = ("eager", "static")
PREFILL_TOKENS = 65536  # anybudget.kv.KVBudgetCache's default prefill_batch_tokens
SLOT_META = 4 + 8 + 1  # float32 score, int64 position, bool validity per slot


@dataclass(frozen=True)
class ServingWorkload:
    """What the plan serves: ``batch`` concurrent sequences, each a ``prompt``-token prompt followed
    by ``new_tokens`` generated tokens, weights and cache in ``dtype``."""

    prompt: int = 2048
    new_tokens: int = 256
    batch: int = 8
    dtype: str = "bfloat16"

    def __post_init__(self):
        for k, low in (("prompt", 1), ("new_tokens", 2), ("batch", 1)):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{k}={v!r} must be an integer >= {low}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {', '.join(DTYPE_BYTES)}")

    @property
    def bytes_per_value(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def seen_end(self) -> int:
        """Tokens a cache has seen after the last step (the last new token is never fed back)."""
        return self.prompt + self.new_tokens - 1


@dataclass(frozen=True)
class Candidate:
    """A uniform sub-network (``kv_groups`` KV heads with their query heads, ``mlp_width`` neurons
    in every layer) served with KV ``policy`` at ``kv_percent`` of the tokens seen (100 = full)."""

    kv_groups: int
    mlp_width: int
    policy: str = "full"
    kv_percent: float = 100.0

    @property
    def subnet_label(self) -> str:
        return f"kv{self.kv_groups}/mlp{self.mlp_width}"

    @property
    def kv_label(self) -> str:
        return "full" if self.policy == "full" else f"{self.policy}@{_pct(self.kv_percent)}"

    @property
    def label(self) -> str:
        return f"{self.subnet_label} {self.kv_label}"

    @property
    def kv_budget(self) -> str:
        """The cache's budget string (``anybudget.kv.make_cache(policy, budget)``)."""
        return f"{_pct(self.kv_percent)}"


def _pct(p: float) -> str:
    return f"{int(p)}%" if float(p).is_integer() else f"{p}%"


@dataclass
class Quality:
    """Measured quality: perplexity of each uniform sub-network with the full cache (key
    ``Candidate.subnet_label``) and, on the full model, ppl(policy at budget) / ppl(full cache)
    (key ``Candidate.kv_label``)."""

    elastic_ppl: dict
    kv_ratio: dict
    source: dict = field(default_factory=dict)

    def ppl(self, c: Candidate) -> float:
        if c.subnet_label not in self.elastic_ppl:
            raise KeyError(f"no measured perplexity for sub-network {c.subnet_label}; measured: {sorted(self.elastic_ppl)}")
        ratio = 1.0 if c.policy == "full" else self.kv_ratio.get(c.kv_label)
        if ratio is None:
            raise KeyError(f"no measured KV quality for {c.kv_label}; measured: {sorted(self.kv_ratio)}")
        return float(self.elastic_ppl[c.subnet_label]) * float(ratio)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Quality:
        return cls(dict(d["elastic_ppl"]), dict(d["kv_ratio"]), dict(d.get("source", {})))


def enumerate_candidates(kv_choices, mlp_choices, policies=("h2o", "streaming", "local"),
                         kv_percents=(50.0, 20.0, 10.0), techniques=("elastic", "kv")) -> list[Candidate]:
    """Every uniform sub-network x (full cache, and each policy at each KV budget).

    ``techniques``: ``("elastic", "kv")`` both; ``("elastic",)`` sub-networks with the full cache
    only; ``("kv",)`` the full model (widest choices) with every cache.
    """
    bad = [t for t in techniques if t not in ("elastic", "kv")]
    if bad or not techniques:
        raise ValueError(f"techniques={techniques!r} must be a non-empty subset of ('elastic', 'kv')")
    for p in kv_percents:
        if not 0 < float(p) < 100:
            raise ValueError(f"kv_percents has {p!r}; a KV budget is a percentage in (0, 100) (100 = full cache, always a candidate)")
    kv_choices = tuple(kv_choices) if "elastic" in techniques else (max(kv_choices),)
    mlp_choices = tuple(mlp_choices) if "elastic" in techniques else (max(mlp_choices),)
    caches = [("full", 100.0)]
    if "kv" in techniques:
        caches += [(p, float(f)) for p in policies for f in kv_percents]
    return [Candidate(g, w, p, f) for g in kv_choices for w in mlp_choices for p, f in caches]


def kept_tokens(policy: str, kv_percent: float, seen: int) -> int:
    """Slots a cache keeps per layer and KV head after ``seen`` tokens (``KVBudgetCache._cache_size``)."""
    if policy == "full":
        return seen
    return min(seen, max(1, math.ceil(kv_percent / 100.0 * seen - 1e-9)))


def _headroom(n: int) -> int:
    return max(64, n // 4)  # KVBudgetCache._headroom for percentage budgets


def _check_serve(serve: str) -> None:
    if serve not in SERVE_MODES:
        raise ValueError(f"serve={serve!r} must be one of {', '.join(SERVE_MODES)}")


def memory_terms(shape: dict, params: int, c: Candidate, wl: ServingWorkload, fused_scores: bool = False,
                 serve: str = "eager") -> dict:
    """Bytes of weights, KV cache (used at the end, and allocated at the peak) and activations.

    ``fused_scores``: H2O's attention scores come from the Triton kernels (CUDA with triton), which
    keep no logits; otherwise the PyTorch reference holds one query chunk's float32 logits.
    ``serve="static"``: the fixed-slot caches (module doc).
    """
    _check_serve(serve)
    b, B, P, hd, L = wl.bytes_per_value, wl.batch, wl.prompt, shape["head_dim"], shape["layers"]
    g, w = c.kv_groups, c.mlp_width
    n_rep = shape["heads"] // shape["kv_heads"]
    q, kv = g * n_rep * hd, g * hd
    per_tok = 2 * B * g * hd * b  # keys + values of one token in one layer
    kept = kept_tokens(c.policy, c.kv_percent, wl.seen_end)
    kv_used = L * per_tok * kept
    rows = B  # rows prefilled at once
    if serve == "static":
        if c.policy == "full":  # StaticCache: prompt + new + 1 slots, written in place
            kv_alloc = L * per_tok * (wl.prompt + wl.new_tokens + 1)
        else:  # capacity + 1 slots with their metadata; one layer's prompt keys/values of a micro-batch
            rows = min(B, max(1, PREFILL_TOKENS // P))
            cap = kept_tokens(c.policy, c.kv_percent, wl.prompt + wl.new_tokens)
            kv_alloc = L * (cap + 1) * (per_tok + B * g * SLOT_META) + 2 * rows * g * hd * b * P
    elif c.policy == "full":
        # DynamicCache concatenates: a layer's old and new tensors coexist for one step
        kv_alloc = kv_used + per_tok * kept
    else:
        # slot metadata (float32 score, int64 position, bool validity) per slot; growth head-room;
        # during prefill one layer holds the whole prompt before it evicts (kv/cache.py)
        slot = per_tok + B * g * (4 + 8 + 1)
        after_prefill = P + _headroom(P)
        small = kept_tokens(c.policy, c.kv_percent, P)
        if after_prefill > 2 * (small + _headroom(small)):
            after_prefill = small + _headroom(small)
        cap = max(after_prefill, kept + _headroom(kept))
        kv_alloc = slot * (L * cap + P + _headroom(P))
    tokens = rows * P
    hidden = shape["hidden"]
    act = tokens * b * (3 * hidden + 2 * q + 2 * kv + 3 * w)
    if c.policy in SCORE_POLICIES and not fused_scores:
        # kv/hf.py: query chunks sized so one chunk's float32 logits stay under 2**26 values
        chunk = max(16, min(1024, (1 << 26) // max(1, rows * g * n_rep * P)))
        act += 2 * 4 * rows * g * n_rep * min(chunk, P) * P
    act += B * shape["vocab"] * (4 + b)  # last position's logits (and their float32 copy)
    weights = params * b
    return {"weights": weights, "kv_used": kv_used, "kv_alloc": kv_alloc, "activations": act,
            "mem": weights + kv_alloc + act}


def step_bytes(shape: dict, params: int, c: Candidate, wl: ServingWorkload) -> dict:
    """Bytes one static decoding step reads: every weight (the tied embedding is the LM head) and
    every cache slot (StaticCache: ``prompt + new + 1``, read masked; a policy: ``capacity + 1``
    slots with their keys, values, score, position and validity)."""
    b, B, L, hd, g = wl.bytes_per_value, wl.batch, shape["layers"], shape["head_dim"], c.kv_groups
    if c.policy == "full":
        kv = L * B * g * (wl.prompt + wl.new_tokens + 1) * 2 * hd * b
    else:
        cap = kept_tokens(c.policy, c.kv_percent, wl.prompt + wl.new_tokens)
        kv = L * B * g * (cap + 1) * (2 * hd * b + SLOT_META + 4)  # the score is read and written
    return {"weights": params * b, "kv": kv, "total": params * b + kv}


@dataclass
class LatencyModel:
    """Decode-step latency (seconds), eager or static.

    ``mode="eager"``: elastic decode tables at two cached lengths + fitted overheads; ``lo`` / ``hi``:
    ``{"ctx": int, "fixed": float, "layer": {"g/w": seconds}}`` for one layer.
    ``mode="static"``: ``linear[kind] = [t0, seconds per byte]`` over :func:`step_bytes`, with
    ``step_inputs = {"shape": ..., "params": {"g/w": count}}`` to compute them.
    """

    layers: int
    lo: dict
    hi: dict
    overhead_generate: float = 0.0
    overhead_policy: dict = field(default_factory=dict)
    device: str = "unknown"
    scale: float = 1.0
    mem_correction: dict = field(default_factory=dict)  # cache kind -> bytes at ``mem_groups`` KV groups
    mem_groups: int = 1
    mode: str = "eager"
    linear: dict = field(default_factory=dict)
    step_inputs: dict = field(default_factory=dict)

    def mem_extra(self, c: Candidate) -> float:
        """Measured-minus-analytic peak bytes for ``c``'s cache kind (>= 0), scaled by its KV groups
        (eager: the gap is KV-sized copies); static caches copy nothing, their gap (masks, workspace)
        is kept whole, an upper bound for a smaller sub-network."""
        extra = max(0.0, self.mem_correction.get(c.policy, 0.0))  # cache kind = policy ("full" too)
        return extra if self.mode == "static" else extra * c.kv_groups / max(1, self.mem_groups)

    def layer_time(self, g: int, w: int, ctx: float) -> float:
        k = f"{g}/{w}"
        t0, t1 = self.lo["layer"][k], self.hi["layer"][k]
        c0, c1 = self.lo["ctx"], self.hi["ctx"]
        return max(0.0, t0 + (t1 - t0) * (ctx - c0) / max(1, c1 - c0))

    def core(self, c: Candidate, wl: ServingWorkload) -> float:
        """The table part: fixed + every layer at the mean kept context (no overheads)."""
        mean_seen = wl.prompt + wl.new_tokens / 2
        ctx = mean_seen if c.policy == "full" else kept_tokens(c.policy, c.kv_percent, math.ceil(mean_seen))
        return self.hi["fixed"] + self.layers * self.layer_time(c.kv_groups, c.mlp_width, ctx)

    def step(self, c: Candidate, wl: ServingWorkload) -> float:
        if self.mode == "static":
            if c.policy not in self.linear:
                raise KeyError(f"no static latency fit for cache kind {c.policy!r}; fitted: {sorted(self.linear)}")
            t0, slope = self.linear[c.policy]
            params = self.step_inputs["params"][f"{c.kv_groups}/{c.mlp_width}"]
            return t0 + slope * step_bytes(self.step_inputs["shape"], params, c, wl)["total"]
        over = 0.0 if c.policy == "full" else self.layers * self.overhead_policy.get(c.policy, 0.0)
        return self.scale * self.core(c, wl) + self.overhead_generate + over

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LatencyModel:
        return cls(**d)


def predict(c: Candidate, shape: dict, params: int, wl: ServingWorkload, lat: LatencyModel | None,
            quality: Quality, fused_scores: bool = False, serve: str | None = None) -> dict:
    """Predicted numbers for ``c``: memory terms, ``latency_s`` (None without a latency model), ``ppl``.
    ``serve``: default the latency model's mode (eager without one)."""
    serve = serve or (lat.mode if lat is not None else "eager")
    m = memory_terms(shape, params, c, wl, fused_scores, serve)
    if lat is not None and lat.mem_correction:
        m["mem_correction"] = lat.mem_extra(c)
        m["mem"] += m["mem_correction"]
    return {**m, "params": params, "latency_s": lat.step(c, wl) if lat is not None else None,
            "ppl": quality.ppl(c)}
