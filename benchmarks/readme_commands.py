"""Run every shell command of README.md's usage blocks in a fresh clone, as a new user would.

1. ``git clone`` the given repository into a temporary folder (nothing of this checkout leaks in:
   no PYTHONPATH, no venv of ours);
2. run the README's first set-up command there (``bash scripts/bootstrap.sh && ...``: a fresh
   ``.venv`` from PyPI; the torch pin is what ``scripts/bootstrap.sh`` picks, or ``--torch`` /
   the ``ANYBUDGET_TORCH`` environment variable it reads);
3. run each command of the fenced ``bash`` blocks before ``## Results`` with ``.venv/bin`` first on
   PATH, the README's placeholders filled in (``DIR``: the embedded reference LM, ``held_out.txt``:
   its held-out sample), and the README's fast setting appended where a line gives one in its
   comment (``# ~1 h on a 2-core CPU; quick: --seeds 1 --repeat 1``: later flags win in argparse).

Skipped: lines whose comment says ``GPU-only``, and those of :data:`SKIP` (with the reason).
Writes ``<out>/readme_commands.json`` (a results record: each command, exit code, seconds and
first error line). ``--list`` prints what would run, and runs nothing.

    PYTHONPATH=src python benchmarks/readme_commands.py --repo . --out benchmarks/results/core
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDERS = {"DIR": "src/anybudget/assets/reflm", "held_out.txt": "src/anybudget/assets/reflm/sample.txt"}
# (regular expression on the command, reason): commands this script does not run
SKIP = [
    (r"\bpytest\b", "the whole test suite (CI runs it: about 20 min on 2 cores)"),
]
ERROR_LINE = re.compile(r"^(error:|Traceback|Killed)|Error\b|\berror\b", re.I)


@dataclass
class Command:
    text: str  # as in the README (placeholders, no comment)
    comment: str  # the README's trailing comment
    section: str  # the README section it is in
    run: str | None = None  # the command line that runs (None: skipped)
    skip: str | None = None  # why it is skipped


def _split_comment(line: str) -> tuple[str, str]:
    """``cmd  # comment`` -> (cmd, comment), a ``#`` inside quotes or a word being no comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def parse_readme(text: str) -> list[Command]:
    """The commands of the fenced ``bash`` blocks before ``## Results``, continuation lines joined."""
    cmds: list[Command] = []
    section, in_block, pending, pending_comment = "", False, "", ""
    for line in text.splitlines():
        if not in_block and line.startswith("## "):
            section = line[3:].strip()
            if section.lower().startswith("results"):
                break
            continue
        if line.strip().startswith("```"):
            in_block = (not in_block) and line.strip() in ("```bash", "```sh", "```shell")
            continue
        if not in_block or not line.strip():
            continue
        cmd, comment = _split_comment(line)
        if cmd.endswith("\\"):
            pending += cmd[:-1].strip() + " "
            pending_comment += comment + " " if comment else ""
            continue
        full = (pending + cmd.strip()).strip()
        comment = (pending_comment + comment).strip()
        pending, pending_comment = "", ""
        if full:
            cmds.append(Command(full, comment, section))
    return cmds


def quick_args(comment: str) -> list[str]:
    """The ``quick: ARGS`` of a README comment (up to a ``(``, ``;`` or the end)."""
    m = re.search(r"quick:\s*([^(;]*)", comment)
    return shlex.split(m.group(1)) if m else []


def plan(cmds: list[Command]) -> list[Command]:
    """Decide for each command: skipped (and why) or the line that runs."""
    for c in cmds:
        if re.search(r"\bGPU[- ]only\b", c.comment, re.I):
            c.skip = "GPU-only (marked in the README)"
            continue
        hit = next((why for pat, why in SKIP if re.search(pat, c.text)), None)
        if hit:
            c.skip = hit
            continue
        lex = shlex.shlex(c.text, posix=True, punctuation_chars=True)  # keeps && || ; | as tokens
        lex.whitespace_split = True
        words = [w if set(w) <= set("&|;") else shlex.quote(PLACEHOLDERS.get(w, w)) for w in lex]
        extra = quick_args(c.comment)
        c.run = " ".join(words) + (" " + shlex.join(extra) if extra else "")
    return cmds


def first_error_line(text: str) -> str | None:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ERROR_LINE.search(ln) and not ln.lower().startswith("warning"):
            # a traceback's useful line is its last one
            return lines[-1][:300] if ln.startswith("Traceback") else ln[:300]
    return None


def run_one(cmd: str, cwd: Path, env: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        r = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=timeout, check=False)
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")) \
            + f"\nerror: timed out after {timeout:.0f} s"
    secs = time.perf_counter() - t0
    line = first_error_line(err) if rc != 0 else None
    if rc != 0 and line is None:
        line = first_error_line(out) or (err.strip().splitlines() or out.strip().splitlines() or ["(no output)"])[-1][:300]
    if rc in (-9, 137) and line is None:
        line = "killed (out of memory?)"
    return {"exit_code": rc, "seconds": round(secs, 2), "first_error_line": line}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="repository to clone (default: this one)")
    ap.add_argument("--readme", default=None, help="README to read (default: the clone's README.md)")
    ap.add_argument("--out", default=None, help="folder for readme_commands.json (default: benchmarks/results/core of this checkout)")
    ap.add_argument("--torch", default=None, help="torch requirement for the set-up (sets ANYBUDGET_TORCH, which bootstrap.sh reads)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per command (default 1200)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone (its path is printed)")
    ap.add_argument("--list", action="store_true", help="print what would run and stop")
    args = ap.parse_args(argv)

    here = Path(__file__).resolve().parents[1]
    out = Path(args.out) if args.out else here / "benchmarks" / "results" / "core"
    if args.list:
        readme = Path(args.readme or Path(args.repo) / "README.md").read_text(encoding="utf-8")
        for c in plan(parse_readme(readme)):
            print(f"[{c.section}] " + (f"SKIP ({c.skip}): {c.text}" if c.skip else c.run))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="anybudget-readme-"))
    clone = tmp / "clone"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ANYBUDGET_DEBUG")}
    if args.torch:
        env["ANYBUDGET_TORCH"] = args.torch
    env["PATH"] = f"{clone / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    rows = []
    t_all = time.perf_counter()
    try:
        r = subprocess.run(["git", "clone", "--quiet", args.repo, str(clone)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            print(f"error: --repo {args.repo!r}: git clone failed: {r.stderr.strip()[:300]}", file=sys.stderr)
            return 2
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                                check=False).stdout.strip()
        readme = Path(args.readme or clone / "README.md").read_text(encoding="utf-8")
        cmds = plan(parse_readme(readme))
        setup = next((c for c in cmds if c.run and "bootstrap.sh" in c.run), None)
        if setup is None:
            print("error: the README has no set-up command (bash scripts/bootstrap.sh ...)", file=sys.stderr)
            return 2
        order = [setup] + [c for c in cmds if c is not setup]  # the first set-up command first
        for c in order:
            row = {"section": c.section, "readme": c.text, "readme_comment": c.comment, "command": c.run}
            if c.skip:
                row.update(skipped=c.skip, exit_code=None, seconds=None, first_error_line=None)
                print(f"skip  {c.text}  ({c.skip})", flush=True)
            else:
                print(f"run   {c.run}", flush=True)
                row.update(run_one(c.run, clone, env, args.timeout))
                print(f"      exit {row['exit_code']} in {row['seconds']:.1f} s"
                      + (f": {row['first_error_line']}" if row["exit_code"] else ""), flush=True)
            rows.append(row)
    finally:
        if args.keep:
            print(f"clone kept at {clone}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    ran = [r for r in rows if r.get("skipped") is None]
    metrics = {"commands": rows, "ran": len(ran), "passed": sum(r["exit_code"] == 0 for r in ran),
               "failed": sum(r["exit_code"] != 0 for r in ran), "skipped": len(rows) - len(ran),
               "total_s": round(time.perf_counter() - t_all, 1)}
    config = {"repo": os.path.abspath(args.repo), "clone_commit": commit, "placeholders": PLACEHOLDERS,
              "skip_rules": [w for _, w in SKIP], "timeout_s": args.timeout,
              "ANYBUDGET_TORCH": env.get("ANYBUDGET_TORCH"), "cpu_count": os.cpu_count()}
    from anybudget.io import write_results

    path = write_results("readme_commands", config, metrics, out_dir=out)
    print(f"{metrics['passed']} of {metrics['ran']} README commands passed ({metrics['skipped']} skipped) "
          f"in {metrics['total_s']:.0f} s; wrote {path}")
    return 0 if metrics["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
