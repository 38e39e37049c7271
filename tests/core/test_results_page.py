"""benchmarks/results/: records only, one folder per module; the results page and the README's
results block are what the records render to (regenerated here, so neither can go stale)."""

import importlib
import json
import sys
from pathlib import Path

import pytest

from anybudget.io import RESULT_MODULES, results_module

ROOT = Path(__file__).resolve().parents[2]
RES = ROOT / "benchmarks" / "results"
RECORD_KEYS = {"name", "config", "metrics", "device", "torch", "transformers", "commit", "date"}


@pytest.fixture(scope="module")
def bench():
    saved = sys.path[:]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield lambda name: importlib.import_module(name)
    finally:  # benchmarks/report.py must not shadow another folder's report.py (benchmarks/prune/) later
        sys.path[:] = saved
        for m in ("results_page", "report", "report_lm_elastic", "report_prune_splat", "report_ssm"):
            sys.modules.pop(m, None)


def test_results_hold_records_only_each_in_its_module_folder():
    files = [p for p in RES.rglob("*") if p.is_file()]
    assert files and {p.suffix for p in files} <= {".json", ".png", ".md"}
    assert [p.relative_to(RES).as_posix() for p in files if p.suffix == ".md"] == ["README.md"]
    for p in files:
        if p.suffix == ".md":
            continue
        rel = p.relative_to(RES)
        assert rel.parts[0] in RESULT_MODULES, rel
        owner = rel.parts[1] if len(rel.parts) > 2 else p.stem  # a sub-folder is named like a record
        assert results_module(owner) == rel.parts[0], rel
        if p.suffix == ".json":
            rec = json.loads(p.read_text())
            assert RECORD_KEYS <= set(rec), f"{rel} is not a results record (anybudget.io.write_results)"


def test_results_page_is_what_the_records_render_to(bench):
    page = bench("results_page")
    assert (RES / "README.md").read_text(encoding="utf-8") == page.render(), "run: python benchmarks/results_page.py"


def test_readme_results_block_is_what_the_records_render_to(bench):
    report = bench("report")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split(report.BEGIN, 1)[1].split(report.END, 1)[0]
    assert block == "\n" + report.render() + "\n", "run: python benchmarks/report.py --readme"


def test_every_link_of_the_page_and_the_readme_block_exists(bench):
    import re

    report = bench("report")
    page = (RES / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)\)", page):
        assert (RES / target).is_file(), target
    for target in re.findall(r"\]\((benchmarks/[^)]+)\)|`(benchmarks/results/[^`]+)`", report.render()):
        assert (ROOT / (target[0] or target[1])).is_file(), target
