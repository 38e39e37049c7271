"""Reference LM v4 path: re-split staging, training across calls, the in-domain anneal phase, the size check."""

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ZOO = Path(__file__).resolve().parents[2] / "benchmarks/zoo"
sys.path.insert(0, str(ZOO))

import restage_v3
import tokenize_v3
import train_lm_v3
import train_state as ts
from anneal_data import write_u16_xz


def _docs(rng, n_docs, mean_len=300) -> np.ndarray:
    """<|bos|> doc <|endoftext|> documents of random ids, as one uint16 stream."""
    docs = [np.concatenate([[1], rng.integers(3, 2000, rng.integers(mean_len // 2, mean_len * 2)), [0]])
            for _ in range(n_docs)]
    return np.concatenate(docs).astype(np.uint16)


def _stage_v3(root: Path, n_parts=2, docs=60, anneal=True):
    """Staged parts + manifest shaped like tokenize_v3's (.carry/reflm3), anneal files in .carry/reflm_anneal."""
    rng = np.random.default_rng(0)
    manifest = {"parts": [], "eval": {}, "train_tokens": 0, "vocab_size": 16384}
    for k in range(1, n_parts + 1):
        e = tokenize_v3.write_part(root / f".carry/reflm3/part{k}/train.u16.xz", _docs(rng, docs), root=root)
        manifest["parts"].append({**e, "part": f"part{k}"})
        manifest["train_tokens"] += e["tokens"]
    for name in ("validation_new", "test_new"):
        e = tokenize_v3.write_part(root / f".carry/reflm3/part1/{name}.u16.xz", _docs(rng, 10), root=root)
        manifest["eval"][name] = {**e, "part": "part1"}
    if anneal:
        for name, n in (("indomain", 40), ("indomain_val", 10)):
            write_u16_xz(root / f".carry/reflm_anneal/{name}.u16.xz", _docs(rng, n))
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest))
    return manifest, path


def _restage(tmp_path, cap=30_000):
    manifest, _ = _stage_v3(tmp_path)
    new = restage_v3.restage(manifest, tmp_path, tmp_path, cap=cap, anneal_dir=tmp_path / ".carry/reflm_anneal")
    path = tmp_path / "manifest_s.json"
    path.write_text(json.dumps(new))
    return manifest, new, path


def test_restage_keeps_the_stream_and_respects_the_cap(tmp_path):
    old, new, _ = _restage(tmp_path)
    assert len(new["parts"]) > len(old["parts"])  # 2 source parts of ~35 kB -> more parts under a 30 kB cap
    assert all(s["bytes"] <= 30_000 for s in new["staging"])
    a, _ = train_lm_v3.load(old, tmp_path)
    b, _ = train_lm_v3.load(new, tmp_path)  # checks stream_sha256 too
    assert np.array_equal(a, b) and new["stream_sha256"] == restage_v3.stream_sha256(a)
    for p in new["parts"]:
        assert train_lm_v3.read_tokens(tmp_path / p["path"])[0] == restage_v3.BOS  # cut at document starts
    assert {k: e["sha256"] for k, e in new["eval"].items()} == {k: e["sha256"] for k, e in old["eval"].items()}
    assert set(new["anneal"]) == {"indomain", "indomain_val"}
    assert len(train_lm_v3.verify(new, tmp_path)) == len(new["parts"]) + 4
    (tmp_path / new["anneal"]["indomain"]["path"]).unlink()  # an anneal file is staged like a part
    with pytest.raises(train_lm_v3.StagingError, match=r"\.carry/reflm3s/part\d"):
        train_lm_v3.verify(new, tmp_path)
    with pytest.raises(ValueError, match="over --cap 30000.*--parts"):
        restage_v3.restage(old, tmp_path, tmp_path / "x", cap=30_000, n_parts=1)


def test_plan_parts_cuts_at_document_starts():
    bos = np.array([0, 100, 250, 400, 900])
    ranges, where = restage_v3.plan_parts([500, 500], [500, 1500], {"e": 300}, bos, cap=1000)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000 and all(r[1] == s[0] for r, s in itertools.pairwise(ranges))
    assert all(b in set(bos) for _, b in ranges[:-1]) and len(ranges) == 3 and where == {"e": 0}


def test_schedule_anneal_rows_and_size_arithmetic():
    lr = [ts.learning_rate(s, 100, 10, 1e-3, 0.1, 80) for s in range(101)]
    cos80 = ts.learning_rate(80, 100, 10, 1e-3, 0.1)
    assert lr[79] == ts.learning_rate(79, 100, 10, 1e-3, 0.1) and lr[80] == cos80 and lr[100] == 0.0
    assert np.allclose(np.diff(lr[80:]), -cos80 / 20)  # linear to 0
    assert ts.anneal_start(100, 0.2) == 80 and ts.anneal_start(100, 0.0) is None
    rows = [ts.indomain_rows(k, 64, 0.3) for k in range(50)]
    assert all(abs(sum(rows[:k]) - 64 * 0.3 * k) < 1 for k in range(51)) and set(rows) <= {19, 20}
    from train_lm_v2 import model_config
    from transformers import LlamaForCausalLM

    cfg = model_config(1000, False, 1, 0, 2, layers=2, hidden=256, ffn=384)
    assert sum(p.numel() for p in LlamaForCausalLM(cfg).parameters()) == ts.llama_params(1000, 2, 256, 384)
    assert ts.llama_params(16384, 8, 512, 1024) == 27_271_680  # the shipped v3
    assert ts.pack_estimate(27_271_680) == pytest.approx(38_487_596 * 1.03, rel=1e-3)
    est = ts.check_pack_fits(16384, 8, 640, 1536, 1_000_000)  # the proposed v4: 43.9M parameters
    assert est["params"] == 43_920_000 and est["pack_bytes_est"] < est["limit_bytes"]
    with pytest.raises(ValueError, match=r"--layers 8 --hidden 640 --ffn 2048: .*at most 4\d\.\dM parameters fit"):
        ts.check_pack_fits(16384, 8, 640, 2048, 1_000_000)


def test_a_model_too_large_to_come_back_is_refused_before_training(tmp_path, capsys):
    _, _, mpath = _restage(tmp_path, cap=80_000)
    with pytest.raises(SystemExit):
        train_lm_v3.main(["--out", str(tmp_path / "o"), "--root", str(tmp_path), "--manifest", str(mpath),
                          "--hidden", "1024", "--ffn", "4096", "--layers", "12"])
    err = capsys.readouterr().err
    assert "--layers 12 --hidden 1024 --ffn 4096" in err and "at most" in err


def test_phase_selection_follows_v1_validation_never_v1_test(monkeypatch):
    import lm_eval

    script = iter([(1.0, 1.0), (0.9, 1.1), (0.95, 0.5), (0.97, 0.4)])

    def fake(model, tok, ids, *a):
        return {"bits_per_byte": ids(script)}

    order = []
    evals = {ts.SELECT: lambda it: order.append(next(it)) or order[-1][0], "v1_test": lambda it: order[-1][1]}
    monkeypatch.setattr(lm_eval, "evaluate", fake)
    model, phase = torch.nn.Linear(2, 2), {"curve": [], "before": None, "end": None}
    best = {"by": "val_loss", "value": 0.1, "step": 3, "state": None}
    for step in (10, 12, 14, 16):
        with torch.no_grad():
            model.weight.fill_(step)
        ts.phase_eval(model, None, evals, 8, "cpu", None, step, 10, 16, phase, best, lambda *a, **k: None)
    assert best["by"] == ts.SELECT and best["step"] == 12 and best["value"] == 0.9
    assert float(best["state"]["weight"][0, 0]) == 12.0
    assert phase["before"] == {ts.SELECT: 1.0, "v1_test": 1.0} and phase["end"][ts.SELECT] == 0.97


def _run(tmp_path, mpath, out, state, *extra):
    return train_lm_v3.main(["--smoke", "--root", str(tmp_path), "--manifest", str(mpath), "--out", str(tmp_path / out),
                             "--state-dir", str(tmp_path / state), "--anneal-frac", "0.25", *extra])


def test_a_run_cut_into_calls_equals_one_run(tmp_path, capsys):
    from safetensors.torch import load_file

    _, _, mpath = _restage(tmp_path, cap=80_000)
    with pytest.raises(SystemExit, match="--resume-only: no checkpoint"):
        _run(tmp_path, mpath, "a", "sa", "--resume-only")
    assert _run(tmp_path, mpath, "a", "sa") == 0
    assert _run(tmp_path, mpath, "b1", "sb", "--stop-after-steps", "4") == 0
    assert not list((tmp_path / "b1").glob("pack.tar.part-*"))  # an earlier call: the record only
    assert json.loads((tmp_path / "b1/train_record.json").read_text())["metrics"]["schedule_complete"] is False
    with pytest.raises(SystemExit, match=r"other settings \(lr: 0.002 in the state, 0.001 now"):
        _run(tmp_path, mpath, "x", "sb", "--lr", "1e-3")
    assert _run(tmp_path, mpath, "b2", "sb", "--stop-after-steps", "6") == 0  # stops inside the anneal phase (9..12)
    assert _run(tmp_path, mpath, "b3", "sb") == 0
    ra, rb = (json.loads((tmp_path / o / "train_record.json").read_text())["metrics"] for o in ("a", "b3"))
    loss = [[c["train_loss"] for c in m["curve"] if "train_loss" in c] for m in (ra, rb)]
    assert len(loss[0]) == 12 and np.allclose(loss[0], loss[1], rtol=0, atol=1e-6)
    wa, wb = (load_file(tmp_path / s / "ckpt/model.safetensors") for s in ("sa", "sb"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert [c["steps"] for c in rb["calls"]] == [[0, 4], [4, 10], [10, 12]] and rb["schedule_complete"]
    an = rb["anneal"]
    assert an["start"] == 9 and an["indomain_rows"] == 6  # 3 steps x 4 rows x 0.5
    assert set(an["before"]) == set(an["end"]) == set(rb["eval"]) >= {ts.SELECT, "v1_test", "heldout"}
    assert rb["selected_by"] == ts.SELECT and rb["best_step"] in {c["step"] for c in an["curve"]}
    assert rb["best_step"] == ra["best_step"] and rb["eval"] == ra["eval"]
    assert set(an["change_pct"]) == set(an["before"]) and np.isfinite(list(an["change_pct"].values())).all()
    assert sorted(p.name for p in (tmp_path / "b3").glob("pack.tar.part-*"))


@pytest.mark.parametrize("extra,msg", [
    (["--anneal-frac", "1.0"], "--anneal-frac 1.0: must be in [0, 1)"),
    (["--anneal-indomain-frac", "1.5"], "--anneal-indomain-frac 1.5: must be in [0, 1]"),
    (["--total-minutes", "16"], "--total-minutes 16.0: needs --state-dir"),
    (["--anneal-frac", "0.1", "--anneal-data", "/nonexistent.u16.xz"], "--anneal-data /nonexistent.u16.xz: no such file"),
])
def test_bad_arguments_name_the_option(extra, msg, capsys):
    import train_lm_v2

    with pytest.raises(SystemExit):
        train_lm_v2.parse_args(["--smoke", "--out", "/tmp/x", *extra])
    assert msg in capsys.readouterr().err


def test_fit_schedule_spreads_the_total_over_the_calls():
    # one call, no anneal: the single-call rule of train_lm_v2 (remaining time x rate, 1.5 s per validation)
    one, calls = ts.fit_schedule(90, 10.0, 0.0, 30.0, 450.0, 450.0, 20.0, 400, 10**6)
    assert calls == 1 and one == 90 + int(420 * 10 - 420 * 10 / 400 * 1.5 * 10)
    two, calls = ts.fit_schedule(90, 10.0, 0.0, 30.0, 900.0, 450.0, 20.0, 400, 10**6)
    assert calls == 2 and two == 90 + int((870 - 20) * 10 * (1 - 1.5 * 10 / 400))  # the second call's warm-up lost
    later, calls = ts.fit_schedule(4600, 10.0, 450.0, 30.0, 900.0, 450.0, 20.0, 400, 10**6)  # measured in call 2
    assert calls == 1 and later == 4600 + int(420 * 10 * (1 - 1.5 * 10 / 400))
    annealed, _ = ts.fit_schedule(90, 10.0, 0.0, 30.0, 900.0, 450.0, 20.0, 400, 10**6, 0.1, 2.0, 10.0)
    assert annealed < two and ts.fit_schedule(90, 10.0, 0.0, 30.0, 900.0, 450.0, 20.0, 400, 5000)[0] == 5000
