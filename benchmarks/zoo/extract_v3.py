"""Extractors for the v3 corpus's new sources: PDF manuals, C comments, plain texts, game dialogue.

Each ``*_docs(root, pkg)`` yields ``(doc_id, text)`` with paragraphs separated by a blank line,
one paragraph per line, already filtered to English prose (``english`` below). ``corpus_v3.py``
drives them; dedup and splitting are done there (the same rules as ``corpus_v2.py``).
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import subprocess
import tarfile
from pathlib import Path

# The most frequent English function words; English prose has ~35-50% of its words in this set,
# German/French/code well under 10%.
_FUNCTION_WORDS_TEXT = (
    "the of and to a in is that for it as with be on by this are or not an can which from at you if we "
    "will have has but all one their they when there so more also these may been was its into than "
    "other only then would any each such use used should must")
_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())
_WORD = re.compile(r"[A-Za-z]+")


def english_share(text: str) -> float:
    """Share of the words of ``text`` that are common English function words (0 when no words)."""
    words = _WORD.findall(text)
    if not words:
        return 0.0
    return sum(w.lower() in _FUNCTION_WORDS for w in words) / len(words)


def prose(text: str, min_words: int = 8, min_english: float = 0.18) -> bool:
    """A paragraph worth training on: enough words, mostly letters, reads as English."""
    words = text.split()
    if len(words) < min_words:
        return False
    letters = sum(c.isalpha() for c in text)
    if letters < 0.65 * len(text.replace(" ", "")):
        return False
    return english_share(text) >= min_english


def clean_pdf_text(raw: str) -> str:
    """pdftotext output -> paragraphs: lines joined, hyphenation undone, page furniture dropped."""
    paras = []
    for block in re.split(r"\n\s*\n|\f", raw):
        lines = [s.strip() for s in block.splitlines() if s.strip()]
        if not lines:
            continue
        text = ""
        for s in lines:
            if text.endswith("-") and s[:1].islower() and text[-2:-1].isalpha():
                text = text[:-1] + s
            else:
                text = f"{text} {s}" if text else s
        text = re.sub(r"\s+", " ", text).strip()
        if prose(text):
            paras.append(text)
    return "\n\n".join(paras)


def _pdf_text(path: str, timeout: float) -> str:
    try:
        out = subprocess.run(["pdftotext", "-q", "-enc", "UTF-8", path, "-"], capture_output=True,
                             timeout=timeout, check=False).stdout
    except subprocess.TimeoutExpired:
        return ""
    return clean_pdf_text(out.decode("utf-8", errors="replace"))


def pdf_docs(root: Path, pkg: str, timeout: float = 60.0, workers: int = 2):
    """Every PDF under usr/share (texlive documentation), English prose only, one PDF a document."""
    from concurrent.futures import ThreadPoolExecutor

    files = [f for f in sorted(glob.glob(str(root / "usr/share/**/*.pdf"), recursive=True))
             if not os.path.islink(f) and os.path.isfile(f)]
    with ThreadPoolExecutor(workers) as pool:
        for f, text in zip(files, pool.map(lambda f: _pdf_text(f, timeout), files)):
            if len(text) >= 500 and english_share(text) >= 0.25:
                yield f"{pkg}/{os.path.relpath(f, root)}", text


_C_COMMENT = re.compile(r"/\*(.*?)\*/", re.DOTALL)
_SKIP_COMMENT = re.compile(r"SPDX-License|Copyright|GNU General Public|WITHOUT ANY WARRANTY|"
                           r"Free Software Foundation|This program is free software", re.IGNORECASE)


def clean_c_comments(src: str) -> str:
    """The block comments of a C file -> prose paragraphs (kernel-doc tags, licence text dropped)."""
    paras = []
    for m in _C_COMMENT.finditer(src):
        body = m.group(1)
        if _SKIP_COMMENT.search(body):
            continue
        lines = [re.sub(r"^\s*\*+ ?", "", s).rstrip() for s in body.splitlines()]
        for block in re.split(r"\n\s*\n", "\n".join(lines)):
            rows = [s.strip() for s in block.splitlines()
                    if s.strip() and not re.match(r"^\s*(@\w+:|[-=*]{3,}|Return:?$|Context:)", s)]
            text = re.sub(r"\s+", " ", " ".join(rows)).strip()
            text = re.sub(r"^[\w.]+\(\)\s+-\s+", "", text)  # kernel-doc "func() - summary"
            if prose(text, 10, 0.2):
                paras.append(text)
    return "\n\n".join(paras)


def kernel_source_docs(root: Path, pkg: str):
    """C comments of the kernel source tarball inside linux-source-X (one source file a document)."""
    tars = sorted(glob.glob(str(root / "usr/src/linux-source-*.tar.*")))
    if not tars:
        raise FileNotFoundError(f"no kernel tarball under {root}/usr/src")
    with tarfile.open(tars[0], "r|*") as tf:
        for member in tf:
            if not member.isfile() or not member.name.endswith((".c", ".h")):
                continue
            data = tf.extractfile(member).read().decode("utf-8", errors="replace")
            text = clean_c_comments(data)
            if len(text) >= 300:
                yield f"{pkg}/{member.name}", text


_WML_STRING = re.compile(r'_\s*"((?:[^"]|"")*)"', re.DOTALL)


def wesnoth_docs(root: Path, pkg: str):
    """Translatable strings (story text, dialogue, help) of Wesnoth's campaign and help files."""
    pats = ["usr/share/games/wesnoth/*/data/campaigns/**/*.cfg", "usr/share/games/wesnoth/*/data/core/**/*.cfg"]
    files = sorted({f for p in pats for f in glob.glob(str(root / p), recursive=True)})
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            src = fh.read()
        paras = []
        for m in _WML_STRING.finditer(src):
            text = re.sub(r"<[^>]+>", "", m.group(1).replace('""', '"'))
            # Gendered variants ("female^...") keep their prefix: the committed v3 build
            # (data_v3/manifest.json) was extracted so; stripping it dedups 23 tutorial lines.
            text = re.sub(r"\s+", " ", text).strip()
            if prose(text, 8, 0.15):
                paras.append(text)
        text = "\n\n".join(paras)
        if len(text) >= 300:
            yield f"{pkg}/{os.path.relpath(f, root)}", text


_TEXI_DROP = re.compile(r"^@(c|comment|node|menu|end|set|clear|ifinfo|iftex|ifhtml|ifnottex|ifnotinfo|ifnothtml|"
                        r"ifset|ifclear|include|setfilename|settitle|cindex|findex|vindex|kindex|pindex|tindex|"
                        r"deffn|deftypefn|deftypefun|defun|defmac|defvar|table|ftable|vtable|itemize|enumerate|"
                        r"multitable|tab|headitem|page|sp|noindent|need|group|anchor|printindex|top|copying|"
                        r"insertcopying|titlepage|macro|rmacro|alias|dircategory|direntry|setchapternewpage|"
                        r"paragraphindent|exampleindent|firstparagraphindent|documentencoding|syncodeindex|"
                        r"defcodeindex|defindex|synindex|shorttitlepage|title|subtitle|author|vskip|finalout)\b")
_TEXI_BLOCK = re.compile(r"^@(example|smallexample|lisp|smalllisp|display|smalldisplay|verbatim|format|"
                         r"smallformat|tex|html|ignore|iftex|docbook|xml|cartouche)\b.*?^@end \1\b", re.DOTALL | re.MULTILINE)


def clean_texinfo(src: str) -> str:
    """Texinfo -> prose: example/tex blocks and structural commands dropped, @cmd{x} reduced to x."""
    src = _TEXI_BLOCK.sub("\n\n", src)
    lines = []
    for line in src.splitlines():
        if _TEXI_DROP.match(line):
            lines.append("")
            continue
        line = re.sub(r"^@(chapter|section|subsection|subsubsection|unnumbered\w*|appendix\w*|heading|"
                      r"subheading|majorheading|chapheading|item|itemx)\s*", "", line)
        lines.append(line)
    text = "\n".join(lines)
    for _ in range(3):  # nested braces
        text = re.sub(r"@(?:ref|xref|pxref)\{([^{},]*)[^{}]*\}", r"\1", text)
        text = re.sub(r"@[a-zA-Z]+\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"@([{}@.:?!])", r"\1", text).replace("``", '"').replace("''", '"')
    return prose_paragraphs(re.split(r"\n\s*\n", text))


def clean_line_comments(src: str, prefix: str) -> str:
    """Runs of line comments (``//``, ``///``, ``;;`` ...) -> paragraphs; code after a comment ends one."""
    pat = re.compile(rf"^\s*(?:{prefix})[!/;]*\s?(.*)$")
    paras, cur = [], []

    def flush():
        text = re.sub(r"\s+", " ", " ".join(cur)).strip()
        if prose(text, 10, 0.2) and not _SKIP_COMMENT.search(text):
            paras.append(text)
        cur.clear()

    for line in src.splitlines():
        m = pat.match(line)
        if m and m.group(1).strip() and not m.group(1).lstrip().startswith(("```", "    ", "#", "@")):
            cur.append(m.group(1).strip())
        else:
            flush()
    flush()
    return "\n\n".join(paras)


def clean_markdown(src: str) -> str:
    """Markdown -> prose paragraphs (fenced/indented code, tables, HTML and headings dropped)."""
    src = re.sub(r"(?ms)^\s*(```|~~~).*?^\s*\1\s*$", "\n", src)
    paras = []
    for block in re.split(r"\n\s*\n", src):
        lines = [s for s in block.splitlines()
                 if not s.startswith(("    ", "\t", "#", "|", "<", "[")) and not re.match(r"^\s*[-=*]{3,}\s*$", s)]
        text = " ".join(s.strip().lstrip("-*> ").strip() for s in lines)
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
        text = re.sub(r"[`*_]{1,2}([^`*_]+)[`*_]{1,2}", r"\1", text)
        text = re.sub(r"\s+", " ", text).strip()
        if prose(text, 8, 0.18):
            paras.append(text)
    return "\n\n".join(paras)


# (file suffixes, cleaner) for sources inside a tarball or a tree
_C_LIKE = ((".c", ".h", ".cc", ".cpp", ".cxx", ".hh", ".def", ".y", ".d"), clean_c_comments)
_TEXI = ((".texi", ".texinfo"), clean_texinfo)


def _tree_cleaner(name: str, kinds):
    for suffixes, fn in kinds:
        if name.endswith(suffixes):
            return fn
    return None


def source_tarball_docs(root: Path, pkg: str, kinds=(_C_LIKE, _TEXI), skip=re.compile(r"/(testsuite|tests?)/")):
    """Block comments of C/C++ sources and Texinfo manuals inside the .tar.* under usr/src."""
    tars = sorted(glob.glob(str(root / "usr/src/**/*.tar.*"), recursive=True), key=os.path.getsize)
    if not tars:
        raise FileNotFoundError(f"no source tarball under {root}/usr/src")
    with tarfile.open(tars[-1], "r|*") as tf:
        for member in tf:
            fn = _tree_cleaner(member.name, kinds)
            if fn is None or not member.isfile() or skip.search(member.name):
                continue
            text = fn(tf.extractfile(member).read().decode("utf-8", errors="replace"))
            if len(text) >= 300:
                yield f"{pkg}/{member.name}", text


def tree_docs(root: Path, pkg: str, patterns: list[str], clean, skip=re.compile(r"/(testdata|tests?)/")):
    """Files matching ``patterns`` under the unpacked package, each cleaned by ``clean``."""
    for f in sorted({f for p in patterns for f in glob.glob(str(root / p), recursive=True)}):
        if not os.path.isfile(f) or skip.search(f):
            continue
        opener = gzip.open if f.endswith(".gz") else open
        with opener(f, "rt", encoding="utf-8", errors="replace") as fh:
            text = clean(fh.read())
        if len(text) >= 300:
            yield f"{pkg}/{os.path.relpath(f, root)}", text


_GETTEXT = re.compile(r'_\(\s*"((?:[^"\\]|\\.)*)"\s*\)|\?\w+:"((?:[^"\\]|\\.)*)"', re.DOTALL)


def gettext_docs(root: Path, pkg: str, patterns: list[str]):
    """Translatable strings ``_("...")`` of game data (freeciv help and rulesets)."""
    def clean(src: str) -> str:
        paras = []
        for m in _GETTEXT.finditer(src):
            text = (m.group(1) or m.group(2) or "").replace('\\"', '"').replace("\\n", "\n")
            for para in re.split(r"\n\s*\n", text):
                para = re.sub(r"\s+", " ", para).strip()
                if prose(para, 8, 0.15):
                    paras.append(para)
        return "\n\n".join(paras)

    yield from tree_docs(root, pkg, patterns, clean)


def clean_plain_paras(src: str) -> str:
    """Blank-line separated text -> one line per paragraph, English prose paragraphs only."""
    return prose_paragraphs(re.split(r"\n\s*\n|\n%\n", src))


def prose_paragraphs(blocks) -> str:
    """The blocks that read as English prose (``prose(.., 8, 0.18)``), each on one line, blank-line separated."""
    paras = (re.sub(r"\s+", " ", b).strip() for b in blocks)
    return "\n\n".join(p for p in paras if prose(p, 8, 0.18))


_OSIS_BREAK = re.compile(r"<(?:/?p|/?div|lb|br|/?lg|/?l|title|/title|/?item|/?list|/?entryFree|/?q\s+[^>]*eID[^>]*)\b[^>]*>", re.IGNORECASE)


def _sword_blocks(index: Path, data: Path, entry: int):
    """The zlib blocks of a SWORD zText/zCom (12-byte .bzs/.czs entries) or zLD (8-byte .zdx) module."""
    import struct
    import zlib

    idx, raw = index.read_bytes(), data.read_bytes()
    for k in range(0, len(idx) - entry + 1, entry):
        off, size = struct.unpack_from("<II", idx, k)
        if size and off + size <= len(raw):
            try:
                yield zlib.decompress(raw[off: off + size]).decode("utf-8", errors="replace")
            except zlib.error:
                continue


def sword_docs(root: Path, pkg: str):
    """Public-domain SWORD modules (Bible text, commentaries, topical dictionary) -> prose per block."""
    import html as _html

    mods = sorted(root.glob("usr/share/sword/modules/**/*.[bc]zs")) + sorted(root.glob("usr/share/sword/modules/**/*.zdx"))
    for index in mods:
        if index.suffix == ".zdx":
            data, entry = index.with_suffix(".zdt"), 8
        else:
            data, entry = index.with_suffix(index.suffix[:3] + "z"), 12
        for i, block in enumerate(_sword_blocks(index, data, entry)):
            text = _OSIS_BREAK.sub("\n\n", block)
            text = re.sub(r"(?s)<note\b.*?</note>", "", text)
            text = _html.unescape(re.sub(r"<[^>]+>", " ", text))
            text = clean_plain_paras(text.replace("\r", ""))
            if len(text) >= 300:
                yield f"{pkg}/{index.relative_to(root)}/{i:05d}", text


def clean_python(src: str, clean_rst) -> str:
    """Docstrings (reST cleaned by ``clean_rst``) and ``#`` comment runs of one Python/Cython file."""
    import ast
    import warnings

    paras = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(src)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    paras.append(clean_plain_paras(clean_rst(doc)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # Cython (.pyx) or Python 2
        for m in re.finditer(r'(?s)"""(.*?)"""', src):
            paras.append(clean_plain_paras(clean_rst(m.group(1))))
    paras.append(clean_line_comments(src, "#"))
    return "\n\n".join(p for p in paras if p)


def python_docs(root: Path, pkg: str, clean_rst):
    """A Python package's docstrings and comments, one module a document (tests excluded)."""
    yield from tree_docs(root, pkg, ["usr/lib/python3/dist-packages/**/*.py", "usr/lib/python3/dist-packages/**/*.pyx"],
                         lambda s: clean_python(s, clean_rst), skip=re.compile(r"/tests?/|/testing/|_test\.py$|/test_"))


def botocore_docs(root: Path, pkg: str, clean_html):
    """The ``documentation`` fields (HTML) of botocore's AWS service models, one service a document."""
    import json as _json

    def walk(obj, out):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "documentation" and isinstance(v, str):
                    out.append(v)
                else:
                    walk(v, out)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, out)

    for f in sorted(glob.glob(str(root / "usr/lib/python3/dist-packages/botocore/data/**/service-2.json*"), recursive=True)):
        opener = gzip.open if f.endswith(".gz") else open
        with opener(f, "rt", encoding="utf-8") as fh:
            docs: list[str] = []
            walk(_json.load(fh), docs)
        text = clean_plain_paras("\n\n".join(clean_html(d) for d in docs))
        if len(text) >= 300:
            yield f"{pkg}/{os.path.relpath(f, root)}", text


def clean_javadoc(src: str) -> str:
    """Java block comments with inline tags ({@code x}) and HTML reduced to their text."""
    src = re.sub(r"\{@\w+\s+([^{}]*)\}", r"\1", src)
    src = re.sub(r"</?[a-zA-Z][^<>\n]*>", "", src)
    return clean_c_comments(src)


def zip_docs(root: Path, pkg: str, pattern: str, suffix: str, clean):
    """Members ending in ``suffix`` of the zip archives matching ``pattern`` (the JDK's src.zip)."""
    import zipfile

    for z in sorted(glob.glob(str(root / pattern), recursive=True)):
        with zipfile.ZipFile(z) as zf:
            for name in sorted(zf.namelist()):
                if name.endswith(suffix):
                    text = clean(zf.read(name).decode("utf-8", errors="replace"))
                    if len(text) >= 300:
                        yield f"{pkg}/{name}", text


def clean_c_all(src: str) -> str:
    """Block comments and ``//``/``///`` comment runs of a C/C++ header."""
    return "\n\n".join(p for p in (clean_c_comments(src), clean_line_comments(src, "//")) if p)


_ANSIBLE_MARKUP = re.compile(r"\b[ICBMUVOE]\(([^()]*)\)|\bL\(([^(),]*),[^()]*\)")


def ansible_doc_text(src: str) -> str:
    """The DOCUMENTATION block (YAML) of an Ansible module: its description and one paragraph per option."""
    import ast

    import yaml

    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return ""
    doc = next((n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                and isinstance(n.value.value, str) and any(getattr(t, "id", "") == "DOCUMENTATION" for t in n.targets)),
               None)
    try:
        spec = yaml.safe_load(doc) if doc else None
    except yaml.YAMLError:
        return ""
    if not isinstance(spec, dict):
        return ""

    def text(v) -> str:
        v = " ".join(str(x) for x in v) if isinstance(v, list) else str(v or "")
        return _ANSIBLE_MARKUP.sub(lambda m: m.group(1) or m.group(2) or "", v)

    paras = [text(spec.get("short_description")) + ". " + text(spec.get("description"))]

    def options(opts, prefix=""):
        if not isinstance(opts, dict):
            return
        for name, o in opts.items():
            if isinstance(o, dict):
                paras.append(f"{prefix}{name}: {text(o.get('description'))}")
                options(o.get("suboptions"), f"{prefix}{name}.")

    options(spec.get("options"))
    return "\n\n".join(p for p in (re.sub(r"\s+", " ", p).strip() for p in paras) if prose(p, 8, 0.15))


def ansible_docs(root: Path, pkg: str, clean_rst):
    """Ansible collections: module documentation (YAML) plus docstrings and comments, one file a document."""
    yield from tree_docs(root, pkg, ["usr/lib/python3/dist-packages/ansible_collections/**/*.py"],
                         lambda s: "\n\n".join(p for p in (ansible_doc_text(s), clean_python(s, clean_rst)) if p),
                         skip=re.compile(r"/tests?/|/unit/|/integration/"))
