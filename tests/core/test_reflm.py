"""The shipped reference LM: its configuration, its tokenizer, and one batch against its record."""

from __future__ import annotations

import json
import lzma
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "src/anybudget/assets/reflm"
META = json.loads((ASSETS / "reflm.json").read_text())


@pytest.fixture(scope="module")
def lm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ASSETS, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(ASSETS)


def test_config_is_a_gqa_llama_of_the_recorded_size(lm):
    model, tok = lm
    cfg = model.config
    assert cfg.model_type == "llama" and type(model).__name__ == "LlamaForCausalLM"
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert cfg.hidden_act == "silu" and cfg.tie_word_embeddings
    assert 16384 <= cfg.vocab_size <= 32768 and cfg.vocab_size == len(tok)
    assert sum(p.numel() for p in model.parameters()) == META["params"]
    assert cfg.bos_token_id == tok.bos_token_id != cfg.eos_token_id == tok.eos_token_id


def test_tokenizer_round_trip_and_bos(lm):
    _, tok = lm
    text = "The kernel's scheduler — naïve “quotes”, tabs\tand 1234 digits.\n\nNew paragraph."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id  # every document starts with BOS, as in training
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_one_batch_nll_matches_the_recorded_value(lm):
    model, _ = lm
    chk = META["check"]
    ids = np.frombuffer(lzma.decompress((ROOT / chk["data"]).read_bytes()), dtype=np.uint16).astype(np.int64)
    seq, n = chk["seq"], chk["windows"]
    x = torch.stack([torch.from_numpy(ids[i * seq: i * seq + seq + 1]) for i in range(n)])
    with torch.no_grad():
        logits = model(input_ids=x[:, :-1]).logits
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1)).item()
    assert math.isclose(nll, chk["nll"], rel_tol=1e-4), (nll, chk["nll"])
    # and the model is a trained one: far below the uniform guess
    assert nll < 0.6 * math.log(model.config.vocab_size)


def test_the_demo_names_the_shipped_model_by_its_record():
    from anybudget.demo import embedded_name

    name = embedded_name()
    version = META["name"].split()[-1]  # e.g. "v3"
    assert f"reference LM {version} " in name and f"{META['params'] / 1e6:.1f}M-parameter" in name
