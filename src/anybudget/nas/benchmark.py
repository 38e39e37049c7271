"""Ground truth: the real NAS-Bench-201 test accuracies, read from a CSV the user points to.

The table (``nats_bench.csv``: 15,625 rows in benchmark index order, columns
``CIFAR10TestAccuracy200Epochs, CIFAR100TestAccuracy200Epochs, ImageNetTestAccuracy200Epochs,
ArchitectureString, UniqueString``) holds seed-averaged 200-epoch test accuracies from
NATS-Bench (Dong et al.). The package ships it; pass another path, or set ``ANYBUDGET_NB201_CSV``.
Nothing is read at import.
"""

from __future__ import annotations

import csv
import lzma
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anybudget.nas.space import NUM_ARCHS, arch_index, format_arch, parse_arch

__all__ = ["DATASETS", "ENV_VAR", "NB201Table", "kendall_spearman"]

ENV_VAR = "ANYBUDGET_NB201_CSV"
# The table ships with the package (xz, 0.3 MB; NATS-Bench's numbers, MIT: see the NOTICE beside it).
PACKAGED = Path(__file__).resolve().parents[1] / "assets" / "nasbench201" / "nats_bench.csv.xz"
DATASETS = ("cifar10", "cifar100", "ImageNet16-120")
_COLUMNS = {
    "cifar10": "CIFAR10TestAccuracy200Epochs",
    "cifar100": "CIFAR100TestAccuracy200Epochs",
    "ImageNet16-120": "ImageNetTestAccuracy200Epochs",
}


@dataclass(frozen=True)
class NB201Table:
    """Test accuracies ``acc[dataset]``: float64 arrays of 15,625, indexed by benchmark index."""

    acc: dict
    arch_strings: tuple[str, ...]
    path: str

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> NB201Table:
        """``path``, else ``$ANYBUDGET_NB201_CSV``, else the table shipped in the package (.csv or .csv.xz)."""
        path = path or os.environ.get(ENV_VAR) or (PACKAGED if PACKAGED.is_file() else None)
        if not path:
            raise FileNotFoundError(
                f"no NAS-Bench-201 table given: pass path=... or set {ENV_VAR} to nats_bench.csv"
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"NAS-Bench-201 table {path!r} does not exist")
        opener = lzma.open if str(path).endswith(".xz") else open
        with opener(path, "rt", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in (*_COLUMNS.values(), "ArchitectureString") if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; expected {list(_COLUMNS.values())} + ArchitectureString")
            rows = list(reader)
        if len(rows) != NUM_ARCHS:
            raise ValueError(f"{path}: {len(rows)} rows; NAS-Bench-201 has {NUM_ARCHS}")
        for i in (0, len(rows) // 2, len(rows) - 1):
            # Spot-check that row i is index i (the whole order is pinned by the tests).
            if arch_index(rows[i]["ArchitectureString"]) != i:
                raise ValueError(f"{path}: row {i} is not benchmark index {i}; is the table in index order?")
        acc = {ds: np.array([float(r[col]) for r in rows]) for ds, col in _COLUMNS.items()}
        return cls(acc, tuple(r["ArchitectureString"] for r in rows), str(path))

    def accuracy(self, arch, dataset: str = "cifar10") -> float:
        """Test accuracy (%) of an arch (index, string or op tuple) on a dataset."""
        if dataset not in self.acc:
            raise ValueError(f"dataset={dataset!r} is not known; choose one of {', '.join(DATASETS)}")
        i = arch if isinstance(arch, int) and not isinstance(arch, bool) else arch_index(arch)
        if not 0 <= i < NUM_ARCHS:
            raise ValueError(f"index={i} is out of range [0, {NUM_ARCHS})")
        return float(self.acc[dataset][i])

    def accuracies(self, arch) -> dict[str, float]:
        return {ds: self.accuracy(arch, ds) for ds in DATASETS}

    def best(self, dataset: str = "cifar10") -> tuple[str, float]:
        i = int(np.argmax(self.acc[dataset]))
        return format_arch(parse_arch(self.arch_strings[i])), float(self.acc[dataset][i])


def kendall_spearman(scores, accuracies) -> tuple[float, float]:
    """Kendall tau-b and Spearman rho of ``scores`` vs ``accuracies`` (NaN/inf scores dropped)."""
    from scipy.stats import kendalltau, spearmanr

    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(accuracies, dtype=np.float64)
    if s.shape != a.shape:
        raise ValueError(f"scores {s.shape} and accuracies {a.shape} differ in shape")
    ok = np.isfinite(s) & np.isfinite(a)
    if ok.sum() < 3:
        raise ValueError(f"only {int(ok.sum())} finite pairs; need at least 3 to correlate")
    return float(kendalltau(s[ok], a[ok]).statistic), float(spearmanr(s[ok], a[ok]).statistic)
