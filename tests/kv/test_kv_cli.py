"""``anybudget generate`` and ``anybudget kv eval`` on the embedded reference LM (CPU, seconds)."""

import json
from pathlib import Path

import pytest

from anybudget.cli import main

SAMPLE = Path(__file__).resolve().parents[2] / "src/anybudget/assets/reflm/sample.txt"


def _generate(capsys, *args):
    assert main(["generate", "--device", "cpu", "--max-new-tokens", "12", *args, "The Linux kernel"]) == 0
    return capsys.readouterr().out


def test_generate_at_full_budget_equals_the_full_cache_and_reports_the_cache(capsys):
    full = _generate(capsys, "--kv", "full")
    h2o_all = _generate(capsys, "--kv", "h2o", "--budget", "kv=100%")
    assert h2o_all.split("\n[")[0].strip() == full.strip()  # greedy text identical
    h2o = _generate(capsys, "--kv", "h2o", "--budget", "kv=50%")
    kept, seen = (int(x) for x in h2o.split("kept ")[1].split(" tokens")[0].split(" of "))
    assert kept == -(-seen // 2)  # ceil(50% of the tokens seen)
    assert "KV cache" in h2o and "MiB" in h2o
    assert _generate(capsys, "--kv", "h2o", "--budget", "kv=50%", "--static") == h2o  # same text, cache, report
    assert _generate(capsys, "--kv", "h2o", "--budget", "kv=50%", "--static", "--decode-products", "triton") == h2o


def test_kv_eval_writes_table_json_and_png(tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["kv", "eval", "--device", "cpu", "--text", str(SAMPLE), "--seq-len", "64", "--num-seqs", "2",
               "--budgets", "100%,50%", "--policies", "full,h2o,local", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "h2o" in printed and "local" in printed
    rec = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["policy"], r["budget"]): r for r in rec["metrics"]["results"]}
    assert set(rows) >= {("h2o", "50%"), ("local", "50%")}
    full = next(r for r in rec["metrics"]["results"] if r["policy"] == "full")
    assert rec["baseline"]["full_ppl"] == pytest.approx(full["ppl"])
    for r in rows.values():
        assert r["ppl"] > 1 and r["tokens"] == 2 * 63
    assert 0.45 < rows[("h2o", "50%")]["kept_fraction"] <= 0.55
    assert out.with_suffix(".png").stat().st_size > 1000


def test_kv_eval_bad_input(tmp_path, capsys):
    base = ["kv", "eval", "--device", "cpu", "--text", str(SAMPLE), "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit, match="--policies has unknown"):
        main(base + ["--policies", "full,lru"])
    # budgets and files are checked by argparse, before the model loads: exit 2, one line naming the flag
    with pytest.raises(SystemExit) as ei:
        main(base + ["--budgets", "0%"])
    assert ei.value.code == 2 and "argument --budgets: kv=0% must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        main(["kv", "eval", "--device", "cpu", "--text", str(tmp_path / "missing.txt")])
    assert ei.value.code == 2 and "argument --text" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="fewer than --seq-len"):
        main(base + ["--seq-len", "100000"])


def test_plot_axis_names_token_budgets_as_kept_fractions(tmp_path):
    from anybudget.kv.evaluate import EvalResult, plot_results

    full = EvalResult("full", "100%", 3.0, 100, 1.0)
    pct = [full, EvalResult("h2o", "20%", 3.5, 100, 0.2), EvalResult("h2o", "50%", 3.2, 100, 0.5)]
    assert "budget" in plot_results(pct, tmp_path / "pct.png")
    tokens = [full, EvalResult("h2o", "64", 3.5, 100, 0.125), EvalResult("h2o", "256", 3.2, 100, 0.5)]
    label = plot_results(tokens, tmp_path / "tok.png")
    assert "kept" in label and "measured" in label
    assert (tmp_path / "pct.png").stat().st_size > 0 and (tmp_path / "tok.png").stat().st_size > 0


def test_generate_decode_products_bad_value_is_one_line_before_loading(capsys):
    from anybudget.kv.attention import DECODE_PRODUCTS
    from anybudget.kv.cli import DECODE_PRODUCT_CHOICES

    assert set(DECODE_PRODUCT_CHOICES) == set(DECODE_PRODUCTS)
    with pytest.raises(SystemExit) as ei:
        main(["generate", "--model", "/nonexistent", "--static", "--decode-products", "cuda", "x"])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "argument --decode-products: invalid choice: 'cuda'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
