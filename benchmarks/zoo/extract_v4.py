"""Extractors for corpus v4's new sources: Lisp docstrings and XDOC strings, prose strings of JSON game data.

Like ``extract_v3`` (whose filters they reuse), each returns paragraphs separated by a blank line,
one paragraph a line, English prose only (``extract_v3.prose``). ``corpus_v4.py`` drives them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import extract_v3 as ex

# one left-to-right scan: a string literal, or a ;-comment (skipped whole), or a character literal ?x / ?\"
_LISP_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|;[^\n]*|\?\\?.', re.DOTALL)
_ELISP_SUBST = re.compile(r"\\\\[\[<{]([^\]>}]*)[\]>}]")  # \\[command], \\<map>, \\{map}
_XDOC_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_XDOC_SEE = re.compile(r"@\((?:see|tsee|csee|url|sym|'|`)\s*([^()]*)\)")
_XDOC_CODE = re.compile(r"@(?:\{\}|\(def|\(gdef|\(call|\(\(|\[)[^\n]*")


def _unescape_lisp(s: str) -> str:
    s = _ELISP_SUBST.sub(lambda m: m.group(1) if m.group(0)[2] == "[" else "", s)
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": " "}.get(m.group(1), m.group(1)), s, flags=re.DOTALL)


def clean_lisp_strings(src: str, min_chars: int = 60) -> str:
    """String literals of a Lisp file (Emacs Lisp docstrings, ACL2 XDOC ``:long`` text) -> prose paragraphs.

    Comments are skipped in the same scan (a ``"`` inside a comment would otherwise pair with the wrong quote);
    XDOC/HTML tags are dropped and ``@(see x)`` reduced to ``x``; ``\\[cmd]`` becomes ``cmd``.
    Strings shorter than ``min_chars`` (names, format strings, keys) are skipped.
    """
    paras = []
    for m in _LISP_TOKEN.finditer(src):
        body = m.group(1)
        if body is None or len(body) < min_chars:
            continue
        text = _unescape_lisp(body)
        text = _XDOC_CODE.sub("", _XDOC_SEE.sub(r"\1", text))
        text = _XDOC_TAG.sub(" ", re.sub(r"</?p>", "\n\n", text))
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").replace("&quot;", '"')
        for block in re.split(r"\n\s*\n", text):
            para = re.sub(r"\s+", " ", block).strip()
            if ex.prose(para, 8, 0.18):
                paras.append(para)
    return "\n\n".join(paras)


def json_prose(obj, min_words: int = 8) -> str:
    """Every string value in a JSON tree (lists, dicts, nested) that reads as English prose, in document order.

    Game data (Cataclysm: DDA item, monster and dialogue definitions) keeps its descriptions in
    fields of many names (``description``, ``text``, ``dynamic_line``, ``str``...), so the test is
    the text, not the key. ``<color_x>`` markup and ``%s`` style placeholders stay as written.
    """
    out: list[str] = []

    def walk(o):
        if isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        elif isinstance(o, str):
            for block in re.split(r"\n\s*\n", o):
                para = re.sub(r"\s+", " ", block).strip()
                if ex.prose(para, min_words, 0.18):
                    out.append(para)

    walk(obj)
    return "\n\n".join(out)


def json_docs(root: Path, pkg: str, patterns: list[str]):
    """JSON files under the package, one file a document, their prose strings (``json_prose``)."""
    def clean(src: str) -> str:
        try:
            return json_prose(json.loads(src))
        except json.JSONDecodeError:
            return ""

    yield from ex.tree_docs(root, pkg, patterns, clean)
