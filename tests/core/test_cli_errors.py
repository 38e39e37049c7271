"""Bad inputs end in one short ``error:`` line on stderr, a non-zero exit, no traceback, nothing written."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anybudget import cli

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_cli(*args, env=None, cwd=None):
    e = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.pop("ANYBUDGET_DEBUG", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "anybudget.cli", *args], check=False, capture_output=True, text=True,
                          env=e, cwd=cwd, timeout=120)


def assert_one_line_error(r, *words, code=2):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:"), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])


def _ns(exc):
    def func(args):
        raise exc
    return argparse.Namespace(func=func)


@pytest.mark.parametrize("exc, code, words", [
    (ValueError("seq_len=0 must be >= 1"), 2, ["seq_len=0"]),
    (FileNotFoundError(2, "No such file or directory", "x.csv"), 2, ["x.csv"]),
    (PermissionError(13, "Permission denied", "/out"), 2, ["Permission denied"]),
    (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "bad"),
     2, ["not UTF-8"]),
    (ImportError("needs scipy: pip install 'anybudget[nas]'"), 2, ["anybudget[nas]"]),
    (RuntimeError("size mismatch\nmore lines\nand more"), 1, ["size mismatch", "--debug", "RuntimeError"]),
    (ZeroDivisionError("division by zero"), 1, ["ZeroDivisionError", "--debug"]),
])
def test_boundary_prints_one_line(capsys, exc, code, words):
    assert cli._run_command(_ns(exc), debug=False) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    for w in words:
        assert w in err


def test_boundary_budget_error_is_a_user_error(capsys):
    from anybudget.budget import Budget, BudgetError

    with pytest.raises(BudgetError) as ei:
        Budget("kv=150%")
    assert cli._run_command(_ns(ei.value), debug=False) == 2
    assert "kv=150%" in capsys.readouterr().err


def test_boundary_debug_reraises_and_system_exit_keeps_its_code():
    with pytest.raises(ValueError):
        cli._run_command(_ns(ValueError("x")), debug=True)
    with pytest.raises(SystemExit) as ei:
        cli._run_command(_ns(SystemExit(3)), debug=False)
    assert ei.value.code == 3


def test_parser_errors_are_one_line():
    r = run_cli("frobnicate")
    assert_one_line_error(r, "frobnicate")
