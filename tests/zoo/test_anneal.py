"""Reference-LM annealing: the no-leak check, document tokenization, the general slice, the mixture sampler, a CPU smoke run."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ZOO = Path(__file__).resolve().parents[2] / "benchmarks/zoo"
sys.path.insert(0, str(ZOO))

import anneal_data as ad
import anneal_lm

LONG = "The driver reports the fan speed in rotations per minute and raises an alarm when it falls below the limit " * 3


def test_leak_check_finds_whole_documents_and_long_paragraphs():
    train = [f"Intro {i}.\n\n{LONG}{i}" for i in range(4)] + ["A unique document about sockets.\n\nshort"]
    test = ["Intro 9.\n\n" + LONG + "9", "Something else entirely, not in train at all."]
    r = ad.leak_check(train, test, min_chars=100)
    assert (r["test_documents_in_train"], r["test_paragraphs"], r["test_paragraphs_in_train"]) == (0, 1, 0)
    assert r["ok"]
    test.append(train[2])  # a whole training document in the test set
    r = ad.leak_check(train, test, min_chars=100)
    assert r["test_documents_in_train"] == 1 and r["test_paragraphs_in_train"] == 1 and not r["ok"]
    # whitespace differences do not hide a shared paragraph; short paragraphs do not count
    r = ad.leak_check(train, ["New text.\n\n" + LONG.replace(" ", "  ") + "3\n\nshort"], min_chars=100)
    assert r["test_paragraphs_in_train"] == 1 and r["test_documents_in_train"] == 0 and not r["ok"]
    with pytest.raises(ValueError, match="min_chars=0"):
        ad.leak_check(train, test, min_chars=0)


def test_encode_documents_puts_bos_at_every_document_start(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(anneal_lm.ASSETS)
    docs = ad.split_documents(ad.DOC_SEP.join(["The kernel.", "  ", "A second document\n\nwith two paragraphs."]))
    assert len(docs) == 2
    ids = ad.encode_documents(tok, docs)
    bos, eos = tok.convert_tokens_to_ids(ad.BOS), tok.convert_tokens_to_ids(ad.EOS)
    assert ids.dtype == np.uint16 and ids[0] == bos and ids[-1] == eos
    starts = np.flatnonzero(ids == bos)
    assert starts.size == 2 and ids[starts[1] - 1] == eos
    assert tok.decode(ids[1: starts[1] - 1]) == "The kernel."
    path = tmp_path / "x.u16.xz"
    ad.write_u16_xz(path, ids)
    assert np.array_equal(anneal_lm.read_ids(path), ids.astype(np.int64))


def test_document_slice_takes_whole_documents_spread_through_the_file():
    rng = np.random.default_rng(0)
    docs = [np.concatenate([[1], rng.integers(5, 100, size=rng.integers(5, 50))]) for _ in range(400)]
    for i, d in enumerate(docs):
        d[1] = 1000 + i  # document tag
    ids = np.concatenate(docs)
    sl = ad.document_slice(ids, 1, 2000)
    assert 2000 <= sl.size < 2000 + 60 and sl[0] == 1
    tags = sl[np.flatnonzero(sl == 1) + 1] - 1000
    assert np.all(np.diff(tags) > 0) and tags[-1] > 300  # in order, from the whole file
    for t in tags:  # each document whole
        assert np.array_equal(sl[np.flatnonzero(sl == 1)[list(tags).index(t)]:][: len(docs[t])], docs[t])
    with pytest.raises(ValueError, match="no document start"):
        ad.document_slice(ids, 7777, 10)


def test_mixture_fractions_and_windows_inside_their_file():
    indomain = np.arange(0, 5000)  # values tell the source and the position
    general = np.arange(100_000, 100_300)
    seq = 64
    for frac in (0.0, 0.3, 0.7, 1.0):
        mix = ad.Mixture(indomain, general, frac, seq, seed=1)
        n_in = n = 0
        for _ in range(50):
            x, is_in = mix.batch(6)
            assert x.shape == (6, seq + 1)
            for row, flag in zip(x, is_in):
                assert np.all(np.diff(row) == 1)  # contiguous, never across a file end
                src = indomain if flag else general
                assert src[0] <= row[0] and row[-1] <= src[-1]
            n_in, n = n_in + is_in.sum(), n + is_in.size
            assert abs(n_in - frac * n) <= 1  # stratified: the running count stays within a row
    with pytest.raises(ValueError, match="frac=1.5"):
        ad.Mixture(indomain, general, 1.5, seq)
    with pytest.raises(ValueError, match="general: 300 tokens"):
        ad.Mixture(indomain, general, 0.5, 400)


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [anneal_lm.lr_at(s, 100, 10, 1e-3) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:])) and lrs[-1] == pytest.approx(1e-3 / 90)
    assert anneal_lm.lr_at(100, 100, 10, 1e-3) == 0.0


def test_smoke_run_writes_records_and_a_package_readable_pack(tmp_path):
    out = tmp_path / "out"
    assert anneal_lm.main(["--smoke", "--out", str(out), "--indomain-frac", "0.5,1"]) == 0
    rec = json.loads((out / "reflm_anneal.json").read_text())
    m = rec["metrics"]
    assert [(r["lr"], r["indomain_frac"]) for r in m["runs"]] == [(3e-4, 0.5), (1e-3, 0.5), (3e-4, 1.0), (1e-3, 1.0)]
    assert all(r["steps_done"] == 6 and abs(r["indomain_rows_frac"] - r["indomain_frac"]) <= 1 / 24 for r in m["runs"])
    assert set(m["start"]) == set(anneal_lm.EVAL_SETS)
    best = min([m["start"]["v1_validation"]] + [c["eval"]["v1_validation"]["bits_per_byte"]
                                               for r in m["runs"] for c in r["curve"] if "eval" in c])
    assert m["selected"]["bits_per_byte"]["v1_validation"] == pytest.approx(best)
    assert (out / "anneal.png").stat().st_size > 0
    unpack = tmp_path / "unpack"
    unpack.mkdir()
    subprocess.run(f"cat {out}/pack.tar.part-* | xz -dcf | tar xf - -C {unpack}", shell=True, check=True)
    assert (unpack / "model/model.safetensors").is_file() and (unpack / "loss.png").is_file()
    tr = json.loads((unpack / "train_record.json").read_text())
    for key in ("params", "tokens_seen", "epochs", "train_tokens", "train_time_s", "eval", "samples"):
        assert key in tr["metrics"]
    assert tr["config"]["world_size"] == 1 and "gpu" in tr["device"]


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        anneal_lm.main(["--smoke", "--out", str(tmp_path), "--indomain-frac", "1.2"])
    assert "--indomain-frac 1.2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        anneal_lm.main(["--smoke", "--out", str(tmp_path), "--eval-sets", "v1_test"])
    assert "must include v1_validation" in capsys.readouterr().err


def test_prepare_writes_token_files_and_refuses_a_leak(tmp_path):
    from anneal_lm import DATA2

    docs = [f"Document {i}. " + LONG + str(i) for i in range(6)]
    (tmp_path / "b1").mkdir()
    (tmp_path / "b2").mkdir()
    (tmp_path / "b1/train.txt").write_text(ad.DOC_SEP.join(docs[:4]), encoding="utf-8")
    (tmp_path / "b1/validation.txt").write_text(docs[4], encoding="utf-8")
    (tmp_path / "b2/v1_test.txt").write_text(docs[5], encoding="utf-8")
    (tmp_path / "b2/train.txt").write_text(ad.DOC_SEP.join(docs[:3]), encoding="utf-8")
    ad.write_u16_xz(tmp_path / "gen.u16.xz", anneal_lm.read_ids(DATA2 / "heldout.u16.xz")[:30_000])
    common = ["--prepare", "--build", str(tmp_path / "b1"), "--build-v2", str(tmp_path / "b2"),
              "--general-source", str(tmp_path / "gen.u16.xz"), "--general-tokens", "5000"]
    assert anneal_lm.main([*common, "--carry", str(tmp_path / "c"), "--mirror", str(tmp_path / "m")]) == 0
    rec = json.loads((tmp_path / "c/prepare.json").read_text())
    assert rec["leak_check"]["v1_test"]["ok"] and rec["indomain_documents_in_v2_train"] == 3
    ids = anneal_lm.read_ids(tmp_path / "c/indomain.u16.xz")
    assert rec["files"]["indomain"]["tokens"] == ids.size and (ids == ids[0]).sum() == 4  # 4 documents, 4 BOS
    assert 5000 <= rec["files"]["general"]["tokens"] < 8000
    assert (tmp_path / "m/general.u16.xz").read_bytes() == (tmp_path / "c/general.u16.xz").read_bytes()
    (tmp_path / "b2/v1_test.txt").write_text(docs[2], encoding="utf-8")  # a training document in the test set
    with pytest.raises(SystemExit, match="leak check failed"):
        anneal_lm.main([*common, "--carry", str(tmp_path / "c2"), "--mirror", ""])
    assert not (tmp_path / "c2").exists()


def test_pack_without_the_xz_program_is_still_xz(tmp_path, monkeypatch):
    monkeypatch.setattr(anneal_lm.shutil, "which", lambda name: None)
    assert anneal_lm.main(["--smoke", "--out", str(tmp_path / "out")]) == 0
    data = b"".join(p.read_bytes() for p in sorted((tmp_path / "out").glob("pack.tar.part-*")))
    assert data[:6] == b"\xfd7zXZ\x00"
    (tmp_path / "u").mkdir()
    subprocess.run(f"cat {tmp_path}/out/pack.tar.part-* | xz -dcf | tar xf - -C {tmp_path}/u", shell=True, check=True)
    assert (tmp_path / "u/model/model.safetensors").is_file()


def test_when_no_step_beats_the_start_the_start_is_saved(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    made = []
    real = anneal_lm.smoke_setup
    monkeypatch.setattr(anneal_lm, "smoke_setup", lambda args, work: made.append(work) or real(args, work))
    assert anneal_lm.main(["--smoke", "--out", str(tmp_path / "out"), "--lr", "0.99"]) == 0  # diverges
    m = json.loads((tmp_path / "out/reflm_anneal.json").read_text())["metrics"]
    assert m["selected"]["step"] == 0 and m["runs"][0]["final"]["v1_validation"] > m["start"]["v1_validation"]
    (tmp_path / "u").mkdir()
    subprocess.run(f"cat {tmp_path}/out/pack.tar.part-* | xz -dcf | tar xf - -C {tmp_path}/u", shell=True, check=True)
    saved, init = load_file(tmp_path / "u/model/model.safetensors"), load_file(made[0] / "init/model.safetensors")
    assert saved.keys() == init.keys()
    for k in saved:
        assert saved[k].dtype.is_floating_point and saved[k].equal(init[k].to(saved[k].dtype)), k
