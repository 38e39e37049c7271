"""Corpus v4 extractors (Lisp strings, JSON game text, lintian tags) and its dedup against v2 and v3 splits."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[2] / "benchmarks/zoo"
sys.path.insert(0, str(ZOO))

import corpus as v1
import corpus_v4
import extract_v4 as ex4

ENGLISH = ("The kernel calls this function when a device is removed, and it must release all of the "
           "resources that were taken in the probe routine before it returns to the caller.")
OTHER = ("When the buffer is full the writer waits until a reader has taken at least one of the "
         "entries, so that no data is lost and the order of the entries is kept as it was.")


def test_lisp_strings_take_docstrings_and_skip_comments_names_and_code():
    src = ('(defun foo (x)\n  "Return X doubled.\\nThis is used when the \\"frob\\" mode is on, and it\n'
           'is called by \\\\[foo-mode] in every buffer that has the mode enabled.\n\n' + ENGLISH + '"\n'
           '  (* 2 x))\n;; a comment with a quote " that must not open a string, ' + OTHER + '\n'
           '(defvar bar "short name")\n(setq c ?\\")\n(message "%s: %d" a b)\n')
    out = ex4.clean_lisp_strings(src).split("\n\n")
    assert out == [('Return X doubled. This is used when the "frob" mode is on, and it is called by foo-mode '
                    'in every buffer that has the mode enabled.'), ENGLISH]


def test_lisp_strings_reduce_xdoc_markup():
    src = f'(defxdoc foo :short "Foo." :long "<p>{ENGLISH}</p> <p>See @(see bar) for <tt>how</tt> the {OTHER[5:]}</p>")'
    assert ex4.clean_lisp_strings(src).split("\n\n") == [ENGLISH, f"See bar for how the {OTHER[5:]}"]


def test_json_prose_walks_nested_values_and_keeps_only_prose():
    data = [{"id": "knife", "name": {"str": "knife"}, "description": ENGLISH,
             "talk": {"responses": [{"text": OTHER}, {"text": "Bye."}]}, "weight": 3},
            {"type": "x", "list": ["a b c", 7, None]}]
    assert ex4.json_prose(data) == f"{ENGLISH}\n\n{OTHER}"


def test_json_docs_skip_broken_files(tmp_path):
    d = tmp_path / "usr/share/games/cataclysm-dda/json"
    d.mkdir(parents=True)
    (d / "a.json").write_text(json.dumps({"description": " ".join([ENGLISH, OTHER, ENGLISH[::-1][:5]])}))
    (d / "b.json").write_text("{not json")
    docs = list(ex4.json_docs(tmp_path, "cdda", ["usr/share/games/cataclysm-dda/**/*.json"]))
    assert [doc_id for doc_id, _ in docs] == ["cdda/usr/share/games/cataclysm-dda/json/a.json"]


def test_lintian_explanations(tmp_path):
    d = tmp_path / "usr/share/lintian/tags/d"
    d.mkdir(parents=True)
    cut = ENGLISH.index(" ", 50)
    (d / "t.tag").write_text(f"Tag: t\nSeverity: warning\nExplanation: {ENGLISH[:cut]}\n{ENGLISH[cut:]}\n .\n"
                             f" {OTHER}\nSee-Also: policy 1\n")
    assert list(corpus_v4.lintian_docs(tmp_path, "lintian")) == [
        ("lintian/usr/share/lintian/tags/d/t.tag", f"{ENGLISH}\n\n{OTHER}")]


def test_seen_set_holds_every_v2_and_v3_split(tmp_path):
    v2b, v3b = tmp_path / "v2", tmp_path / "v3"
    v2b.mkdir()
    v3b.mkdir()
    splits = {s: f"{s} paragraph one\n\n{s} paragraph two" for s in ("train", "validation", "test", "v1_test", "heldout")}
    (v2b / "corpus.json").write_text(json.dumps({"splits": {s: {} for s in splits}, "packages": {}}))
    for s, text in splits.items():
        (v2b / f"{s}.txt").write_text(text + v1.DOC_SEP + f"{s} second document")
    for s in ("train", "validation", "test"):
        (v3b / f"{s}_new.txt").write_text(f"v3 {s} text" + v1.DOC_SEP + f"v3 {s} more")
    _, seen = corpus_v4.read_seen(v2b, v3b)
    assert len(seen) == 5 * 3 + 3 * 2
    text, dropped = corpus_v4.v3.dedup("heldout paragraph two\n\nv3 test more\n\nnew one", seen)
    assert (text, dropped) == ("new one", 2)


def test_unknown_package_is_named():
    with pytest.raises(SystemExit, match="nope"):
        corpus_v4.main(["--packages", "emacs-el,nope", "--out", "/nonexistent/x"])


def test_php_doc_comments_drop_tag_lines():
    src = f"<?php\n/**\n * {ENGLISH}\n *\n * @param string $x the name\n * @return bool\n */\nfunction f($x) {{}}\n"
    assert corpus_v4.clean_php(src) == ENGLISH


def test_documents_rejects_an_unknown_package(tmp_path):
    with pytest.raises(ValueError, match="pkg='nope'"):
        next(corpus_v4.documents("nope", tmp_path))


def test_each_package_once():
    assert len(set(corpus_v4.NEW_PACKAGES)) == len(corpus_v4.NEW_PACKAGES)
    assert set(corpus_v4.LICENCES) == set(corpus_v4.NEW_PACKAGES)


def test_split_packages_dedups_across_packages_and_write_splits_records_them(tmp_path):
    import gzip

    raw = tmp_path / "raw"
    raw.mkdir()
    debs = {}
    for pkg, docs in (("a", [["a/1", f"{ENGLISH}\n\n{OTHER}"], ["a/2", "too short"]]), ("b", [["b/1", f"{OTHER}\n\n{ENGLISH}"]])):
        with gzip.open(raw / f"{pkg}.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(d) + "\n" for d in docs)
        debs[pkg] = tmp_path / f"{pkg}_1.0%3a2_all.deb"
        debs[pkg].write_bytes(b"x" * 7)
    seen = {hashlib.sha1(b"already seen").digest()}
    splits, owners, manifest, dropped = corpus_v4.v3.split_packages(["a", "b"], debs, raw, seen, {"a": "MIT", "b": "GPL"})
    assert sum(map(len, splits.values())) == 1 and dropped == 2  # b's paragraphs were both in a: nothing left
    assert manifest["a"]["version"] == "1.0:2" and manifest["a"]["licence"] == "MIT" and manifest["b"]["documents"] == {}
    s = next(k for k, v in splits.items() if v)
    assert owners[s] == ["a"] and splits[s] == [f"{ENGLISH}\n\n{OTHER}"]
    record = {"splits": {}}
    corpus_v4.v3.write_splits(tmp_path, splits, owners, "_new4", record)
    assert (tmp_path / f"{s}_new4.txt").read_text() == v1.DOC_SEP.join(splits[s]) and (tmp_path / f"{s}_new4.packages").read_text() == "a\n"
    assert record["splits"][f"{s}_new4"]["documents"] == 1
    assert json.loads((tmp_path / "corpus.json").read_text()) == record
