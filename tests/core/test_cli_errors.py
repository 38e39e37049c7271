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


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "ok.txt").write_text("hello world\n" * 20, encoding="utf-8")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (d / "not_a_table.csv").write_text("a,b\n1,2\n")
    (d / "afile").write_text("x")
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text("{}")  # the folders' marker files are all the argument checks read
    (d / "el").mkdir()
    (d / "el" / "elastic.json").write_text("{}")
    return d


# (argv with {d} for the inputs folder, words the one error line must contain)
BAD = [
    (["generate", "--budget", "kv=150%", "hi"], ["--budget", "kv=150%"]),
    (["generate", "--budget", "", "hi"], ["--budget", "empty"]),
    (["generate", "--max-new-tokens", "0", "hi"], ["--max-new-tokens"]),
    (["generate", "--recent-ratio", "1.5", "hi"], ["--recent-ratio", "[0, 1]"]),
    (["generate", "--sink-tokens", "-1", "hi"], ["--sink-tokens"]),
    (["generate", ""], ["prompt is empty"]),
    (["kv", "eval", "--text", "{d}/latin1.txt"], ["--text", "not UTF-8"]),
    (["kv", "eval", "--text", "{d}/missing.txt"], ["--text", "does not exist"]),
    (["kv", "eval", "--text", "{d}/ok.txt", "--budgets", ""], ["--budgets", "empty"]),
    (["kv", "eval", "--text", "{d}/ok.txt", "--budgets", "kv=0%"], ["--budgets", "kv=0%"]),
    (["kv", "eval", "--text", "{d}/ok.txt", "--policies", ""], ["--policies", "empty"]),
    (["kv", "eval", "--text", "{d}/ok.txt", "--seq-len", "0"], ["--seq-len"]),
    (["kv", "eval", "--text", "{d}/ok.txt", "--chunk", "0"], ["--chunk"]),
    (["kv", "eval", "--text", "{d}/ok.txt", "--batch-size", "0"], ["--batch-size"]),
    (["kv", "eval", "--text", "{d}/ok.txt", "--num-seqs", "0"], ["--num-seqs"]),
    (["kv", "eval", "--text", "{d}/ok.txt", "--out", "/proc/nope/kv"], ["--out", "not writable"]),
    (["kv", "eval", "--text", "{d}/ok.txt", "--out", "{d}/afile/kv"], ["--out", "not a folder"]),
    (["ssm", "mqar", "--steps", "0"], ["--steps"]),
    (["ssm", "mqar", "--eval-every", "0"], ["--eval-every"]),
    (["ssm", "mqar", "--out", "{d}/afile/runs"], ["--out", "not a folder"]),
    (["ssm", "mqar", "--checkpoint", "{d}/afile/ck.pt"], ["--checkpoint"]),
    (["ssm", "mqar", "--vocab-size", "64", "--max-seq-len", "64"], ["--vocab-size", "--max-seq-len"]),
    (["ssm", "diagnose", "--checkpoint", "{d}/missing.pt"], ["--checkpoint", "does not exist"]),
    (["nas", "search", "--table", "{d}/missing.csv"], ["--table", "does not exist"]),
    (["nas", "search", "--budget", ""], ["--budget", "empty"]),
    (["nas", "search", "--repeat", "0"], ["--repeat"]),
    (["nas", "search", "--out", "/proc/nope/s.json"], ["--out", "not writable"]),
    (["nas", "correlate", "--ntk-batch", "0"], ["--ntk-batch"]),
    (["nas", "correlate", "--table", "{d}/not_a_table.csv"], ["missing column"]),
    (["prune", "imp", "--model", "m", "--task", "mlm", "--out", "{d}/afile/run", "--rounds", "1"], ["--out"]),
    (["prune", "report", "--mask", "{d}/missing.safetensors"], ["--mask", "does not exist"]),
    (["splat", "decompress", "{d}/missing.lgz", "--out", "x.ply"], ["scene", "does not exist"]),
    (["splat", "compress", "{d}/afile", "--views", "{d}", "--out", "x.lgz", "--vq-ratio", "2"], ["--vq-ratio"]),
    (["generate", "--device", "tpu", "hi"], ["--device", "tpu"]),
    (["kv", "eval", "--text", "{d}/ok.txt", "--device", "cuda:99"], ["--device", "cuda:99"]),
    (["ssm", "mqar", "--device", "cuda:99"], ["--device", "cuda:99"]),
    (["demo", "--device", "cuda:99"], ["--device", "cuda:99"]),
    # flags generated from the config dataclasses: checked by argparse or by the dataclass, named
    (["elastic", "build", "--model", "{d}/hf", "--text", "{d}/ok.txt", "--out", "el", "--train-steps", "x"], ["--train-steps"]),
    (["elastic", "build", "--model", "{d}/hf", "--text", "{d}/ok.txt", "--out", "el", "--batch", "0"], ["--batch"]),
    (["elastic", "build", "--model", "{d}/hf", "--text", "{d}/ok.txt", "--out", "el", "--heldout-fraction", "1.5"],
     ["--heldout-fraction", "heldout_fraction=1.5"]),
    (["elastic", "build", "--model", "{d}/hf", "--text", "{d}/ok.txt", "--out", "el", "--train-homogeneous", "maybe"],
     ["--train-homogeneous", "true/false"]),
    (["elastic", "eval", "--model", "{d}/el", "--text", "{d}/ok.txt", "--out", "ev", "--seq", "0"], ["--seq"]),
    (["prune", "imp", "--model", "m", "--task", "mlm", "--out", "run", "--schedule", "cubic"], ["--schedule"]),
    (["prune", "imp", "--model", "m", "--task", "mlm", "--out", "run", "--rate", "1.5"], ["--rate"]),
    (["splat", "train", "--views", "{d}", "--out", "t.ply", "--densify-until", "-1"], ["--densify-until"]),
    (["nas", "search", "--init", "xavier"], ["--init"]),
    (["nas", "search", "--out", "s.json", "--checkpoint", "{d}/afile/ck.json"], ["--checkpoint"]),
    (["nas", "correlate", "--zc-batch", "-3"], ["--zc-batch"]),
    (["elastic", "export", "--model", "{d}/missing_el", "--budget", "latency=20ms", "--out", "small"], ["--model"]),
    (["elastic", "export", "--model", "{d}/el", "--budget", "speed=fast", "--out", "small"], ["--budget"]),
    (["elastic", "export", "--model", "{d}/hf", "--budget", "latency=20ms", "--out", "small"], ["--model", "elastic.json"]),
    (["prune", "apply", "--mask", "{d}/missing.safetensors", "--model", "{d}", "--out", "pruned"], ["--mask", "does not exist"]),
    (["splat", "eval", "{d}/missing.ply", "--views", "{d}"], ["does not exist"]),
]


# One case per command group also runs in a real subprocess (the user's view: stderr, exit code);
# the rest run in-process, so the whole file stays fast (each subprocess pays the torch import).
SUBPROCESS = {0, 6, 15, 17, 23, 30, 31, 39}


def run_inproc(argv, capsys):
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    cap = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc, cap.out, cap.err)


@pytest.mark.parametrize("i", range(len(BAD)), ids=[" ".join(a[:3]) + " " + w[0] for a, w in BAD])
def test_bad_input_is_one_line_and_writes_nothing(inputs, tmp_path, monkeypatch, capsys, i):
    argv, words = BAD[i]
    argv = [a.replace("{d}", str(inputs)) for a in argv]
    before = sorted(p.name for p in inputs.iterdir())
    if i in SUBPROCESS:
        r = run_cli(*argv, cwd=tmp_path)
    else:
        monkeypatch.chdir(tmp_path)
        r = run_inproc(argv, capsys)
    assert r.returncode in (1, 2), (r.returncode, r.stderr)
    assert_one_line_error(r, *words, code=r.returncode)
    assert list(tmp_path.iterdir()) == [], "a failed command wrote files"
    assert sorted(p.name for p in inputs.iterdir()) == before


def test_debug_shows_the_traceback(inputs, tmp_path):
    argv = ["nas", "correlate", "--table", str(inputs / "not_a_table.csv")]
    r = run_cli(*argv, cwd=tmp_path)
    assert_one_line_error(r, "missing column", code=2)
    r = run_cli(*argv, cwd=tmp_path, env={"ANYBUDGET_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "ValueError" in r.stderr
    r = run_cli(*argv, "--debug", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_missing_nb201_env_table_is_an_error(tmp_path):
    r = run_cli("nas", "search", "--repeat", "1", cwd=tmp_path,
                env={"ANYBUDGET_NB201_CSV": str(tmp_path / "nope.csv")})
    assert_one_line_error(r, "nope.csv", code=2)


@pytest.mark.parametrize("argv, extra", [
    (["kv", "eval", "--text", "{d}/ok.txt"], "anybudget[plot]"),
    (["ssm", "diagnose"], "anybudget[plot]"),
    (["nas", "correlate"], "anybudget[nas]"),
    (["nas", "search"], "anybudget[nas]"),
])
def test_missing_extra_is_named_before_any_work(inputs, tmp_path, monkeypatch, capsys, argv, extra):
    import importlib.util

    real = importlib.util.find_spec
    hidden = {"matplotlib", "scipy", "skimage"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    monkeypatch.chdir(tmp_path)
    r = run_inproc([a.replace("{d}", str(inputs)) for a in argv], capsys)
    assert_one_line_error(r, extra, code=1)
    assert list(tmp_path.iterdir()) == []


def test_dataclass_flags_take_their_defaults_from_the_dataclass(capsys):
    import dataclasses

    from anybudget.cli_types import add_dataclass_args, dataclass_from_args, positive_int

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        steps: int = 300
        lr: float = 1e-2
        mode: str = "abs"
        fused: bool = True
        fractions: tuple = (1.0, 0.5)
        rate: float | None = None

        def __post_init__(self):
            if self.lr > 1:
                raise ValueError(f"lr={self.lr} must be <= 1")

    p = argparse.ArgumentParser()
    add_dataclass_args(p, Cfg, "r-", skip=("mode",), overrides={"steps": {"type": positive_int, "help": "steps"}})
    assert dataclass_from_args(Cfg, p.parse_args([]), "r_") == Cfg()
    got = dataclass_from_args(Cfg, p.parse_args(["--r-steps", "7", "--r-fused", "false", "--r-fractions", "1,0.25"]), "r_")
    assert got == Cfg(steps=7, fused=False, fractions=(1.0, 0.25))
    assert "(default 300)" in p.format_help() and "--r-mode" not in p.format_help() and "--r-rate" not in p.format_help()
    with pytest.raises(ValueError, match=r"^--r-lr: lr=2.0 must be <= 1$"):
        dataclass_from_args(Cfg, p.parse_args(["--r-lr", "2"]), "r_")
    with pytest.raises(SystemExit):
        p.parse_args(["--r-steps", "0"])
    assert "argument --r-steps: 0 must be a positive integer" in capsys.readouterr().err


def test_a_commands_own_error_exits_2_with_its_message(capsys):
    """``raise SystemExit("error: ...")`` inside a command: one line on stderr and exit code 2 (a
    user error), while the exception still carries the message for callers of ``main()``."""
    with pytest.raises(SystemExit, match="error: --seeds=0 must be >= 1") as ei:
        cli._run_command(_ns(SystemExit("error: --seeds=0 must be >= 1")), debug=False)
    assert ei.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --seeds=0 must be >= 1"
