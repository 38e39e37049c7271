"""Build the v3 reference corpus: v2's corpus plus new English sources, all offline by Debian name.

v2 (``corpus_v2.py``: 86 documentation packages, 187 MB of train text, 47.7M tokens) is taken as
it stands, splits included, and extended with sources whose text v2 never saw:

  texlive-*-doc (10 packages)  the PDF manuals of LaTeX packages, rendered to text with pdftotext
  linux-source-6.1             block comments of the kernel's C sources
  gcc-12-source, glibc-source, binutils-source, gdb-source
                               block comments of their C/C++ sources and their Texinfo manuals
  rust-src                     ``//!``/``///`` doc comments of the standard library, rustc-dev-guide (Markdown)
  golang-1.19-src              Go standard library doc comments
  emacs-el                     Emacs Lisp commentary (``;;`` lines)
  racket-doc, kicad-doc-en, swi-prolog-doc, bind9-doc, exim4-doc-html, zsh-doc   HTML manuals
  asymptote-doc                PDF manual
  tcl8.6-doc                   manual pages (groff)
  wesnoth-1.16-data, freeciv-data, crawl-common   story text, dialogue, help and descriptions of games
  sword-comm-tdavid, sword-comm-mhcc, sword-comm-scofield, sword-text-web, sword-dict-naves
                               public-domain SWORD modules (Spurgeon, Matthew Henry, Scofield, the World
                               English Bible, Nave's Topical Bible), decoded without libsword
  sagemath-doc, ns3-doc, dpdk-doc   reST sources of their Sphinx manuals; pari-doc (PDF), openmpi-doc (man)
  wireshark-doc, harden-doc, gap-doc, mit-scheme-doc, gnuplot-doc, gnumeric-doc   HTML/DocBook manuals
  python3-* (25 libraries: sage, sympy, scipy, numpy, statsmodels, matplotlib, astropy, pandas, OpenStack
  services, ...), ansible   docstrings (reST cleaned) and comment runs; python3-botocore: the
                               ``documentation`` fields of the AWS service models
  openjdk-17-source            Javadoc/block comments of the JDK class library (src.zip)
  libruby3.1, ruby-active*, ruby-action*, ruby-railties   RDoc comments of Ruby's stdlib and Rails

Kept from v2: the cleaning conventions (one paragraph a line, blank line between paragraphs,
documents joined by DOC_SEP), exact-paragraph dedup, and the split rule for new packages
(sha1(doc_id) % 100: <2 test, <4 validation, else train). Every paragraph of every v2 split
(v1_test, test, validation, the held-out gnucash-docs domain, train) is in the dedup set first, so
no new training text repeats an evaluation paragraph, and gnucash-docs stays held out. Every
paragraph must also read as English (``extract_v3.english_share``).

This build (Debian bookworm, 2026-11-26): 87 new packages, 314 MB of new train text in 66,184
documents (v2 has 187 MB), 6.4 MB validation_new, 6.6 MB test_new; 456k duplicate paragraphs dropped.
The per-package table (version, licence, .deb size, documents and bytes per split) is in corpus.json,
copied into benchmarks/zoo/data_v3/manifest.json.

Usage:  python benchmarks/zoo/corpus_v3.py --v2-build benchmarks/zoo/build_v2 --out benchmarks/zoo/build_v3
        (build_v2 comes from corpus_v2.py; .debs are fetched with apt-get download into <out>/debs)
Writes  <out>/raw/<pkg>.jsonl.gz  (extracted documents per package: the resumable step)
        <out>/{train,validation,test}_new.txt (+ .packages: the package of each document, one a line)
        and <out>/corpus.json (the v3 manifest: package,
        version, licence, .deb size, documents and bytes per split, duplicates dropped)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as v1
import corpus_v2 as v2
import extract_v3 as ex

from anybudget.io import atomic_write_json, atomic_write_text

TEXLIVE = tuple(f"texlive-{n}-doc" for n in (
    "humanities", "latex-recommended", "science", "latex-base", "metapost", "latex-extra", "pictures",
    "publishers", "pstricks", "fonts-extra"))
HTML = {
    "racket-doc": ["usr/share/doc/racket/**/*.html"],
    "kicad-doc-en": ["usr/share/doc/kicad/help/en/*.html"],
    "swi-prolog-doc": ["usr/share/swi-prolog/doc/**/*.html"],
    "bind9-doc": ["usr/share/doc/bind9-doc/arm/*.html"],
    "exim4-doc-html": ["usr/share/doc/exim4-doc-html/**/*.html"],
    "zsh-doc": ["usr/share/doc/zsh-common/html/*.html"],
    "wireshark-doc": ["usr/share/doc/wireshark/**/*.html"],
    "harden-doc": ["usr/share/doc/harden-doc/html/en-US/*.html"],
    "gap-doc": ["usr/share/doc/gap-doc/**/*.html"],
    "mit-scheme-doc": ["usr/share/doc/mit-scheme-doc/html/**/*.html"],
    "gnuplot-doc": ["usr/share/doc/gnuplot-doc/htmldocs/*.html", "usr/share/doc/gnuplot/htmldocs/*.html"],
    "gnumeric-doc": ["usr/share/help/C/gnumeric/*.xml"],
}
# Sphinx documentation: its reST sources (English tree only)
RST = {"sagemath-doc": "usr/share/doc/sagemath/html/en", "ns3-doc": "usr/share/doc/ns3", "dpdk-doc": "usr/share/doc/dpdk"}
SWORD = ("sword-comm-tdavid", "sword-comm-mhcc", "sword-comm-scofield", "sword-text-web", "sword-dict-naves")
MAN = ("tcl8.6-doc", "openmpi-doc")
PYTHON = ("python3-sage", "ansible", "python3-sympy", "python3-scipy", "python3-numpy", "python3-statsmodels",
          "python3-matplotlib", "python3-astropy", "python3-pandas", "python3-nova", "python3-neutron",
          "python3-networkx", "python3-twisted", "python3-sklearn", "python3-biopython", "python3-nltk",
          "python3-sqlalchemy", "python3-cinder", "python3-heat", "python3-ironic", "python3-manila",
          "python3-keystone", "python3-numba", "python3-tempest", "python3-openstacksdk")
HEADERS = {"llvm-15-dev": "usr/include/llvm-15/**/*.h", "libclang-15-dev": "usr/lib/llvm-15/include/**/*.h",
           "libboost1.74-dev": "usr/include/boost/**/*.hpp", "postgresql-server-dev-15": "usr/include/postgresql/**/*.h"}
GTKDOC = {"libgtk-3-doc": ["usr/share/doc/libgtk-3-doc/**/*.html"], "libglib2.0-doc": ["usr/share/doc/libglib2.0-doc/**/*.html"],
          "libgtk-4-doc": ["usr/share/doc/libgtk-4-doc/**/*.html"]}
RUBY = ("libruby3.1", "ruby-activesupport", "ruby-activerecord", "ruby-actionpack", "ruby-actionview",
        "ruby-activemodel", "ruby-railties")
SOURCES = ("linux-source-6.1", "gcc-12-source", "glibc-source", "binutils-source", "gdb-source")
NEW_PACKAGES = (*SOURCES, "rust-src", "golang-1.19-src", "emacs-el", *HTML, "asymptote-doc", "tcl8.6-doc",
                "wesnoth-1.16-data", "freeciv-data", "crawl-common", *TEXLIVE, *SWORD, *RST, "pari-doc",
                "openmpi-doc", *PYTHON, "python3-botocore", "openjdk-17-source", *RUBY, "r-doc-pdf",
                *HEADERS, *GTKDOC)
# Licences as stated in each package's debian/copyright (all Debian main, i.e. DFSG-free).
LICENCES = {
    **{p: "various free licences per package (LPPL-1.3c mostly; GPL, MIT, public domain), Debian main"
       for p in TEXLIVE},
    "linux-source-6.1": "GPL-2.0", "gcc-12-source": "GPL-3.0+ (manuals GFDL-1.3)",
    "glibc-source": "LGPL-2.1+ (manual GFDL-1.3)", "binutils-source": "GPL-3.0+ (manuals GFDL-1.3)",
    "gdb-source": "GPL-3.0+ (manuals GFDL-1.3)", "rust-src": "MIT OR Apache-2.0",
    "golang-1.19-src": "BSD-3-Clause", "emacs-el": "GPL-3.0+", "racket-doc": "MIT OR Apache-2.0",
    "kicad-doc-en": "GPL-3.0+ OR CC-BY-3.0", "swi-prolog-doc": "BSD-2-Clause", "bind9-doc": "MPL-2.0",
    "exim4-doc-html": "GPL-2.0+", "zsh-doc": "zsh licence (MIT-like)", "asymptote-doc": "LGPL-3.0+",
    "tcl8.6-doc": "Tcl/Tk licence (BSD-like)", "wesnoth-1.16-data": "GPL-2.0+",
    "freeciv-data": "GPL-2.0+", "crawl-common": "GPL-2.0+",
    **{p: "public domain (DistributionLicense in the module's .conf)" for p in SWORD},
    "sagemath-doc": "GPL-2.0+", "ns3-doc": "GPL-2.0", "dpdk-doc": "BSD-3-Clause", "pari-doc": "GPL-2.0+",
    "openmpi-doc": "BSD-3-Clause-Open-MPI", "wireshark-doc": "GPL-2.0+", "harden-doc": "GPL-2.0+",
    "gap-doc": "GPL-2.0+", "mit-scheme-doc": "GPL-2.0+", "gnuplot-doc": "gnuplot licence (free, Debian main)",
    "gnumeric-doc": "GPL-2.0+ / GFDL-1.1",
    "python3-sage": "GPL-2.0+", "ansible": "GPL-3.0+", "python3-sympy": "BSD-3-Clause",
    "python3-scipy": "BSD-3-Clause", "python3-numpy": "BSD-3-Clause", "python3-statsmodels": "BSD-3-Clause",
    "python3-matplotlib": "PSF-based matplotlib licence", "python3-astropy": "BSD-3-Clause",
    "python3-pandas": "BSD-3-Clause", "python3-nova": "Apache-2.0", "python3-neutron": "Apache-2.0",
    "python3-networkx": "BSD-3-Clause", "python3-twisted": "MIT", "python3-sklearn": "BSD-3-Clause",
    "python3-biopython": "Biopython licence / BSD-3-Clause", "python3-nltk": "Apache-2.0",
    "python3-sqlalchemy": "MIT", "python3-botocore": "Apache-2.0",
    "openjdk-17-source": "GPL-2.0 with Classpath exception",
    **{p: "Apache-2.0" for p in ("python3-cinder", "python3-heat", "python3-ironic", "python3-manila",
                                 "python3-keystone", "python3-tempest", "python3-openstacksdk")},
    "r-doc-pdf": "GPL-2.0+", "llvm-15-dev": "Apache-2.0 WITH LLVM-exception",
    "libclang-15-dev": "Apache-2.0 WITH LLVM-exception", "libboost1.74-dev": "BSL-1.0",
    "postgresql-server-dev-15": "PostgreSQL licence", "libgtk-3-doc": "LGPL-2.1+", "libglib2.0-doc": "LGPL-2.1+",
    "libgtk-4-doc": "LGPL-2.1+",
    "python3-numba": "BSD-2-Clause", "libruby3.1": "Ruby licence OR BSD-2-Clause",
    **{p: "MIT" for p in RUBY[1:]},
}


def man_docs(root: Path, pkg: str):
    """A package's manual pages (``usr/share/man/man*/*.gz``) as plain paragraphs, those of 300+ characters."""
    for f in sorted(root.glob("usr/share/man/man*/*.gz")):
        text = ex.clean_plain_paras(v2.clean_man(str(f)))
        if len(text) >= 300:
            yield f"{pkg}/{f.relative_to(root)}", text


def documents(pkg: str, root: Path):
    """Yield (doc_id, text) of one new package unpacked at ``root``."""
    if pkg in TEXLIVE or pkg in ("asymptote-doc", "pari-doc", "r-doc-pdf"):
        yield from ex.pdf_docs(root, pkg)
    elif pkg in SOURCES:
        yield from (ex.kernel_source_docs(root, pkg) if pkg.startswith("linux-source")
                    else ex.source_tarball_docs(root, pkg))
    elif pkg == "rust-src":
        yield from ex.tree_docs(root, pkg, ["usr/src/rustc-*/library/**/*.rs"],
                                lambda s: ex.clean_line_comments(s, "//"))
        yield from ex.tree_docs(root, pkg, ["usr/src/rustc-*/src/doc/rustc-dev-guide/**/*.md"], ex.clean_markdown)
    elif pkg == "golang-1.19-src":
        yield from ex.tree_docs(root, pkg, ["usr/share/go-1.19/src/**/*.go"], lambda s: ex.clean_line_comments(s, "//"))
    elif pkg == "emacs-el":
        yield from ex.tree_docs(root, pkg, ["usr/share/emacs/*/lisp/**/*.el.gz"],
                                lambda s: ex.clean_line_comments(s, ";;"))
    elif pkg in HTML:
        yield from ex.tree_docs(root, pkg, HTML[pkg], lambda s: ex.clean_plain_paras(v1.clean_html(s)))
    elif pkg in SWORD:
        yield from ex.sword_docs(root, pkg)
    elif pkg in RST:
        yield from ((f"{pkg}/{Path(f).relative_to(root)}", t) for f, c in v2._rst_sources(root, RST[pkg])
                    if len(t := ex.clean_plain_paras(c(Path(f).read_text(encoding="utf-8", errors="replace")))) >= 300)
    elif pkg == "ansible":
        yield from ex.ansible_docs(root, pkg, v1.clean_rst)
    elif pkg in PYTHON:
        yield from ex.python_docs(root, pkg, v1.clean_rst)
    elif pkg in HEADERS:
        yield from ex.tree_docs(root, pkg, [HEADERS[pkg]], ex.clean_c_all)
    elif pkg in GTKDOC:
        yield from ex.tree_docs(root, pkg, GTKDOC[pkg], lambda s: ex.clean_plain_paras(v1.clean_html(s)))
    elif pkg in RUBY:
        yield from ex.tree_docs(root, pkg, ["usr/**/*.rb"], lambda s: ex.clean_line_comments(s, "#"))
    elif pkg == "python3-botocore":
        yield from ex.botocore_docs(root, pkg, v1.clean_html)
    elif pkg == "openjdk-17-source":
        yield from ex.zip_docs(root, pkg, "usr/lib/jvm/*/lib/src.zip", ".java", ex.clean_javadoc)
    elif pkg in MAN:
        yield from man_docs(root, pkg)
    elif pkg == "wesnoth-1.16-data":
        yield from ex.wesnoth_docs(root, pkg)
    elif pkg == "freeciv-data":
        yield from ex.gettext_docs(root, pkg, ["usr/share/games/freeciv/**/*.ruleset",
                                               "usr/share/games/freeciv/**/*.txt"])
    elif pkg == "crawl-common":
        yield from ex.tree_docs(root, pkg, ["usr/share/crawl/dat/descript/*.txt", "usr/share/crawl/docs/*.txt"],
                                ex.clean_plain_paras)
    else:
        raise ValueError(f"pkg={pkg!r}: no extractor (known: {', '.join(NEW_PACKAGES)})")


def extract(pkg: str, deb: Path, raw: Path, docs=None) -> int:
    """Unpack one .deb and write its documents to ``raw`` (jsonl.gz, written atomically). ``docs``:
    the corpus's ``documents(pkg, root)`` (default this file's; corpus_v4 passes its own)."""
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / pkg
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        part = raw.with_suffix(".part")
        with gzip.open(part, "wt", encoding="utf-8") as fh:
            for doc_id, text in (docs or documents)(pkg, root):
                fh.write(json.dumps([doc_id, text]) + "\n")
                n += 1
        part.rename(raw)
    return n


def paragraph_hashes(path: Path) -> set[bytes]:
    """The sha1 of every paragraph of every document of a split file (the dedup set's entries)."""
    return {hashlib.sha1(p.encode()).digest()
            for doc in path.read_text(encoding="utf-8").split(v1.DOC_SEP) for p in doc.split("\n\n")}


def read_v2(build: Path) -> tuple[dict, set[bytes]]:
    record = json.loads((build / "corpus.json").read_text())
    seen: set[bytes] = set()
    for s in record["splits"]:
        seen |= paragraph_hashes(build / f"{s}.txt")
    return record, seen


def split_packages(pkgs: list[str], debs: dict[str, Path], raw_dir: Path, seen: set[bytes], licences: dict):
    """Each package's extracted documents (``raw_dir/<pkg>.jsonl.gz``), in package order: paragraphs
    already in ``seen`` dropped (``seen`` grows, so later packages dedup against earlier ones),
    documents under 200 characters left out, the rest split by ``new_split``. Returns (documents per
    split, their packages, the per-package manifest, paragraphs dropped)."""
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    owners: dict[str, list[str]] = {s: [] for s in splits}  # the package of each document
    manifest, dropped = {}, 0
    for pkg in pkgs:
        deb = debs[pkg]
        m = manifest[pkg] = {"deb": deb.name, "version": deb.name.split("_")[1].replace("%3a", ":"),
                             "deb_bytes": deb.stat().st_size, "licence": licences[pkg],
                             "documents": {}, "bytes": {}, "duplicate_paragraphs_dropped": 0}
        with gzip.open(raw_dir / f"{pkg}.jsonl.gz", "rt", encoding="utf-8") as fh:
            for line in fh:
                doc_id, text = json.loads(line)
                text, n_dup = dedup(text, seen)
                m["duplicate_paragraphs_dropped"] += n_dup
                if len(text) < 200:
                    continue
                s = new_split(doc_id)
                splits[s].append(text)
                owners[s].append(pkg)
                m["documents"][s] = m["documents"].get(s, 0) + 1
                m["bytes"][s] = m["bytes"].get(s, 0) + len(text.encode())
        dropped += m["duplicate_paragraphs_dropped"]
        print(f"{pkg:28s} {sum(m['bytes'].values()) / 1e6:8.1f} MB kept  {m['documents']}  "
              f"{m['duplicate_paragraphs_dropped']} duplicates", flush=True)
    return splits, owners, manifest, dropped


def write_splits(out: Path, splits: dict, owners: dict, suffix: str, record: dict) -> None:
    """``out/<split><suffix>.txt`` and ``.packages`` (atomic), their sizes into ``record["splits"]``,
    and the record as ``out/corpus.json``."""
    for s, docs in splits.items():
        text = v1.DOC_SEP.join(docs)
        atomic_write_text(out / f"{s}{suffix}.txt", text)
        atomic_write_text(out / f"{s}{suffix}.packages", "\n".join(owners[s]) + "\n")
        record["splits"][f"{s}{suffix}"] = {"documents": len(docs), "bytes": len(text.encode())}
    atomic_write_json(out / "corpus.json", record)
    print(json.dumps(record["splits"], indent=1))


dedup = v2.dedup  # one exact-paragraph rule for both corpora


new_split = v2.bucket_split  # v2's rule for documents of packages v1 did not have


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v2-build", default="benchmarks/zoo/build_v2")
    ap.add_argument("--out", default="benchmarks/zoo/build_v3")
    ap.add_argument("--packages", default=",".join(NEW_PACKAGES), help="comma-separated subset, in order")
    args = ap.parse_args(argv)
    pkgs = [p for p in args.packages.split(",") if p]
    bad = [p for p in pkgs if p not in NEW_PACKAGES]
    if bad:
        raise SystemExit(f"--packages: unknown {bad}; allowed: {', '.join(NEW_PACKAGES)}")
    out = Path(args.out)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    debs = v1.fetch_debs(out / "debs", tuple(pkgs))
    for pkg in pkgs:  # extraction: resumable, one package at a time
        raw = out / "raw" / f"{pkg}.jsonl.gz"
        if not raw.exists():
            t0 = time.time()
            n = extract(pkg, debs[pkg], raw)
            print(f"{pkg:28s} {n:6d} documents  {raw.stat().st_size / 1e6:7.1f} MB gz  {time.time() - t0:5.0f}s",
                  flush=True)
    v2rec, seen = read_v2(Path(args.v2_build))
    splits, owners, manifest, dropped = split_packages(pkgs, debs, out / "raw", seen, LICENCES)
    record = {"v2": {"splits": v2rec["splits"], "packages": len(v2rec["packages"])},
              "packages": manifest,
              "split_rule": "v2 splits unchanged (v1_test, test, validation, heldout=gnucash-docs, train); "
                            "new packages: sha1(doc_id)%100 <2 test, <4 validation, else train; paragraphs "
                            "already in any v2 split or an earlier package dropped",
              "duplicate_paragraphs_dropped": dropped, "splits": {}}
    write_splits(out, splits, owners, "_new", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
