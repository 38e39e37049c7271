"""One way to state a budget: ``Budget("kv=20%")``, ``Budget("mem=6GiB,latency=25ms")``.

A budget is a set of ``key=quantity`` constraints. Each key accepts a fixed family of units:

=========  ==========================================  =========================
key        meaning                                     accepted forms
=========  ==========================================  =========================
kv         KV-cache size                               ``20%`` of the sequence, or ``512`` / ``4K`` tokens
mem        device memory                               ``6GiB``, ``512MB``, ``1024B`` (plain number = bytes)
size       storage size of a file / model              same as ``mem``
latency    wall-clock time of one call                 ``25ms``, ``800us``, ``1.5s``
sparsity   fraction of weights removed                 ``70%``
flops      compute of one forward                      ``100M``, ``2.5G``, ``1e9`` (K/M/G/T = 1e3..1e12)
params     parameter count                             ``20M``, ``1.3G``
=========  ==========================================  =========================

Values are stored in canonical units (percent, bytes, seconds, plain counts), so
``Budget("mem=1GiB") == Budget("mem=1024MiB")`` and ``Budget(str(b)) == b`` for every budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Union

__all__ = ["Budget", "BudgetError", "Quantity", "KEYS"]


class BudgetError(ValueError):
    """A budget string, dict or value is malformed or out of range."""


# Unit tables: suffix -> factor in the canonical unit. Order matters only for formatting.
_BYTES = {
    "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
# Time is divided rather than multiplied so that "25ms" is the float nearest 0.025 exactly.
_TIME_DIV = {"s": 1, "ms": 10**3, "us": 10**6, "µs": 10**6, "ns": 10**9}
_COUNT = {"": 1, "K": 10**3, "k": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}

# key -> (kind, accepted form for error messages). kind in {"kv", "bytes", "time", "percent", "count"}
KEYS: dict[str, tuple[str, str]] = {
    "kv": ("kv", "a percentage in (0, 100] like kv=20% or a token count like kv=512"),
    "mem": ("bytes", "a size like mem=6GiB, mem=512MB or mem=1048576 (bytes)"),
    "size": ("bytes", "a size like size=40MB, size=1.5GiB or size=1048576 (bytes)"),
    "latency": ("time", "a time like latency=25ms, latency=800us or latency=1.5s"),
    "sparsity": ("percent", "a percentage in (0, 100] like sparsity=70%"),
    "flops": ("count", "a count like flops=100M, flops=2.5G or flops=1e9"),
    "params": ("count", "a count like params=20M or params=1.3G"),
}

_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_QTY = re.compile(rf"^\s*({_NUM})\s*([A-Za-zµ%]*)\s*$")


@dataclass(frozen=True)
class Quantity:
    """One budget value in canonical units.

    ``unit`` is ``"%"`` (percent, 0-100), ``"B"`` (bytes), ``"s"`` (seconds) or ``""`` (a count).
    """

    value: float
    unit: str

    @property
    def is_percent(self) -> bool:
        return self.unit == "%"

    @property
    def fraction(self) -> float:
        """A percentage as a fraction in (0, 1]."""
        if not self.is_percent:
            raise BudgetError(f"{self} is not a percentage; it has no fraction")
        return self.value / 100.0

    def of(self, total: int | float) -> float:
        """The absolute amount: ``value% * total`` for a percentage, else the value itself."""
        return self.fraction * total if self.is_percent else self.value

    def __str__(self) -> str:
        return _format(self)


def _num_text(x: float) -> str:
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 2**53):
        return str(int(x))
    return repr(float(x))


def _format(q: Quantity) -> str:
    """Shortest readable text that parses back to exactly ``q``."""
    kind = {"%": "percent", "B": "bytes", "s": "time", "": "count"}[q.unit]
    if q.unit == "%":
        return _num_text(q.value) + "%"
    candidates: list[str] = []
    if q.unit == "B":
        for suf in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "KB"):
            f = _BYTES[suf]
            if q.value >= f and q.value % f == 0:
                candidates.append(_num_text(q.value // f) + suf)
        candidates.append(_num_text(q.value) + "B")
    elif q.unit == "s":
        for suf in ("s", "ms", "us", "ns"):
            candidates.append(_num_text(q.value * _TIME_DIV[suf]) + suf)
    else:
        for suf in ("T", "G", "M", "K"):
            f = _COUNT[suf]
            if q.value >= f and q.value % f == 0:
                candidates.append(_num_text(q.value // f) + suf)
        candidates.append(_num_text(q.value))
    for text in sorted(candidates, key=len):
        try:
            if _parse_value(text, kind) == q.value:
                return text
        except BudgetError:
            continue
    return _num_text(q.value) + q.unit  # canonical form, exact by construction


def _parse_value(text: str, kind: str) -> float:
    """Parse ``text`` as a value of ``kind``; raise BudgetError (without the key) if malformed."""
    m = _QTY.match(text)
    if not m:
        raise BudgetError("malformed")
    num, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(num):
        raise BudgetError("not finite")
    if kind == "percent" or (kind == "kv" and unit == "%"):
        if unit != "%":
            raise BudgetError("unit")
        return num
    if kind == "kv":
        # Token counts may use K/M like other counts ("kv=4K" = 4000 tokens).
        if unit not in ("", "K", "k", "M"):
            raise BudgetError("unit")
        v = num * _COUNT[unit] if unit else num
        return int(v) if float(v).is_integer() and abs(v) < 2**53 else v
    if kind == "bytes":
        if unit == "":
            unit = "B"
        if unit not in _BYTES:
            raise BudgetError("unit")
        v = num * _BYTES[unit]
        return int(round(v)) if abs(v) < 2**63 else v
    if kind == "time":
        if unit not in _TIME_DIV:
            raise BudgetError("unit")
        return num / _TIME_DIV[unit]
    if kind == "count":
        if unit not in _COUNT:
            raise BudgetError("unit")
        v = num * _COUNT[unit] if _COUNT[unit] != 1 else num
        return int(v) if float(v).is_integer() and abs(v) < 2**53 else v
    raise AssertionError(kind)


def _unit_of(kind: str, text_or_value) -> str:
    if kind == "percent":
        return "%"
    if kind == "kv":
        return "%" if isinstance(text_or_value, str) and text_or_value.strip().endswith("%") else ""
    return {"bytes": "B", "time": "s", "count": ""}[kind]


def _make(key: str, raw) -> Quantity:
    if key not in KEYS:
        raise BudgetError(
            f"unknown budget key {key!r}; known keys: {', '.join(sorted(KEYS))} "
            "(e.g. 'kv=20%', 'mem=6GiB,latency=25ms', 'sparsity=70%', 'size=40MB', 'flops=100M')"
        )
    kind, form = KEYS[key]
    if isinstance(raw, Quantity):
        raw = str(raw)
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise BudgetError(f"{key}={raw!r} is not a number or string; {key} takes {form}")
    if isinstance(raw, (int, float)):
        if kind in ("percent", "time"):
            raise BudgetError(f"{key}={raw!r} has no unit; {key} takes {form}")
        text = repr(raw)
    else:
        text = raw
    try:
        value = _parse_value(text, kind)
    except BudgetError:
        raise BudgetError(f"{key}={text.strip()} is not valid; {key} takes {form}") from None
    unit = _unit_of(kind, text)
    if value < 0 or (value == 0):
        raise BudgetError(f"{key}={text.strip()} must be positive; {key} takes {form}")
    if unit == "%" and not (0 < value <= 100):
        raise BudgetError(f"{key}={text.strip()} is out of range; {key} takes {form}")
    if key == "kv" and unit == "" and not float(value).is_integer():
        raise BudgetError(f"{key}={text.strip()} is not a whole token count; {key} takes {form}")
    return Quantity(value, unit)


BudgetLike = Union["Budget", str, Mapping[str, object], None]


class Budget(Mapping[str, Quantity]):
    """A device budget: a read-only mapping from key (``kv``, ``mem``, ...) to :class:`Quantity`.

    >>> b = Budget("mem=6GiB,latency=25ms")
    >>> b["mem"].value, b.latency.value
    (6442450944, 0.025)
    >>> Budget(str(b)) == b
    True
    """

    __slots__ = ("_items",)

    def __init__(self, spec: BudgetLike = None, **kwargs):
        items: dict[str, Quantity] = {}
        if isinstance(spec, Budget):
            items.update(spec._items)
        elif isinstance(spec, str):
            for part in spec.split(","):
                if not part.strip():
                    if spec.strip():
                        raise BudgetError(f"empty entry in budget {spec!r}; write key=value pairs separated by commas")
                    continue
                if "=" not in part:
                    raise BudgetError(
                        f"budget entry {part.strip()!r} has no '='; write key=value, "
                        f"e.g. 'kv=20%' (keys: {', '.join(sorted(KEYS))})"
                    )
                key, _, val = part.partition("=")
                key = key.strip()
                if key in items:
                    raise BudgetError(f"budget key {key!r} is given twice in {spec!r}")
                items[key] = _make(key, val)
        elif isinstance(spec, Mapping):
            for key, val in spec.items():
                items[str(key)] = _make(str(key), val)
        elif spec is not None:
            raise BudgetError(
                f"budget must be a string like 'kv=20%', a dict or a Budget, not {type(spec).__name__}"
            )
        for key, val in kwargs.items():
            items[key] = _make(key, val)
        object.__setattr__(self, "_items", dict(sorted(items.items(), key=lambda kv: list(KEYS).index(kv[0]))))

    # Mapping protocol
    def __getitem__(self, key: str) -> Quantity:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getattr__(self, key: str) -> Quantity | None:
        if key.startswith("_"):
            raise AttributeError(key)
        if key in KEYS:
            return self._items.get(key)
        raise AttributeError(f"Budget has no key {key!r}; known keys: {', '.join(sorted(KEYS))}")

    def __setattr__(self, key, value):
        raise AttributeError("Budget is immutable")

    def __eq__(self, other) -> bool:
        if isinstance(other, (str, Mapping)) and not isinstance(other, Budget):
            try:
                other = Budget(other)
            except BudgetError:
                return False
        return isinstance(other, Budget) and self._items == other._items

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self._items.items())

    def __repr__(self) -> str:
        return f"Budget({str(self)!r})"

    def require(self, key: str) -> Quantity:
        """The quantity for ``key``; a BudgetError naming the key's form if it is missing."""
        if key not in KEYS:
            raise BudgetError(f"unknown budget key {key!r}; known keys: {', '.join(sorted(KEYS))}")
        if key not in self._items:
            raise BudgetError(f"this budget ({self or 'empty'}) has no {key!r}; give {KEYS[key][1]}")
        return self._items[key]
