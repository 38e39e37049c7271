"""Write the results page, ``benchmarks/results/README.md``, from the records in ``benchmarks/results/<module>/``.

Per module (``anybudget.io.RESULT_MODULES``): every table ``report.py`` renders from its records, then
each record: name, device, versions, commit, date, its headline numbers (``metrics.summary`` when it
has one, else its top-level scalar metrics) and its PNGs. The same records give the same page, byte
for byte (a test regenerates it, so it cannot go stale).

Usage:  python benchmarks/results_page.py           # rewrites benchmarks/results/README.md
        python benchmarks/results_page.py --check   # exit 1 when the committed page is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # report.py beside it, when imported from tests
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import module_sections  # noqa: E402
from report_lm_elastic import RES, dev  # noqa: E402

from anybudget.io import RESULT_MODULES, atomic_write_text  # noqa: E402

PAGE = RES / "README.md"
MAX_ITEMS = 24  # headline numbers listed per record; the rest stay in the JSON
TITLES = {"core": "core (demo time, README commands)", "reflm": "reference language model", "kv": "kv: KV-cache budgets",
          "elastic": "elastic: Flextron sub-networks", "prune": "prune: lottery tickets",
          "splat": "splat: LightGaussian", "nas": "nas: TE-NAS", "ssm": "ssm: polarized Mamba",
          "plan": "plan: anybudget fit"}


def _flat(obj, prefix=""):
    """``(dotted key, scalar)`` pairs of nested dicts, in key order; lists are skipped."""
    out = []
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flat(v, key + ".")
        elif _scalar(v) or v is None:
            out.append((key, v))
    return out


def _scalar(v) -> bool:
    """A number, a flag or a one-line string (a multi-line string is a rendered table, not a number)."""
    return isinstance(v, (int, float, bool)) or (isinstance(v, str) and "\n" not in v)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v).replace("|", "/")
    return s if len(s) <= 80 else s[:77] + "..."


def headline(rec: dict) -> str:
    """``metrics.summary`` (flattened) when the record has one, else its top-level scalar metrics."""
    m = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    summary = m.get("summary", rec.get("summary"))
    if isinstance(summary, dict):
        items, label = _flat(summary), "summary"
    else:  # top-level scalars; when there are none, those of nested dicts (lists stay in the JSON)
        items, label = [(k, v) for k, v in m.items() if _scalar(v)], "scalar metrics"
        items = items or _flat(m)
    if not items:
        return "No scalar metrics outside lists; the numbers are in the JSON (and the tables above)."
    more = f"; ... {len(items) - MAX_ITEMS} more in the JSON" if len(items) > MAX_ITEMS else ""
    return f"{label}: " + "; ".join(f"`{k}` {_fmt(v)}" for k, v in items[:MAX_ITEMS]) + more + "."


def _owner(png: Path, records: list[Path]) -> Path | None:
    """The record a plot belongs to: same folder, the longest stem that the plot's stem starts with."""
    cands = [r for r in records if r.parent == png.parent and (png.stem == r.stem or png.stem.startswith(r.stem + "_"))]
    return max(cands, key=lambda r: len(r.stem)) if cands else None


def module_md(module: str, tables: str) -> str:
    folder = RES / module
    records = sorted(folder.rglob("*.json")) if folder.is_dir() else []
    pngs = sorted(folder.rglob("*.png")) if folder.is_dir() else []
    owner = {p: _owner(p, records) for p in pngs}
    out = f"## {TITLES[module]}\n\n"
    if tables:
        lines = [ln for ln in tables.strip().splitlines() if not ln.startswith("![")]  # plots: with their record
        out += "\n".join(lines).replace("\n\n\n", "\n\n") + "\n\n"
    if not records:
        return out + "No records yet.\n"
    out += f"### Records in `{module}/`\n\n"
    for r in records:
        rel = r.relative_to(RES).as_posix()
        rec = json.loads(r.read_text())
        out += f"#### [`{r.relative_to(folder).with_suffix('').as_posix()}`]({rel})\n\n{dev(rec)}.\n\n{headline(rec)}\n"
        for p in (p for p in pngs if owner[p] == r):
            out += f"\n![{p.stem}]({p.relative_to(RES).as_posix()})\n"
        out += "\n"
    rest = [p for p in pngs if owner[p] is None]
    if rest:
        out += "Other plots:\n\n" + "".join(f"![{p.stem}]({p.relative_to(RES).as_posix()})\n" for p in rest) + "\n"
    return out


def _anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")


def render() -> str:
    tables = module_sections(full=True)
    head = ("# Results\n\n"
            "Generated by `python benchmarks/results_page.py` from the records in this folder (one folder per "
            "module; a record is the JSON `anybudget.io.write_results` writes: numbers, configuration, device, "
            "versions, commit, date). Do not edit by hand. The top-level README shows one headline table per module.\n\n"
            + " | ".join(f"[{m}](#{_anchor(TITLES[m])})" for m in RESULT_MODULES) + "\n\n")
    return head + "\n\n".join(module_md(m, tables.get(m, "")).strip("\n") for m in RESULT_MODULES) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed page; exit 1 when it differs")
    args = ap.parse_args(argv)
    md = render()
    if args.check:
        same = PAGE.is_file() and PAGE.read_text(encoding="utf-8") == md
        print(f"{PAGE}: {'up to date' if same else 'stale: run python benchmarks/results_page.py'}")
        return 0 if same else 1
    atomic_write_text(PAGE, md)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
