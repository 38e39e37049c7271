import subprocess
import sys
import time

from anybudget import cli


def test_help_is_instant_and_does_not_import_torch():
    code = (
        "import sys, io, contextlib\n"
        "from anybudget import cli\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: cli.main(['--help'])\n"
        "    except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
        "assert 'kv' in buf.getvalue() and 'demo' in buf.getvalue()\n"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    assert time.perf_counter() - t0 < 5


def test_info_prints_versions(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "CUDA" in out and "triton" in out


def test_unknown_command_errors(capsys):
    try:
        cli.main(["frobnicate"])
    except SystemExit as e:
        assert e.code == 2
    assert "invalid choice" in capsys.readouterr().err
