import os
from pathlib import Path

import pytest

CSV = Path(os.environ.get("ANYBUDGET_NB201_CSV", Path(__file__).resolve().parents[3] / "shared/data/nasbench201/nats_bench.csv"))


@pytest.fixture(scope="session")
def csv_path():
    """The shared CSV where present (full columns), else the compressed table the package ships."""
    from anybudget.nas.benchmark import PACKAGED

    if CSV.is_file():
        return CSV
    if PACKAGED.is_file():
        return PACKAGED
    pytest.skip(f"NAS-Bench-201 table not found at {CSV} nor {PACKAGED} (set ANYBUDGET_NB201_CSV)")


@pytest.fixture(scope="session")
def table():
    """The real NAS-Bench-201 table: the shared CSV where present, else the one the package ships."""
    from anybudget.nas.benchmark import PACKAGED, NB201Table

    return NB201Table.load(CSV if CSV.is_file() else PACKAGED)
