"""benchmarks/readme_commands.py: what it extracts from the README, and a whole run on a tiny repository."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rc():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / "benchmarks/readme_commands.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["readme_commands"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("readme_commands", None)


def test_every_usage_command_of_the_readme_runs_or_says_why_not(rc):
    cmds = rc.plan(rc.parse_readme((ROOT / "README.md").read_text(encoding="utf-8")))
    assert "bootstrap.sh" in cmds[0].text and cmds[0].run  # the first set-up command
    assert all(c.section and not c.section.lower().startswith(("results", "reproduce")) for c in cmds)
    for c in cmds:
        assert (c.run is None) != (c.skip is None), c
        if c.run:
            words = c.run.split()
            assert "DIR" not in words and "held_out.txt" not in words, c.run
    runs = {c.run.split()[1] if c.run.startswith("anybudget") else c.run: c.run for c in cmds if c.run}
    # the slow examples run with the README's own quick setting, appended so that it wins
    assert runs["kv"].endswith("--out kv_eval --num-seqs 1 --seq-len 256 --chunk 32")
    assert [c for c in cmds if "kv eval" in c.text][0].text.count("--policies") == 1  # continuation joined
    assert any("pytest" in c.text and c.skip for c in cmds)


def test_comment_and_quick_parsing(rc):
    assert rc._split_comment('anybudget generate "a # b" --x 1  # note') == ('anybudget generate "a # b" --x 1', "note")
    assert rc._split_comment("echo a#b") == ("echo a#b", "")
    assert rc.quick_args("~1 h on a CPU; quick: --seeds 1 --repeat 1 (~15 s)") == ["--seeds", "1", "--repeat", "1"]
    assert rc.quick_args("no fast setting") == []


def test_a_whole_run_on_a_tiny_repository(rc, tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts/bootstrap.sh").write_text("mkdir -p .venv/bin\n")
    (repo / "README.md").write_text(
        "# t\n\n## Set up\n\n```bash\nbash scripts/bootstrap.sh && echo ready\n```\n\n## Use\n\n```bash\n"
        "echo DIR  # fine; quick: extra\n"
        "sh -c 'echo \"error: --x: bad\" >&2; exit 2'\n"
        "nvidia-smi  # GPU-only\n"
        "python -m pytest -q\n```\n\n## Results\n\n```bash\necho never\n```\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "t"], check=True)
    assert rc.main(["--repo", str(repo), "--out", str(tmp_path / "out")]) == 1  # one command fails
    rec = json.loads((tmp_path / "out/readme_commands.json").read_text())
    rows = {r["readme"]: r for r in rec["metrics"]["commands"]}
    assert rows["bash scripts/bootstrap.sh && echo ready"]["exit_code"] == 0
    assert rows["echo DIR"]["command"] == "echo src/anybudget/assets/reflm extra" and rows["echo DIR"]["exit_code"] == 0
    bad = rows["sh -c 'echo \"error: --x: bad\" >&2; exit 2'"]
    assert bad["exit_code"] == 2 and bad["first_error_line"] == "error: --x: bad" and bad["seconds"] >= 0
    assert rows["nvidia-smi"]["skipped"].startswith("GPU-only") and rows["python -m pytest -q"]["skipped"]
    assert "echo never" not in rows
    m = rec["metrics"]
    assert (m["ran"], m["passed"], m["failed"], m["skipped"]) == (3, 2, 1, 2) and rec["config"]["clone_commit"]
