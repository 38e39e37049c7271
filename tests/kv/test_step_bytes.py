"""The compiled static decoding step moves what it must and little more: the attention over the
slots is fused reductions (not matmuls), no cache-sized temporary, and the bytes each slot costs
per step stay within a stated factor of the minimum (benchmarks/kv/step_bytes.py does the
accounting from inductor's scheduler, on the CPU)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def step_bytes():
    spec = importlib.util.spec_from_file_location("kv_step_bytes", ROOT / "benchmarks" / "kv" / "step_bytes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_attention_over_slots_is_not_a_matmul_when_compiled(step_bytes):
    """``products="matmul"`` (the path before) hands K and V to bmm, which inductor sends to cuBLAS
    on CUDA; the default forms q K^T and P V as reductions inductor generates and fuses."""
    step, args, _ = step_bytes.layer_step(products="matmul", head_dim=16, prompt=40)
    assert {"keys[0]", "values[0]"} <= set(step_bytes.matmul_inputs(step, args))
    step, args, _ = step_bytes.layer_step(head_dim=16, prompt=40)
    assert not {"keys[0]", "values[0]"} & set(step_bytes.matmul_inputs(step, args))


def test_compiled_step_bytes_stay_near_the_minimum(step_bytes):
    """inductor (CPU) on one layer's step, bf16, head dim 128: one graph; keys and values read once
    (plus the new slot's write); no temporary of more than 1/16 of the keys' size (a clone or a
    float32 copy of the cache would be >= 1); all per-slot traffic (keys, values, scores,
    positions, validity, slot-sized temporaries) within 1.2x of reading K and V once, writing one
    slot and reading/writing the score, position and validity once (measured: ~1.09x)."""
    res = step_bytes.analyse_layer_step()
    assert (res["graphs"], res["graph_breaks"]) == (1, 0)
    S, D, B, H = (res["shape"][k] for k in ("slots", "head_dim", "batch", "kv_heads"))
    keys = res["keys_bytes_one_layer"]
    slot_write = 2 * D / S  # bytes per slot and element size: one new slot per (row, head)
    for role in ("keys", "values"):
        assert res["bytes_by_role"][role]["read"] <= keys  # read once, no second pass
        assert res["bytes_by_role"][role]["written"] == B * H * D * 2  # one slot per (row, head)
    assert res["largest_temporary_over_keys"] < 1 / 16, res["largest_temporaries"]
    minimum = res["per_slot_minimum"] + 2 * slot_write
    assert res["per_slot_total"] <= 1.2 * minimum, res["per_slot_bytes"]
    assert not res["matmul_operands"]


def test_decode_step_benchmark_smoke(tmp_path):
    """benchmarks/kv/decode_step.py --smoke: the GPU script's code path (both variants, the
    profiler's kernel table, SDPA reference) on tiny CPU shapes; a bad --products is refused."""
    import json

    spec = importlib.util.spec_from_file_location("kv_decode_step", ROOT / "benchmarks" / "kv" / "decode_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "kv_decode_step.json").read_text())
    rows = rec["metrics"]["rows"]
    assert {r["products"] for r in rows} == {"reduce", "matmul", "triton"} and len(rows) == 6
    assert all(r["ms_per_layer_step"] > 0 and r["bytes_needed"] > 0 and r["kernels"] for r in rows)
    assert all(r["cudagraph_skips"] == 0 for r in rows)
    summary = rec["metrics"]["summary"]
    assert summary["reduce_over_matmul_speedup_b2_p24"] > 0 and summary["triton_over_matmul_speedup_b4_p48"] > 0
    with pytest.raises(SystemExit, match="--products 'matmul,fast'"):
        mod.main(["--smoke", "--products", "matmul,fast"])
