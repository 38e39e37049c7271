import json
import lzma

import numpy as np
import pytest
import torch
import transformers as tr
from elastic_helpers import tiny_model

from anybudget.cli import main
from anybudget.elastic.latency import CostTable


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic_cli")
    tiny_model("llama").save_pretrained(root / "base")
    toks = np.random.default_rng(0).integers(0, 97, 3000).astype(np.uint16)
    (root / "train.u16.xz").write_bytes(lzma.compress(toks.tobytes()))
    args = ["elastic", "build", "--model", str(root / "base"), "--text", str(root / "train.u16.xz"),
            "--out", str(root / "el"), "--batch", "2", "--seq", "16", "--calib-batches", "2", "--quiet",
            "--train-steps", "3", "--train-checkpoint-every", "2", "--router-steps", "6",
            "--router-surrogate-samples", "8", "--router-surrogate-threshold", "100",
            "--workload-batch", "1", "--workload-seq", "8", "--workload-dtype", "float32"]
    assert main(args) == 0
    return root, args


def test_build_writes_every_phase_and_resumes(built, capsys):
    root, args = built
    meta = json.loads((root / "el/elastic.json").read_text())
    assert meta["phases"] == ["permute", "train", "latency", "router"] and meta["train"]["steps"] == 3
    for name in ("model/config.json", "importance.safetensors", "latency_table.json", "router.safetensors"):
        assert (root / "el" / name).is_file()
    mtime = (root / "el/router.safetensors").stat().st_mtime_ns
    assert main(args) == 0  # every phase done: nothing recomputed
    assert (root / "el/router.safetensors").stat().st_mtime_ns == mtime


def test_export_and_eval(built, capsys):
    root, _ = built
    table = CostTable.from_json((root / "el/latency_table.json").read_text())
    from anybudget.elastic.pipeline import load_elastic

    em, _, _ = load_elastic(root / "el", device="cpu")
    assert table.cost(em.full()) >= table.cost(em.uniform(0.5)) >= table.cost(em.smallest())  # monotone
    mid = (table.cost(em.smallest()) + table.cost(em.full())) / 2 * 1e3
    assert main(["elastic", "export", "--model", str(root / "el"), "--budget", f"latency={mid}ms",
                 "--out", str(root / "small")]) == 0
    small = tr.AutoModelForCausalLM.from_pretrained(root / "small")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in em.model.parameters())
    ids = torch.randint(0, 97, (1, 10))
    x = small.config
    from anybudget.elastic import LayerConfig, SubnetConfig

    sub = SubnetConfig((LayerConfig(x.num_key_value_heads, x.intermediate_size),) * x.num_hidden_layers)
    torch.testing.assert_close(small(ids).logits, em(ids, subnet=sub).logits, rtol=1e-4, atol=1e-4)
    # --calib-text: the pick is route(..., calib=windows) on that text, never worse on it than a fitting uniform width
    from anybudget.elastic.data import eval_windows
    from anybudget.elastic.pipeline import tokens_from_file
    from anybudget.elastic.router import route

    assert main(["elastic", "export", "--model", str(root / "el"), "--budget", f"latency={mid}ms", "--out",
                 str(root / "small_cal"), "--calib-text", str(root / "train.u16.xz"), "--calib-seq", "16",
                 "--calib-tokens", "400"]) == 0
    windows = eval_windows(tokens_from_file(root / "train.u16.xz", root / "el/model"), 16, 8, 400)
    want = route(em, f"latency={mid}ms", table=table, uniform=True, calib=windows)
    got = tr.AutoModelForCausalLM.from_pretrained(root / "small_cal").config
    assert (got.num_key_value_heads, got.intermediate_size) == (want.layers[0].kv_groups, want.layers[0].mlp_width)
    with pytest.raises(SystemExit, match="--calib-text"):
        main(["elastic", "export", "--model", str(root / "el"), "--budget", f"latency={mid}ms", "--out",
              str(root / "x2"), "--calib-text", str(root / "train.u16.xz"), "--calib-seq", "5000"])
    with pytest.raises(SystemExit, match="smallest feasible budget is latency="):
        main(["elastic", "export", "--model", str(root / "el"), "--budget", "latency=1ns", "--out", str(root / "x")])
    assert main(["elastic", "eval", "--model", str(root / "el"), "--text", str(root / "train.u16.xz"),
                 "--out", str(root / "ev"), "--seq", "16", "--max-tokens", "200"]) == 0
    rows = json.loads((root / "ev/elastic_eval.json").read_text())["rows"]
    assert len([r for r in rows if r["kind"] == "uniform"]) == 8 and len([r for r in rows if r["kind"] == "router"]) == 8
    assert (root / "ev/elastic_eval.png").is_file()


def test_build_refuses_another_configuration_in_the_same_out(built):
    """Resuming into an --out built with other settings: one line naming the keys, exit 2, nothing changed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, args = built
    before = {p: p.stat().st_mtime_ns for p in (root / "el").rglob("*") if p.is_file()}
    changed = list(args)
    changed[changed.index("--train-steps") + 1] = "5"
    changed[changed.index("--seq") + 1] = "12"
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("ANYBUDGET_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "anybudget.cli", *changed], capture_output=True, text=True,
                       env=env, timeout=120, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --out"), r.stderr
    assert "train.steps: 3 there, 5 now" in lines[0] and "build.seq: 16 there, 12 now" in lines[0]
    assert {p: p.stat().st_mtime_ns for p in (root / "el").rglob("*") if p.is_file()} == before


def test_eval_targets_never_fall_below_the_smallest_sub_network():
    from anybudget.budget import Budget
    from anybudget.elastic.cli import eval_targets

    for lo, hi in ((0.0008142484, 0.0008142484), (0.0008142486, 0.0008142490), (1e-3, 2e-3), (1e-3, 0.9e-3)):
        rows = eval_targets(lo, hi)
        assert len(rows) == 8
        for target, text in rows:
            assert float(Budget(text)["latency"].value) >= target >= lo  # rounded up, never below the smallest
    assert eval_targets(1e-3, 2e-3)[-1][0] == 2e-3
