"""Build the reference corpus: real English prose from Debian documentation packages, offline.

Sources (Debian bookworm, fetched with ``apt-get download`` if not given):
  python3.11-doc       reST sources of the Python 3.11 documentation (html/_sources/**/*.txt)
  linux-doc-6.12       reST sources of the Linux kernel documentation (html/_sources/**/*.rst.txt)
  debian-reference-en  the Debian Reference, HTML
  postgresql-doc-15    the PostgreSQL 15 manual, HTML
  perl-doc             the Perl 5.36 manual pages, POD
  python-django-doc    the Django documentation, HTML (rendered source code pages excluded)

Markup is cleaned to plain prose (code/literal blocks, tables, directives and comments dropped;
roles and inline markup reduced to their text; paragraphs joined to one line). Documents are
split deterministically by a hash of their path: 3% test, 3% validation, 94% train.

Usage:  python benchmarks/zoo/corpus.py --out benchmarks/zoo/build [--debs /tmp/corpus]
Writes  <out>/{train,validation,test}.txt (documents separated by a blank line and \\f) and
        <out>/corpus.json (sources, versions, bytes, documents per split).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import html
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from anybudget.io import atomic_write_json, atomic_write_text  # noqa: E402

PACKAGES = (
    "python3.11-doc", "linux-doc-6.12", "debian-reference-en",
    "postgresql-doc-15", "perl-doc", "python-django-doc",
)
DOC_SEP = "\n\n\f\n\n"

_TITLE_UNDERLINE = re.compile(r"^\s*([=\-~^*#+`'\".:_])\1{2,}\s*$")
_TABLE = re.compile(r"^\s*(\+[-=+]+\+|\|.*\||={2,}(\s+={2,})+)\s*$")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::(.*)$")
_COMMENT = re.compile(r"^(\s*)\.\.(\s|$)")
_FIELD = re.compile(r"^\s*:[\w -]+:(\s|$)")
_ROLE = re.compile(r":[\w:+-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`_{1,2}")
_LITERAL = re.compile(r"``([^`]*)``")
_INTERP = re.compile(r"`([^`]*)`_{0,2}")
_EMPH = re.compile(r"\*\*?([^*\s][^*]*?)\*\*?")
_SUBST = re.compile(r"\|(\w[\w -]*)\|")
# Directives whose body is prose worth keeping (dedented); all others (code, tables, toctrees,
# images, autodoc signatures...) are dropped with their body.
_PROSE_DIRECTIVES = {
    "note", "warning", "tip", "important", "caution", "attention", "hint", "seealso",
    "versionadded", "versionchanged", "deprecated", "admonition", "topic", "sidebar",
    "function", "method", "class", "attribute", "data", "exception", "module", "describe",
    "decorator", "opcode", "cmdoption", "option", "envvar", "c:function", "c:macro", "c:type",
    "c:member", "c:var", "abstractmethod", "classmethod", "staticmethod", "coroutinefunction",
    "coroutinemethod", "decoratormethod", "productionlist", "rubric", "glossary",
}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _role_text(m: re.Match) -> str:
    t = m.group(1)
    t = re.sub(r"^[~!]", "", t)
    if "<" in t and t.endswith(">"):  # :ref:`text <target>`
        t = t[: t.index("<")].strip()
    return t


def _inline(text: str) -> str:
    text = _ROLE.sub(_role_text, text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _INTERP.sub(lambda m: m.group(1), text)
    text = _EMPH.sub(lambda m: m.group(1), text)
    text = _SUBST.sub(lambda m: m.group(1), text)
    text = text.replace("\\", "")
    return re.sub(r"\s+", " ", text).strip()


def clean_rst(src: str) -> str:
    """reST source -> plain prose paragraphs, one per line."""
    lines = src.expandtabs(4).splitlines()
    out: list[str] = []
    para: list[str] = []
    skip_indent: int | None = None  # dropping a block indented deeper than this

    def flush():
        if para:
            text = _inline(" ".join(para))
            # Keep paragraphs that read as prose: enough letters, at least a few words.
            letters = sum(c.isalpha() for c in text)
            if len(text.split()) >= 4 and letters > 0.6 * len(text.replace(" ", "")):
                out.append(text)
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if skip_indent is not None:
            if stripped == "" or _indent(line) > skip_indent:
                i += 1
                continue
            skip_indent = None
        if stripped == "":
            flush()
            i += 1
            continue
        m = _DIRECTIVE.match(line)
        if m:
            flush()
            name = m.group(2).split(":")[-1] if m.group(2).startswith("py:") else m.group(2)
            if name not in _PROSE_DIRECTIVES:
                skip_indent = _indent(line)
            else:
                arg = m.group(3).strip()
                if name in {"function", "method", "class", "attribute", "data", "exception"}:
                    arg = ""  # signatures are code
                if arg and name in {"admonition", "topic", "sidebar", "rubric"}:
                    out.append(_inline(arg))
            i += 1
            continue
        if _COMMENT.match(line):
            flush()
            skip_indent = _indent(line)
            i += 1
            continue
        if _TITLE_UNDERLINE.match(line) or _TABLE.match(line) or _FIELD.match(line):
            flush()
            i += 1
            continue
        if stripped.endswith("::"):
            # Literal block follows: keep the sentence, drop the block.
            para.append(stripped[:-2].rstrip() + ("" if stripped == "::" else ":"))
            flush()
            skip_indent = _indent(line)
            i += 1
            continue
        if stripped.startswith(">>>") or stripped.startswith("$ ") or stripped.startswith("# "):
            flush()
            skip_indent = _indent(line) - 1
            i += 1
            continue
        # Bullet / enumerated items start a new paragraph.
        if re.match(r"^\s*([-*+•]|\d+[.)]|#\.)\s+", line):
            flush()
            line = re.sub(r"^\s*([-*+•]|\d+[.)]|#\.)\s+", "", line)
        para.append(line.strip())
        i += 1
    flush()
    return "\n\n".join(out)


_BLOCK_TAGS = re.compile(r"</?(p|div|h[1-6]|li|dt|dd|br|tr|table|section|title)\b[^>]*>", re.I)


def clean_html(src: str) -> str:
    """Debian Reference HTML -> plain prose paragraphs (code, tables, scripts dropped)."""
    src = re.sub(r"(?is)<(script|style|pre|table|head)\b.*?</\1>", " ", src)
    src = _BLOCK_TAGS.sub("\n\n", src)
    src = re.sub(r"(?s)<[^>]+>", "", src)
    src = html.unescape(src)
    paras = []
    for block in re.split(r"\n\s*\n", src):
        text = re.sub(r"\s+", " ", block).strip()
        letters = sum(c.isalpha() for c in text)
        if len(text.split()) >= 6 and letters > 0.6 * len(text.replace(" ", "")):
            paras.append(text)
    return "\n\n".join(paras)


_POD_CODE = re.compile(r"([A-Z])<<+\s+(.*?)\s+>>+|([A-Z])<([^<>]*)>", re.S)


def _pod_code(m: re.Match) -> str:
    code, text = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if code == "X" or code == "Z":
        return ""
    if code == "E":
        return {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}.get(text, "")
    if code == "L":
        return text.split("|")[0] if "|" in text else text.split("/")[-1].strip('"')
    return text


def clean_pod(src: str) -> str:
    """Perl POD -> plain prose paragraphs (commands, verbatim blocks and =begin sections dropped)."""
    paras, in_begin = [], False
    for block in re.split(r"\n\s*\n", src):
        if block.startswith("=begin"):
            in_begin = True
        if in_begin:
            in_begin = not block.rstrip().endswith("=end") and not block.startswith("=end")
            continue
        if not block.strip() or block.startswith("=") or block[:1] in " \t":
            continue
        text = block
        for _ in range(4):  # nested formatting codes, innermost first
            text = _POD_CODE.sub(_pod_code, text)
        text = re.sub(r"\s+", " ", text).strip()
        letters = sum(c.isalpha() for c in text)
        if len(text.split()) >= 4 and letters > 0.6 * len(text.replace(" ", "")):
            paras.append(text)
    return "\n\n".join(paras)


def fetch_debs(dest: Path, packages=PACKAGES) -> dict[str, Path]:
    """The .deb of each package in ``dest``, downloaded with apt-get if missing."""
    dest.mkdir(parents=True, exist_ok=True)
    debs = {}
    for pkg in packages:
        found = sorted(dest.glob(f"{pkg}_*.deb"))
        if not found:
            subprocess.run(["apt-get", "download", pkg], cwd=dest, check=True)
            found = sorted(dest.glob(f"{pkg}_*.deb"))
        debs[pkg] = found[-1]
    return debs


def documents(debs: dict[str, Path], workdir: Path):
    """Yield (doc_id, text) for every document of every package, in a fixed order."""
    for pkg, deb in debs.items():
        root = workdir / pkg
        if not root.exists():
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        if pkg == "python3.11-doc":
            files = sorted(glob.glob(str(root / "usr/share/doc/python3.11/html/_sources/**/*.txt"), recursive=True))
            clean = clean_rst
        elif pkg == "linux-doc-6.12":
            files = sorted(glob.glob(str(root / "usr/share/doc/linux-doc-6.12/html/_sources/**/*.rst.txt"), recursive=True))
            clean = clean_rst
        elif pkg == "debian-reference-en":
            files = sorted(glob.glob(str(root / "usr/share/debian-reference/*.en.html")))
            clean = clean_html
        elif pkg == "postgresql-doc-15":
            files = sorted(glob.glob(str(root / "usr/share/doc/postgresql-doc-15/html/*.html")))
            clean = clean_html
        elif pkg == "perl-doc":
            files = sorted(glob.glob(str(root / "usr/share/perl/*/pod/*.pod")))
            clean = clean_pod
        else:
            files = sorted(
                f for f in glob.glob(str(root / "usr/share/doc/python-django-doc/html/**/*.html"), recursive=True)
                if "/_modules/" not in f and "/genindex" not in f and "/py-modindex" not in f
            )
            clean = clean_html
        for f in files:
            rel = os.path.relpath(f, root)
            text = clean(Path(f).read_text(encoding="utf-8", errors="replace"))
            if len(text) >= 200:
                yield f"{pkg}/{rel}", text


def bucket(doc_id: str) -> int:
    """A document's fixed bucket in 0..99 (sha1 of its id), from which splits are cut."""
    return int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) % 100


def split_of(doc_id: str) -> str:
    """Deterministic split by document: 3% test, 3% validation, 94% train."""
    h = bucket(doc_id)
    return "test" if h < 3 else "validation" if h < 6 else "train"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/zoo/build", help="output folder")
    ap.add_argument("--debs", default=None, help="folder with (or to download) the .deb files")
    args = ap.parse_args(argv)
    out = Path(args.out)
    debs = fetch_debs(Path(args.debs) if args.debs else out / "debs")
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    ids: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    with tempfile.TemporaryDirectory() as tmp:
        for doc_id, text in documents(debs, Path(tmp)):
            s = split_of(doc_id)
            splits[s].append(text)
            ids[s].append(doc_id)
    record = {
        "sources": {pkg: deb.name for pkg, deb in debs.items()},
        "split_rule": "sha1(doc_id) % 100: <3 test, <6 validation, else train",
        "splits": {},
    }
    for s, docs in splits.items():
        text = DOC_SEP.join(docs)
        atomic_write_text(out / f"{s}.txt", text)
        record["splits"][s] = {"documents": len(docs), "bytes": len(text.encode()), "first_ids": ids[s][:5]}
    atomic_write_json(out / "corpus.json", record)
    print(json.dumps(record["splits"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
