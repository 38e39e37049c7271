"""Same-text bits per byte: every token after the first scored once, every model over the same bytes."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks/zoo"))

import lm_eval
import same_text

ASSETS = ROOT / "src/anybudget/assets/reflm"


def _tiny_llama(vocab=64, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_tail_scores_every_token_after_the_first_once():
    model = _tiny_llama()
    ids = np.random.default_rng(0).integers(0, 64, 23)
    total, targets = lm_eval.window_losses(model, ids, seq=5, batch=3, device="cpu", tail=True)
    assert targets.size == len(ids) - 1 and np.array_equal(targets, ids[1:])
    want = 0.0
    for s in range(0, len(ids) - 1, 5):  # windows 0-5, 5-10, ..., 20-22 (the last one shorter)
        x = torch.from_numpy(ids[s: s + 6])[None]
        with torch.no_grad():
            logits = model(input_ids=x[:, :-1]).logits
        want += torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
    assert total == pytest.approx(want, rel=1e-5)
    short, t2 = lm_eval.window_losses(model, ids, seq=5, batch=3, device="cpu")  # the default leaves the tail out
    assert t2.size == 20 and short < total


class _Tok:
    """A stand-in tokenizer: one id per character, plus the special tokens it is given."""

    def __init__(self, specials):
        self.vocab = {s: i for i, s in enumerate(specials)}

    def get_vocab(self):
        return self.vocab

    def __call__(self, docs, add_special_tokens=False):
        return {"input_ids": [[100 + ord(c) % 50 for c in d] for d in docs]}


def test_documents_are_encoded_as_each_model_was_trained():
    docs = ["ab", "c"]
    v2 = same_text.encode_documents(_Tok(["<|endoftext|>", "<|bos|>"]), docs)
    assert v2.tolist() == [1, 147, 148, 0, 1, 149, 0]  # <|bos|> doc <|endoftext|>
    v1 = same_text.encode_documents(_Tok(["<|endoftext|>", "<|pad|>"]), docs)
    assert v1.tolist() == [0, 147, 148, 0, 149]  # <|endoftext|> before each document


def _model_dir(tmp_path, name, seed):
    d = tmp_path / name
    _tiny_llama(vocab=16384, seed=seed).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ASSETS / f, d / f)
    return d


def test_every_model_is_scored_over_the_documents_bytes(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    docs = ["The kernel maps pages.", "Ünïcode bytes count — as UTF-8.", "x" * 40]
    (build / "toy.txt").write_text(same_text.DOC_SEP.join(docs), encoding="utf-8")
    a, b = _model_dir(tmp_path, "a", 0), _model_dir(tmp_path, "b", 1)
    out = tmp_path / "out"
    assert same_text.main(["--model", f"a={a}", "--model", f"b={b}", "--split", "toy", "--build", str(build),
                           "--seq", "8", "--out", str(out)]) == 0
    rows = json.loads((out / "reflm_same_text.json").read_text())["metrics"]["splits"]["toy"]
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    for r in rows.values():
        assert r["bytes"] == nbytes and r["tokens"] > r["windowed"]["tokens"] > 0
        assert r["windowed"]["tokens"] % 8 == 0 and r["windowed"]["bytes"] < nbytes
    assert rows["a"]["lower_than_a_by"] == 0.0
    assert rows["b"]["lower_than_a_by"] == pytest.approx(1 - rows["b"]["bits_per_byte"] / rows["a"]["bits_per_byte"])
    assert rows["a"]["bits_per_byte"] != rows["b"]["bits_per_byte"]
    # The whole-text sum is the full windows' plus the tail's: the same as one tail=True pass.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(a).eval(), AutoTokenizer.from_pretrained(a)
    ids = same_text.encode_documents(tok, docs)
    nll, targets = lm_eval.window_losses(model, ids, 8, 3, "cpu", tail=True)
    assert targets.size == rows["a"]["tokens"] == len(ids) - 1
    assert rows["a"]["nll_per_token"] == pytest.approx(nll / targets.size, rel=1e-5)


@pytest.mark.parametrize("argv, match", [
    (["--model", "nothing", "--split", "v1_test"], "expected NAME=DIR"),
    (["--model", "a=/no/such/dir", "--split", "v1_test"], "has no config.json"),
    (["--model", f"a={ASSETS}", "--split", "no_such_split", "--build", "/tmp"], "no_such_split.txt not found"),
    (["--model", f"a={ASSETS}", "--model", f"a={ASSETS}", "--split", "x"], "each NAME once"),
])
def test_bad_arguments_name_the_option(argv, match):
    with pytest.raises(SystemExit, match=match):
        same_text.main(argv)


def test_an_out_folder_that_cannot_be_made_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    (tmp_path / "toy.txt").write_text("a document", encoding="utf-8")
    (tmp_path / "file").write_text("")
    import transformers

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", None)  # any model load would fail differently
    with pytest.raises(SystemExit, match="--out .*cannot create it"):
        same_text.main(["--model", f"a={ASSETS}", "--split", "toy", "--build", str(tmp_path),
                        "--out", str(tmp_path / "file" / "out")])
