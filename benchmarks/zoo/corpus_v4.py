"""Corpus v4's additions: English text from Debian packages neither v2 nor v3 took (or parts they left out).

v2 (86 packages, build_v2) and v3 (87 packages, build_v3/{train,validation,test}_new.txt) are taken
as they stand; v4 adds documents from the packages below under v3's conventions: one paragraph a line,
blank line between paragraphs, documents joined by DOC_SEP; exact-paragraph dedup against EVERY
paragraph of every v2 split (v1_test, test, validation, heldout = gnucash-docs, train) and every v3
split (train_new, validation_new, test_new), then against earlier v4 packages; the split by
sha1(doc_id) % 100 (<2 test, <4 validation, else train); paragraphs must read as English
(``extract_v3.prose`` / ``english_share``). gnucash-docs stays held out (nothing here touches it).

Sources (the survey with sizes and the packages not built yet: corpus_v4_survey.md):

  emacs-el (docstrings)  Emacs Lisp docstrings; v3 took only the ``;;`` comments of the same files.
                         Same doc ids as v3's, so a file's docstrings land in the split of its comments.
  acl2-books-source      ACL2 community books: XDOC ``:long``/``:short`` strings and ``;`` comments
  sword-text-kjv         the King James Version (public domain), SWORD module decoded as in v3
  cataclysm-dda-data     Cataclysm: Dark Days Ahead item, monster, mission and dialogue text (JSON)
  python3-azure, python3-torch, python3-mne, python3-django, python3-skimage, python3-plotly,
  python3-nipype, python3-dipy, python3-sunpy, python3-kubernetes   docstrings and comments (v3's python_docs)
  mediawiki, wordpress   PHP doc comments (``/** ... */``, ``@tag`` lines dropped)
  libssl-doc, libx11-doc, glibc-doc, libcurl4-doc, gnutls-doc, debhelper, devscripts, dpkg-dev   manual pages (groff)
  lintian                tag explanations (``Explanation:`` fields of usr/share/lintian/tags/**/*.tag)
  golang-google-api-dev, golang-google-cloud-dev   Go doc comments (Google API clients); erlang-src ``%`` comments
  golang-github-azure-azure-sdk-for-go-dev   Go doc comments (Azure SDK); tk8.6-doc manual pages
  wx3.2-doc, ffmpeg-doc, imagemagick-6-doc, gnutls-doc, postfix-doc, graphviz-doc, doxygen-doc, abs-guide,
  debian-faq, apt-doc, ghc-doc (all libraries; v2 took base and the users guide), libeigen3-doc, xorg-docs   HTML
  node-typescript        JSDoc comments of TypeScript's lib*.d.ts (DOM and ECMAScript declarations)
  sword-dict-strongs-greek, sword-dict-strongs-hebrew   Strong's dictionaries (public domain SWORD modules)

This build (Debian bookworm, 2026-11-26): 45 packages, 103.0 MB of new train text in 25,421 documents
(26.49M tokens with the shipped tokenizer, tokenize_v4.py), 1.16 MB validation_new4, 1.94 MB test_new4.
The per-package table is in data_v4/manifest.json.

.debs come from ``apt-get download`` into <out>/debs; one already in v3's debs folder is copied from there.

Usage:  python benchmarks/zoo/corpus_v4.py --v2-build benchmarks/zoo/build_v2 --v3-build benchmarks/zoo/build_v3 \
            --out benchmarks/zoo/build_v4 [--packages a,b,c]
Writes  <out>/raw/<pkg>.jsonl.gz (the resumable per-package extraction), <out>/{train,validation,test}_new4.txt
        (+ .packages: the package of each document) and <out>/corpus.json (per package: version, licence,
        .deb bytes, documents and bytes per split, duplicate paragraphs dropped).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as v1
import corpus_v3 as v3
import extract_v3 as ex
import extract_v4 as ex4

PYTHON = ("python3-azure", "python3-torch", "python3-mne", "python3-django", "python3-skimage", "python3-plotly",
          "python3-nipype", "python3-dipy", "python3-sunpy", "python3-kubernetes")
PHP = ("mediawiki", "wordpress")
MAN = ("libssl-doc", "libx11-doc", "glibc-doc", "libcurl4-doc", "debhelper", "devscripts", "dpkg-dev", "gnutls-doc",
       "tk8.6-doc")
GO = ("golang-google-api-dev", "golang-google-cloud-dev", "golang-github-azure-azure-sdk-for-go-dev")
# HTML manuals (English pages only), cleaned as v1/v3 clean HTML; gnutls-doc also has manual pages (MAN)
HTML = {
    "wx3.2-doc": ["usr/share/doc/wx3.2-doc/html/*.html"],
    "ffmpeg-doc": ["usr/share/doc/ffmpeg/manual/*.html", "usr/share/doc/ffmpeg/api/*.html"],
    # html/www/www is a symlink to itself: no recursive glob; api/MagickCore is Doxygen of the C sources
    "imagemagick-6-doc": ["usr/share/doc/imagemagick-6-common/html/www/*.html",
                          "usr/share/doc/imagemagick-6-common/html/www/api/*.html"],
    "gnutls-doc": ["usr/share/doc/gnutls-doc/html/*.html"],
    "postfix-doc": ["usr/share/doc/postfix/html/*.html"],
    "graphviz-doc": ["usr/share/doc/graphviz/html/**/*.html"],
    "doxygen-doc": ["usr/share/doc/doxygen/html/*.html"],
    "abs-guide": ["usr/share/doc/abs-guide/html/*.html"],
    "debian-faq": ["usr/share/doc/debian/FAQ/*.en.html"],
    "apt-doc": ["usr/share/doc/apt-doc/guide.html/*.html", "usr/share/doc/apt-doc/offline.html/*.html"],
    "ghc-doc": ["usr/share/doc/ghc-doc/html/libraries/**/*.html"],  # all libraries; v2 took base and the guide
    "libeigen3-doc": ["usr/share/doc/libeigen3-dev/html/*.html", "usr/share/doc/libeigen3-dev/html/unsupported/*.html"],
    "xorg-docs": ["usr/share/doc/xorg-docs/**/*.html"],
}
# hyperlinked sources, search indexes, generated file lists; v2's ghc-doc pages (base, users guide) dedup anyway
HTML_SKIP = re.compile(r"/src/|/search/|/(examples?|testdata)/|-members\.html$|/doc-index|/(files|globals|functions)[\w-]*\.html$")
NEW_PACKAGES = tuple(dict.fromkeys((  # in dedup order, each once (gnutls-doc is in MAN and HTML)
    "emacs-el", "acl2-books-source", "sword-text-kjv", "cataclysm-dda-data", *PYTHON, *PHP, *MAN, "lintian", *GO,
    *HTML, "erlang-src", "node-typescript", "sword-dict-strongs-greek", "sword-dict-strongs-hebrew")))
LICENCES = {
    "emacs-el": "GPL-3.0+", "acl2-books-source": "BSD-3-Clause (most books; some GPL-2.0+/MIT), Debian main",
    "sword-text-kjv": "public domain (DistributionLicense in the module's .conf)",
    "cataclysm-dda-data": "CC-BY-SA-3.0", "python3-azure": "MIT", "python3-torch": "BSD-3-Clause",
    "python3-mne": "BSD-3-Clause", "python3-django": "BSD-3-Clause", "python3-skimage": "BSD-3-Clause",
    "python3-plotly": "MIT", "python3-nipype": "Apache-2.0", "python3-dipy": "BSD-3-Clause",
    "python3-sunpy": "BSD-2-Clause", "python3-kubernetes": "Apache-2.0", "mediawiki": "GPL-2.0+",
    "wordpress": "GPL-2.0+", "libssl-doc": "Apache-2.0", "libx11-doc": "MIT/X11", "glibc-doc": "GPL-2.0+ / LGPL-2.1+",
    "libcurl4-doc": "curl (MIT-like)", "debhelper": "GPL-2.0+", "devscripts": "GPL-2.0+", "dpkg-dev": "GPL-2.0+",
    "lintian": "GPL-2.0+", "golang-google-api-dev": "BSD-3-Clause", "golang-google-cloud-dev": "Apache-2.0",
    "wx3.2-doc": "wxWindows Library Licence", "ffmpeg-doc": "LGPL-2.1+ (parts GPL-2.0+)",
    "imagemagick-6-doc": "ImageMagick licence (Apache-2.0-like)", "gnutls-doc": "LGPL-2.1+ / GFDL-1.3+ (no invariant sections)",
    "postfix-doc": "IPL-1.0 OR EPL-2.0", "graphviz-doc": "EPL-1.0", "doxygen-doc": "GPL-2.0",
    "abs-guide": "public domain", "debian-faq": "GPL-2.0+", "apt-doc": "GPL-2.0+", "ghc-doc": "BSD-3-Clause (GHC, libraries)",
    "erlang-src": "Apache-2.0", "golang-github-azure-azure-sdk-for-go-dev": "MIT", "libeigen3-doc": "MPL-2.0",
    "xorg-docs": "MIT/X11 (various)", "tk8.6-doc": "Tcl/Tk licence (BSD-like)", "node-typescript": "Apache-2.0",
    "sword-dict-strongs-greek": "public domain", "sword-dict-strongs-hebrew": "public domain",
}


def lintian_docs(root: Path, pkg: str):
    """The ``Explanation:`` fields of lintian's tag files (deb822, continuation lines indented)."""
    def clean(src: str) -> str:
        m = re.search(r"(?ms)^Explanation:(.*?)(?=^\S|\Z)", src)
        body = "\n".join(s.removeprefix(" ") for s in (m.group(1).splitlines() if m else []))
        return ex.clean_plain_paras(re.sub(r"(?m)^\.\s*$", "", body))

    yield from ex.tree_docs(root, pkg, ["usr/share/lintian/tags/**/*.tag"], clean)


def clean_php(src: str) -> str:
    """PHP doc comments as prose: ``@param``/``@return``/... tag lines dropped (they end a paragraph)."""
    return ex.clean_c_comments(re.sub(r"(?m)^(\s*\*+)\s*@\w+.*$", r"\1", src))


def documents(pkg: str, root: Path):
    """Yield (doc_id, text) of one v4 package unpacked at ``root``."""
    if pkg not in NEW_PACKAGES:
        raise ValueError(f"pkg={pkg!r}: no extractor (known: {', '.join(NEW_PACKAGES)})")
    lisp = ex4.clean_lisp_strings
    if pkg == "emacs-el":
        yield from ex.tree_docs(root, pkg, ["usr/share/emacs/*/lisp/**/*.el.gz"], lisp)
    elif pkg == "acl2-books-source":
        yield from ex.tree_docs(root, pkg, ["usr/share/acl2*/books/**/*.lisp", "usr/share/acl2*/books/**/*.lsp",
                                            "usr/**/books/**/*.lisp"],
                                lambda s: "\n\n".join(p for p in (lisp(s), ex.clean_line_comments(s, ";")) if p))
    elif pkg.startswith("sword-dict-"):
        yield from ex.sword_docs(root, pkg)
    elif pkg == "node-typescript":  # JSDoc of the standard library declarations (DOM, ES5 ... ES2022)
        yield from ex.tree_docs(root, pkg, ["usr/share/nodejs/typescript/lib/lib*.d.ts"], ex.clean_c_comments)
    elif pkg == "sword-text-kjv":  # its OSIS word tags leave a space before punctuation: "Paul , a servant"
        for doc_id, text in ex.sword_docs(root, pkg):
            yield doc_id, re.sub(r"\( +", "(", re.sub(r" +([,;:.?!)])", r"\1", text))
    elif pkg == "cataclysm-dda-data":
        yield from ex4.json_docs(root, pkg, ["usr/share/games/cataclysm-dda/**/*.json"])
    elif pkg in PYTHON:
        yield from ex.python_docs(root, pkg, v1.clean_rst)
    elif pkg in PHP:
        yield from ex.tree_docs(root, pkg, ["usr/share/**/*.php"], clean_php,
                                skip=re.compile(r"/(tests?|vendor/[^/]+/[^/]+/tests?)/|/i18n/|/languages/"))
    elif pkg in GO:
        yield from ex.tree_docs(root, pkg, ["usr/share/gocode/src/**/*.go"], lambda s: ex.clean_line_comments(s, "//"))
    elif pkg == "erlang-src":
        yield from ex.tree_docs(root, pkg, ["usr/lib/erlang/lib/*/src/*.erl"], lambda s: ex.clean_line_comments(s, "%+"))
    elif pkg in HTML:
        yield from ex.tree_docs(root, pkg, HTML[pkg], lambda s: ex.clean_plain_paras(v1.clean_html(s)), skip=HTML_SKIP)
    if pkg in MAN:
        yield from v3.man_docs(root, pkg)
    if pkg == "lintian":
        yield from lintian_docs(root, pkg)


def fetch(pkgs: list[str], dest: Path, v3_debs: Path) -> dict[str, Path]:
    """The .deb of each package: from ``dest``, else copied from v3's debs folder, else apt-get download."""
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in pkgs:
        if not list(dest.glob(f"{pkg}_*.deb")) and (old := sorted(v3_debs.glob(f"{pkg}_*.deb"))):
            shutil.copy2(old[-1], dest / old[-1].name)
    return v1.fetch_debs(dest, tuple(pkgs))


def read_seen(v2_build: Path, v3_build: Path) -> tuple[dict, set[bytes]]:
    """v2's manifest and the sha1 of every paragraph of every v2 and v3 split."""
    record, seen = v3.read_v2(v2_build)
    for s in ("train", "validation", "test"):
        seen |= v3.paragraph_hashes(v3_build / f"{s}_new.txt")
    return record, seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v2-build", default="benchmarks/zoo/build_v2")
    ap.add_argument("--v3-build", default="benchmarks/zoo/build_v3")
    ap.add_argument("--out", default="benchmarks/zoo/build_v4")
    ap.add_argument("--packages", default=",".join(NEW_PACKAGES), help="comma-separated subset, in order")
    ap.add_argument("--extract-only", action="store_true", help="download and extract, skip dedup and splits")
    args = ap.parse_args(argv)
    pkgs = list(dict.fromkeys(p for p in args.packages.split(",") if p))
    bad = [p for p in pkgs if p not in NEW_PACKAGES]
    if bad:
        raise SystemExit(f"--packages: unknown {bad}; allowed: {', '.join(NEW_PACKAGES)}")
    out, v3b = Path(args.out), Path(args.v3_build)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    for pkg in pkgs:  # one package at a time: download, extract, next
        raw = out / "raw" / f"{pkg}.jsonl.gz"
        if not raw.exists():
            t0 = time.time()
            deb = fetch([pkg], out / "debs", v3b / "debs")[pkg]
            n = v3.extract(pkg, deb, raw, documents)
            print(f"{pkg:28s} {n:6d} documents  {raw.stat().st_size / 1e6:7.1f} MB gz  {time.time() - t0:5.0f}s",
                  flush=True)
    if args.extract_only:
        return 0
    debs = fetch(pkgs, out / "debs", v3b / "debs")
    v2rec, seen = read_seen(Path(args.v2_build), v3b)
    print(f"{len(seen)} v2/v3 paragraphs in the dedup set", flush=True)
    splits, owners, manifest, dropped = v3.split_packages(pkgs, debs, out / "raw", seen, LICENCES)
    record = {"v2": {"splits": v2rec["splits"], "packages": len(v2rec["packages"])},
              "v3": json.loads((v3b / "corpus.json").read_text())["splits"],
              "packages": manifest,
              "split_rule": "v2 and v3 splits unchanged; v4 packages: sha1(doc_id)%100 <2 test, <4 validation, "
                            "else train; paragraphs already in any v2 or v3 split or an earlier v4 package dropped",
              "duplicate_paragraphs_dropped": dropped, "splits": {}}
    v3.write_splits(out, splits, owners, "_new4", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
