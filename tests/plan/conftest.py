"""Fixtures of the plan tests (helpers in plan_helpers.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from plan_helpers import REFLM, tiny_elastic


@pytest.fixture(scope="module")
def em():
    """A tiny elastic model of a 512-token vocabulary, one per test module."""
    return tiny_elastic(vocab=512)


@pytest.fixture(scope="session")
def elastic_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("elastic")
    em = tiny_elastic()
    em.model.save_pretrained(str(out / "model"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(REFLM / name, out / "model" / name)
    (out / "elastic.json").write_text(json.dumps({"phases": ["permute"], "space": {
        "mlp_fractions": list(em.space.mlp_fractions), "kv_fractions": list(em.space.kv_fractions)}}))
    return out
