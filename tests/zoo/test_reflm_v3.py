"""v3 reference-LM data path: extractors, part splitting, staged-part verification, CPU smoke run."""

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

ZOO = Path(__file__).resolve().parents[2] / "benchmarks/zoo"
sys.path.insert(0, str(ZOO))

import corpus_v3
import extract_v3 as ex
import tokenize_v3
import train_lm_v3

ENGLISH = ("The kernel calls this function when a device is removed, and it must release all of the "
           "resources that were taken in the probe routine before it returns to the caller.")


def test_english_filter_keeps_prose_and_drops_german_and_code():
    assert ex.prose(ENGLISH)
    german = ("Der Befehl erzeugt im Dokument die Kurzform der Abkürzung, und das Paket unterstützt "
              "auch hyperref in einer PDF-Datei mit einem Mausklick.")
    assert not ex.prose(german)
    assert not ex.prose("x = foo(bar, baz); y = qux[3] + 7; return x * y; // end of the loop here")


def test_pdf_text_joins_lines_and_undoes_hyphenation():
    raw = ("The package provides a com-\nmand that is used in the preamble of the document and it\n"
           "can be given options.\n\n12\n\f")
    assert ex.clean_pdf_text(raw) == ("The package provides a command that is used in the preamble of the "
                                      "document and it can be given options.")


def test_c_comments_keep_prose_and_drop_licences():
    src = ("/* SPDX-License-Identifier: GPL-2.0 */\n/*\n * Copyright (C) 2001 Someone\n * This program is free "
           "software; you can redistribute it.\n */\nint x;\n/**\n * foo() - " + ENGLISH[:ENGLISH.index(" ", 60)] + "\n *"
           + ENGLISH[ENGLISH.index(" ", 60):] + "\n * @dev: the device\n */\n")
    assert ex.clean_c_comments(src) == ENGLISH


def test_texinfo_and_line_comments():
    texi = f"@node Top\n@chapter Intro\n@cindex x\n{ENGLISH} See @code{{foo}}.\n@example\nint a;\n@end example\n"
    assert ex.clean_texinfo(texi) == f"{ENGLISH} See foo."
    cut = ENGLISH.index(" ", 70)
    rs = f"/// {ENGLISH[:cut]}\n///{ENGLISH[cut:]}\nfn main() {{}}\n// short\n"
    assert ex.clean_line_comments(rs, "//") == ENGLISH


def test_sword_blocks_round_trip(tmp_path):
    blocks = [f"<p>{ENGLISH} Block {i}.</p>" for i in range(3)]
    data, index = b"", b""
    for b in blocks:
        z = zlib.compress(b.encode())
        index += struct.pack("<III", len(data), len(z), len(b))
        data += z
    mod = tmp_path / "usr/share/sword/modules/comments/zcom/m"
    mod.mkdir(parents=True)
    (mod / "ot.bzs").write_bytes(index)
    (mod / "ot.bzz").write_bytes(data)
    assert list(ex._sword_blocks(mod / "ot.bzs", mod / "ot.bzz", 12)) == blocks
    docs = list(ex.sword_docs(tmp_path, "sword-x"))
    assert docs == []  # each block is < 300 characters: too short to be a document
    z = zlib.compress((f"<p>{ENGLISH}</p>" * 3).encode())
    (mod / "ot.bzs").write_bytes(struct.pack("<III", 0, len(z), 0))
    (mod / "ot.bzz").write_bytes(z)
    [(doc_id, text)] = ex.sword_docs(tmp_path, "sword-x")
    assert doc_id.startswith("sword-x/") and text == "\n\n".join([ENGLISH] * 3)


def test_split_parts_respects_the_cap_at_document_boundaries():
    assert tokenize_v3.split_parts([4, 4, 4, 10, 1], 8) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert tokenize_v3.split_parts([3, 3], 100) == [(0, 2)]


def _stage(tmp_path, n_parts=2, tokens=40_000):
    """Tiny staged parts + manifest shaped like tokenize_v3's, under tmp_path."""
    rng = np.random.default_rng(0)
    manifest = {"parts": [], "eval": {}, "train_tokens": 0}
    for k in range(1, n_parts + 1):
        e = tokenize_v3.write_part(tmp_path / f".carry/reflm3/part{k}/train.u16.xz",
                                   rng.integers(3, 16384, tokens).astype(np.uint16), root=tmp_path)
        manifest["parts"].append({**e, "part": f"part{k}"})
        manifest["train_tokens"] += tokens
    for name in ("validation_new", "test_new"):
        e = tokenize_v3.write_part(tmp_path / f".carry/reflm3/part1/{name}.u16.xz",
                                   rng.integers(3, 16384, 3000).astype(np.uint16), root=tmp_path)
        manifest["eval"][name] = {**e, "part": "part1"}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return manifest, path


def test_verify_names_missing_and_damaged_parts(tmp_path, capsys):
    manifest, mpath = _stage(tmp_path)
    assert len(train_lm_v3.verify(manifest, tmp_path)) == 4
    assert len(train_lm_v3.verify(manifest, tmp_path, ["part2"])) == 1
    with pytest.raises(train_lm_v3.StagingError, match=r"parts=\['part9'\] not in the manifest"):
        train_lm_v3.verify(manifest, tmp_path, ["part9"])
    train, evals = train_lm_v3.load(manifest, tmp_path)
    assert train.dtype == np.uint16 and train.size == 80_000 and set(evals) == {"validation_new", "test_new"}
    (tmp_path / ".carry/reflm3/part2/train.u16.xz").unlink()
    with pytest.raises(train_lm_v3.StagingError, match=r"part2: .*missing(.|\n)*\.carry/reflm3/part2"):
        train_lm_v3.verify(manifest, tmp_path)
    rc = train_lm_v3.main(["--verify-only", "--expect", "part1,part2", "--root", str(tmp_path), "--manifest", str(mpath)])
    assert rc == train_lm_v3.MISSING_EXIT and "part2" in capsys.readouterr().err
    assert train_lm_v3.main(["--verify-only", "--expect", "part1", "--root", str(tmp_path),
                             "--manifest", str(mpath)]) == 0
    p1 = tmp_path / ".carry/reflm3/part1/train.u16.xz"
    p1.write_bytes(p1.read_bytes()[:-1] + b"\0")
    with pytest.raises(train_lm_v3.StagingError, match="part1: .*differs"):
        train_lm_v3.verify(manifest, tmp_path, ["part1"])


def test_smoke_run_trains_and_evaluates_the_new_sets(tmp_path):
    _, mpath = _stage(tmp_path)
    out = tmp_path / "out"
    assert train_lm_v3.main(["--smoke", "--out", str(out), "--root", str(tmp_path), "--manifest", str(mpath)]) == 0
    rec = json.loads((out / "train_record.json").read_text())
    assert rec["name"] == "reflm_v3_train"
    assert rec["metrics"]["train_tokens"] == 80_000 and rec["metrics"]["steps"] == 12
    assert {"validation_new", "test_new", "v1_test", "heldout"} <= set(rec["metrics"]["eval"])
    assert all(np.isfinite(r["bits_per_byte"]) for r in rec["metrics"]["eval"].values())
    assert sorted(p.name for p in out.glob("pack.tar.part-*"))


def test_v2_paragraphs_never_reenter_and_splits_follow_the_hash(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    held = "A paragraph of the v1 test documents that must stay out of training, whatever package repeats it."
    for s in ("train", "validation", "test", "v1_test", "heldout"):
        (v2 / f"{s}.txt").write_text(held if s == "v1_test" else f"{s} text")
    (v2 / "corpus.json").write_text(json.dumps({"splits": {s: {} for s in ("train", "validation", "test",
                                                                             "v1_test", "heldout")}}))
    _, seen = corpus_v3.read_v2(v2)
    text, dropped = corpus_v3.dedup(f"{ENGLISH}\n\n{held}\n\n{ENGLISH}", seen)
    assert (text, dropped) == (ENGLISH, 2)
    assert corpus_v3.new_split("a/b") in ("train", "validation", "test")
    assert {corpus_v3.new_split(f"pkg/{i}") for i in range(400)} == {"train", "validation", "test"}
    with pytest.raises(ValueError, match="pkg='nope'"):
        list(corpus_v3.documents("nope", tmp_path))


def test_ansible_documentation_and_python_docstrings():
    src = ('DOCUMENTATION = """\nmodule: x\nshort_description: Manage things\noptions:\n  name:\n    description:\n'
           '      - The name of the package that is to be installed on the host, like C(foo).\n"""\n'
           'def f():\n    """' + ENGLISH + '"""\n')
    assert ex.ansible_doc_text(src) == "name: The name of the package that is to be installed on the host, like foo."
    assert ex.clean_python(src, lambda d: d) == ENGLISH


def test_rebuild_rules_of_the_committed_corpus(tmp_path):
    """Two rules that reproduce the committed v2/v3 builds: python-scipy-doc gives no documents, and a
    Wesnoth line's gendered variant keeps its ``female^`` prefix (so it is not a duplicate of the line)."""
    import corpus_v2

    assert list(corpus_v2.new_documents("python-scipy-doc", tmp_path)) == []
    line = "I hope I have a chance to retreat after this battle, before the orcs reach the bridge!"
    cfg = tmp_path / "usr/share/games/wesnoth/1.16/data/core/x.cfg"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'message= _ "{line}"\nfemale_message= _ "female^{line}"\n'
                   f'[a]\n text= _ "{ENGLISH}"\n[/a]\n')
    [(doc_id, text)] = ex.wesnoth_docs(tmp_path, "wesnoth-1.16-data")
    assert doc_id == "wesnoth-1.16-data/usr/share/games/wesnoth/1.16/data/core/x.cfg"
    assert text.split("\n\n") == [line, f"female^{line}", ENGLISH]
