"""House-keeping rules of the layout (issue 16): benchmarks use the installed package, the
library's demo does not reach into a CLI module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sys_path_edits(path: Path) -> list[str]:
    """Source text of every ``sys.path.insert/append(...)`` call in ``path``."""
    try:
        tree = ast.parse(path.read_text())
    except SyntaxError:  # third-party sources unpacked into git-ignored build folders (Python 2)
        return []
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("insert", "append")
                and ast.unparse(node.func.value) == "sys.path"):
            out.append(ast.unparse(node))
    return out


def test_benchmarks_import_the_installed_package():
    offenders = {}
    for p in sorted((ROOT / "benchmarks").rglob("*.py")):
        edits = [e for e in _sys_path_edits(p) if "src" in e]
        if edits:
            offenders[str(p.relative_to(ROOT))] = edits
    assert not offenders, f"benchmarks put src/ on sys.path instead of using the installed package: {offenders}"


def test_the_rule_sees_an_edit(tmp_path):
    p = tmp_path / "x.py"
    p.write_text('import sys\nsys.path.insert(0, str(ROOT / "src"))\n')
    assert _sys_path_edits(p) == ["sys.path.insert(0, str(ROOT / 'src'))"]


def test_library_code_does_not_import_cli_modules_outside_the_cli():
    pkg = ROOT / "src" / "anybudget"
    bad = []
    for p in sorted(pkg.rglob("*.py")):
        if p.name == "cli.py" or p.name == "__main__.py" or p.name == "cli_types.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and (node.module.endswith(".cli") or node.module == "anybudget.cli"):
                bad.append(f"{p.relative_to(ROOT)}: from {node.module}")
    assert not bad, bad


def test_every_result_record_names_its_device_config_and_commit():
    import json

    missing = {}
    for p in sorted((ROOT / "benchmarks" / "results").rglob("*.json")):
        d = json.loads(p.read_text())
        gaps = [k for k in ("device", "config", "commit") if not d.get(k)]
        if gaps:
            missing[str(p.relative_to(ROOT))] = gaps
    assert not missing, missing


def test_test_modules_and_helpers_have_unique_basenames():
    """The test folders have no __init__.py, so pytest imports each file by its basename: two
    ``test_static.py`` in different folders stop collection (a fresh clone's CI did)."""
    seen: dict[str, Path] = {}
    clashes = []
    for p in sorted((ROOT / "tests").rglob("*.py")):
        if p.name == "conftest.py" or "__pycache__" in p.parts:
            continue
        if p.name in seen:
            clashes.append(f"{seen[p.name].relative_to(ROOT)} and {p.relative_to(ROOT)}")
        seen.setdefault(p.name, p)
    assert not clashes, "same basename: " + "; ".join(clashes)
