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


def test_decode_step_benchmark_layers_and_shapes(tmp_path):
    """``--layers`` compiles several layer steps into one (per-layer numbers, and per compiled step
    the custom op's host calls: one per layer on the CPU, where nothing is replayed); ``--shapes``
    picks the shapes; bad values are refused naming the flag."""
    import json

    spec = importlib.util.spec_from_file_location("kv_decode_step", ROOT / "benchmarks" / "kv" / "decode_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path), "--products", "triton", "--layers", "3", "--shapes", "2x24"]) == 0
    rows = json.loads((tmp_path / "kv_decode_step.json").read_text())["metrics"]["rows"]
    assert [(r["products"], r["layers"], r["batch"], r["prompt"]) for r in rows] == [("matmul", 3, 2, 24), ("triton", 3, 2, 24)]
    per_step = {r["products"]: r["per_step_of_all_layers"] for r in rows}
    assert per_step["triton"]["op_calls"] == {"anybudget::slot_decode_triton": 3.0}
    assert per_step["matmul"]["op_calls"] == {}
    with pytest.raises(SystemExit, match="--layers 0"):
        mod.main(["--smoke", "--layers", "0"])
    with pytest.raises(SystemExit, match="--shapes '64-2048'"):
        mod.main(["--smoke", "--shapes", "64-2048"])


def test_triton_op_in_the_compiled_step_reads_the_slots_in_place(step_bytes):
    """Inductor's GPU fusion rules (Triton scheduling on the CPU), one layer's step: the custom op
    is one extern node that reads the layer's own key, value and validity buffers (no clone or
    contiguous copy of K or V is made for it) and returns the column sums, which the eviction's
    kernel adds to the scores (read once, written once, as on the matmul path: an op that added
    them in place made inductor tile that eviction over (batch, head) in 4-slot blocks, ~99 us a
    layer on an H200 at batch 64); K and V are read once in the whole step and written one slot
    per (row, head), no slot-sized temporary but the column sums and the eviction's priorities,
    and fewer kernels than the matmul path (measured: 10 vs 11 scheduler nodes)."""
    kw = {"head_dim": 16, "prompt": 40, "batch": 4, "scheduler": "triton"}
    tri = step_bytes.analyse_layer_step(products="triton", **kw)
    mm = step_bytes.analyse_layer_step(products="matmul", extern_bmm=True, **kw)
    S, D, B, H = (tri["shape"][k] for k in ("slots", "head_dim", "batch", "kv_heads"))
    ops = [k for k in tri["kernel_list"] if "anybudget.slot_decode_triton.default" in k["ops"] and any(k["reads"].values())]
    assert len(ops) == 1
    read_roles = {name.split(" (")[1].rstrip(")"): b for name, b in ops[0]["reads"].items()}
    assert read_roles["keys[0]"] == read_roles["values[0]"] == B * H * S * D * 2  # bf16, whole buffers
    assert "prio[0]" not in read_roles and read_roles["valid[0]"] == B * H * S
    for role in ("keys", "values"):
        assert tri["bytes_by_role"][role] == {"read": B * H * S * D * 2, "written": B * H * D * 2}
    # the new slot's score, then the column sums added to every slot (in the eviction's kernel)
    assert tri["bytes_by_role"]["prio"] == {"read": B * H * S * 4, "written": B * H * 4 + B * H * S * 4}
    assert tri["bytes_by_role"]["prio"] == mm["bytes_by_role"]["prio"]
    evict = [k for k in tri["kernel_list"] if "aten.argmax.default" in k["ops"]]
    assert len(evict) == 1 and any("prio" in name for name in evict[0]["writes"]), evict
    temps = tri["largest_temporaries"]  # the op's column sums, the eviction's float32 priorities
    assert sorted(t[1] for t in temps) == [B * H * S * 4] * 3 and all(t[2] == "torch.float32" for t in temps), temps
    assert tri["kernels"] < mm["kernels"]


@pytest.mark.parametrize("batch,heads", [(8, 8), (64, 16)])
def test_decode_step_evicts_in_a_row_tiled_reduction(step_bytes, batch, heads):
    """Inductor's Triton scheduling gives the eviction's reduction (amin + argmax over the slots) a
    1-D tiling over (row, head) pairs with the slots as the contiguous reduction, on both paths.
    When the triton op added its column sums to the scores in place, inductor's coalescing
    analysis lost the eviction's reads of the (mutated) slot buffers and tiled it (batch, head)
    x slots, R0_BLOCK 4 (["y", "x", "r0_"] at these shapes): ~99 us per layer on an H200 at
    batch 64, prompt 2k (``kv_serving_runs/run8``)."""
    for products, extra in (("triton", {}), ("matmul", {"extern_bmm": True})):
        res = step_bytes.analyse_layer_step(products=products, head_dim=16, prompt=40, batch=batch, heads=heads,
                                            scheduler="triton", **extra)
        evict = [k for k in res["kernel_list"] if "aten.argmax.default" in k["ops"]]
        assert len(evict) == 1 and evict[0]["tiling"] == ["x", "r0_"], (products, evict)
