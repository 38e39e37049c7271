"""``products="triton"``: the static decoding step's attention as one custom op around the Triton
decode kernel. Under Triton's interpreter (a subprocess: TRITON_INTERPRET must be set before triton
compiles anything) it equals ``products="matmul"`` on random slots with masks and GQA, eager and
under ``torch.compile(fullgraph=True, dynamic=True)``; on a plain CPU the op falls back to the
matmul path, also inside compiled graphs and transformers' compiled generate. ``"triton_op"``: the
same kernels as a ``torch.library.triton_op``; equal to matmul eager under the interpreter (which
cannot trace its kernels), compiled on a plain CPU (fallback) and in compiled generate; its
compiled graph holds the kernel launches, not the op."""

import itertools
import os
import re

import pytest
import torch
from kv_helpers import interpreter_ok, run_interpreted, tiny_model
from transformers import CompileConfig

from anybudget import kv
from anybudget.kv.attention import slot_decode_attention
from anybudget.kv.slot_decode_op import uses_kernel

CASES = """
import torch
from anybudget.kv.attention import slot_decode_attention
from anybudget.kv.decode_triton import _num_sms
import anybudget.kv.slot_decode_op as op
from anybudget.kv.slot_decode_op import takes_fused, uses_kernel

assert uses_kernel(torch.zeros(1)), "the interpreter must run the kernel, not the fallback"
assert _num_sms(torch.device("cpu")) == 8 and not takes_fused(8, 4, 8) and not takes_fused(1024, 16, 8)
op.FUSED_FROM_WAVES = 4  # the one-launch form from 4 waves: still reachable through the op
assert takes_fused(8, 4, 8) and not takes_fused(3, 2, 8)
worst = {torch.float32: 0.0, torch.float16: 0.0}


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def step(q, k, v, mask, col, products):
    return slot_decode_attention(q, k, v, key_mask=mask, colsum_out=col, scale=0.3, products=products)


compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=True)
# (B, Hq, Hkv, S, D, FUSED_FROM_WAVES): split-K (the op's form at every shape) for all; the last
# case again with the one-launch form (the interpreter's "GPU" has 8 SMs: B * Hkv = 32 is 4 waves).
for seed, (B, Hq, Hkv, S, D, waves) in enumerate([(3, 8, 2, 37, 32, None), (1, 8, 2, 150, 32, None),
                                                  (2, 4, 4, 70, 16, None), (1, 3, 1, 200, 64, None),
                                                  (8, 8, 4, 21, 16, None), (8, 8, 4, 21, 16, 4)]):
    op.FUSED_FROM_WAVES = waves
    for dtype in (torch.float32, torch.float16):  # bf16: the interpreter cannot (numpy has no bf16)
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(B, Hq, 1, D, generator=g).to(dtype)
        k, v = (torch.randn(B, Hkv, S, D, generator=g).to(dtype) for _ in range(2))
        mask = torch.rand(B, Hkv, S, generator=g) > 0.4
        mask[..., S // 2] = True  # at least one valid slot per (row, KV head)
        q = q.transpose(1, 2).contiguous().transpose(1, 2)  # a strided view, as transformers hands it
        start = torch.rand(B, Hkv, S, generator=g)
        col_m, col_t, col_c = start.clone(), start.clone(), start.clone()
        o_m = step(q, k, v, mask, col_m, "matmul")
        o_t = step(q, k, v, mask, col_t, "triton")
        o_c = compiled(q, k, v, mask, col_c, "triton")
        col_o = start.clone()
        o_o = step(q, k, v, mask, col_o, "triton_op")  # the triton_op registration: eager only here
        assert o_t.dtype == dtype and o_t.shape == (B, Hq, 1, D)
        assert torch.equal(col_t[~mask], start[~mask]) and torch.equal(col_c[~mask], start[~mask])
        assert torch.allclose(col_t.sum(-1) - start.sum(-1), torch.full((B, Hkv), Hq / Hkv), atol=1e-3)
        worst[dtype] = max(worst[dtype], rel(o_t, o_m), rel(col_t - start, col_m - start),
                           rel(o_c, o_m), rel(col_c - start, col_m - start),
                           rel(o_o, o_m), rel(col_o - start, col_m - start))
        assert torch.equal(col_o[~mask], start[~mask])
print("WORST", worst[torch.float32], worst[torch.float16])
"""


interpreter = pytest.mark.skipif(not interpreter_ok()[0], reason=interpreter_ok()[1])


@interpreter
def test_triton_products_equal_matmul_under_the_interpreter():
    # fp32: numpy arithmetic, agreement to float32 rounding; fp16: the matmul path rounds the
    # logits to fp16 before the softmax, the kernel keeps them in float32 (1e-2 relative, as bf16).
    f32, f16 = (float(x) for x in run_interpreted(CASES).split("WORST")[-1].split())
    assert f32 < 1e-5, f32
    assert f16 < 1e-2, f16


def test_triton_products_fall_back_to_matmul_on_a_plain_cpu_and_compile():
    """No CUDA, no interpreter: the op runs the matmul path (bit-equal), eager and inside a
    ``fullgraph=True`` dynamic graph (eager and aot_eager backends: the fake implementation and the
    functionalized in-place score update), for two batch sizes without recompiling."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter is on: the op runs the kernel")
    assert not uses_kernel(torch.zeros(1))
    from torch._dynamo.utils import counters

    for products, backend in itertools.product(("triton", "triton_op"), ("eager", "aot_eager")):
        def step(q, k, v, mask, col, products=products):
            return slot_decode_attention(q, k, v, key_mask=mask, colsum_out=col, products=products)

        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(step, backend=backend, fullgraph=True, dynamic=True)
        for B in (3, 5):
            g = torch.Generator().manual_seed(B)
            q = torch.randn(B, 8, 1, 16, generator=g)
            k, v = (torch.randn(B, 2, 29, 16, generator=g) for _ in range(2))
            mask = torch.rand(B, 2, 29, generator=g) > 0.5
            mask[..., 0] = True
            cols = [torch.ones(B, 2, 29) for _ in range(3)]
            want = slot_decode_attention(q, k, v, key_mask=mask, colsum_out=cols[0], products="matmul")
            assert torch.equal(step(q, k, v, mask, cols[1]), want) and torch.equal(cols[1], cols[0])
            assert torch.equal(compiled(q, k, v, mask, cols[2]), want) and torch.equal(cols[2], cols[0])
        assert counters["stats"]["unique_graphs"] == 1, (products, backend)


def test_triton_op_registration_traces_the_kernels_into_the_graph(monkeypatch):
    """``"triton_op"`` compiled (fullgraph, static and dynamic): the graph AOTAutograd hands the
    backend holds the decode kernels (split and combine) as ``triton_kernel_wrapper_functional``
    nodes with concrete grids, and no call of the op. On a CPU the kernel path is forced for the
    trace only (the compiler is stopped before running: no CPU triton driver); inductor's code from
    it, and running it, are checked on CUDA (the gpu tests below)."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not _triton_installed():
        pytest.skip("needs triton compiled kernels (not the interpreter's) to trace")
    from torch._dynamo.backends.common import aot_autograd
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    import anybudget.kv.slot_decode_op as op

    monkeypatch.setattr(op, "uses_kernel", lambda t: True)
    graphs = []

    class Stop(Exception):
        pass

    def capture(gm, example_inputs):
        graphs.append(gm)
        raise Stop

    def step(q, k, v, mask, col):
        return slot_decode_attention(q, k, v, key_mask=mask, colsum_out=col, products="triton_op")

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 8, 1, 32, generator=g)
    k, v = (torch.randn(3, 2, 37, 32, generator=g) for _ in range(2))
    mask = torch.rand(3, 2, 37, generator=g) > 0.4
    for dynamic in (False, True):
        torch._dynamo.reset()
        compiled = torch.compile(step, backend=aot_autograd(fw_compiler=capture), fullgraph=True, dynamic=dynamic)
        with pytest.raises(Exception, match="Stop"):
            compiled(q, k, v, mask, torch.zeros(3, 2, 37))
        nodes = [n for n in graphs[-1].graph.nodes if n.op == "call_function"]
        kernels = [n for n in nodes if "triton_kernel_wrapper" in str(n.target)]
        assert len(kernels) == 2, graphs[-1].code
        names = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__ for n in kernels]
        assert names == ["_decode_split", "_decode_combine"]
        assert kernels[0].kwargs["grid"] == [(1, 6, 1)]  # (splits, B * Hkv): 8 "SMs" on a CPU, 37 keys
        assert not any("anybudget" in str(n.target) for n in nodes)
        # the key mask reaches the kernel as an int8 copy, not as a dtype view of the bool mask
        km = kernels[0].kwargs["kwargs"]["KM"]
        assert km.target == torch.ops.aten._to_copy.default and km.meta["val"].dtype == torch.int8, km.format_node()


def _triton_installed():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def test_triton_products_through_compiled_generate():
    """``decode_products="triton"`` reaches the static cache's decoding step in transformers'
    compiled generate (fullgraph, dynamic): same tokens, kept slots and scores as the matmul default."""
    model = kv.enable(tiny_model("llama"))  # GQA
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 96, (2, 12), generator=g)
    # eager backend: dynamo's graph (fullgraph) is the point; the functionalized op is tested above
    cc = CompileConfig(backend="eager", fullgraph=True, dynamic=True)
    cc._compile_all_devices = True  # CPU: transformers compiles only on accelerators otherwise
    products = ("matmul", "triton", "triton_op")
    caches = [kv.H2OCache("40%", static=True, max_new_tokens=6, decode_products=p) for p in products]
    # the matmul default eager (test_static holds its compiled steps equal to eager), the ops compiled
    outs = [model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, **kv.cache_kwargs(model, caches[0]))]
    outs += [model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, compile_config=cc,
                            **kv.cache_kwargs(model, c)) for c in caches[1:]]
    assert hasattr(model, "_compiled_call")
    for j in (1, 2):
        assert torch.equal(outs[0], outs[j])
        assert all(layer.decode_products == products[j] for layer in caches[j].layers)
        for i in range(len(caches[0].layers)):
            assert torch.equal(caches[0].kept_positions(i), caches[j].kept_positions(i))
            assert torch.allclose(caches[0].layers[i].prio, caches[j].layers[i].prio)


def test_gpu_tests_are_bounded_by_a_time_limit():
    """The limit conftest.py puts on every gpu-marked test: a block past it raises a TimeoutError
    naming it (with the traceback of where it was); a block within it is untouched."""
    import time

    from kv_helpers import time_limit

    with pytest.raises(TimeoutError, match="slow block ran past 0.2 s"), time_limit(0.2, "slow block"):
        time.sleep(5)
    with time_limit(5, "quick block"):
        time.sleep(0.01)
    time.sleep(0.1)  # the alarm was cancelled: nothing fires after the block
    with pytest.raises(ValueError, match="seconds=0: must be > 0"), time_limit(0, "x"):
        pass


def test_bad_decode_products_raise_naming_the_argument():
    q = torch.zeros(1, 2, 1, 8)
    k = v = torch.zeros(1, 2, 4, 8)
    mask = torch.ones(1, 2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="products='cuda' is not one of auto, reduce, matmul, triton"):
        slot_decode_attention(q, k, v, key_mask=mask, products="cuda")
    with pytest.raises(ValueError, match="decode_products='cuda' is not one of auto, reduce, matmul, triton"):
        kv.H2OCache("20%", static=True, max_new_tokens=4, decode_products="cuda")


# GPU tests: one products value per test id (a failure names "triton" or "triton_op"), each bounded
# by conftest.py's time limit; the compiled-generate checks share one compilation per products value
# (warm-up, then a profiled call whose tokens and kept slots are compared).
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
OP_CALL = re.compile(r"torch\.ops\.anybudget\.\w+\.default\(")  # a call, not a comment or an assert's text


def _gpu_slots(B, Hq, Hkv, S, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, Hq, 1, D, generator=g, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, Hkv, S, D, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = torch.rand(B, Hkv, S, generator=g, device="cuda") > 0.3  # masked slots: a mask misread shows
    mask[..., 0] = True
    return q, k, v, mask


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("products", ["triton", "triton_op"])
def test_triton_products_equal_matmul_gpu_bf16_compiled(products):
    """On the GPU in bf16, compiled as transformers compiles the step (inductor, reduce-overhead:
    CUDA graphs, dynamic shapes, the scale a Python float as transformers passes it): equal to the
    matmul path within bf16 rounding, output and scores, after warm-up, recording and replay."""
    B, Hq, Hkv, S, D = 8, 16, 4, 700, 128
    q, k, v, mask = _gpu_slots(B, Hq, Hkv, S, D)
    scale = D**-0.5

    def step(q, k, v, mask, col, products):
        return slot_decode_attention(q, k, v, key_mask=mask, colsum_out=col, scale=scale, products=products)

    torch._dynamo.reset()
    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True, dynamic=True)
    col_m = torch.zeros(B, Hkv, S, device="cuda")
    want = step(q, k, v, mask, col_m, "matmul").float()
    eager_col = torch.zeros(B, Hkv, S, device="cuda")
    eager = step(q, k, v, mask, eager_col, products)  # eager first: a kernel error shows apart from inductor's
    assert _rel(eager, want) < 2e-2 and _rel(eager_col, col_m) < 2e-2, (_rel(eager, want), _rel(eager_col, col_m))
    col_t = torch.zeros(B, Hkv, S, device="cuda")
    torch._dynamo.mark_static_address(col_t)  # as the slot layer's scores: updated in place by the graph
    for _ in range(3):  # warm-up, recording, replay
        col_t.zero_()
        got = compiled(q, k, v, mask, col_t, products).float()
    assert _rel(got, want) < 2e-2 and _rel(col_t, col_m) < 2e-2, (_rel(got, want), _rel(col_t, col_m))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("products", ["triton", "triton_op"])
def test_inductors_code_for_the_decode_op_gpu(products):
    """Under inductor (default mode), ``"triton"`` is one extern call of the custom op per step;
    ``"triton_op"``'s generated code defines and launches the decode kernels itself and calls no
    ``torch.ops.anybudget`` op (inductor may still name the op in comments: only calls count).
    Both compute what the matmul path computes on a mask with masked slots."""
    from torch._inductor.utils import run_and_get_code

    q, k, v, mask = _gpu_slots(4, 8, 2, 300, 64)

    def step(q, k, v, mask, col):
        return slot_decode_attention(q, k, v, key_mask=mask, colsum_out=col, scale=0.125, products=products)

    col = torch.zeros(4, 2, 300, device="cuda")
    out, code = run_and_get_code(torch.compile(step, fullgraph=True), q, k, v, mask, col)
    code = "\n".join(code)
    col_m = torch.zeros(4, 2, 300, device="cuda")
    want = slot_decode_attention(q, k, v, key_mask=mask, colsum_out=col_m, scale=0.125, products="matmul")
    assert _rel(out, want) < 2e-2 and _rel(col, col_m) < 2e-2, (_rel(out, want), _rel(col, col_m))
    calls = OP_CALL.findall(code)
    if products == "triton":
        assert calls == ["torch.ops.anybudget.slot_decode_triton.default("], code[-3000:]
    else:
        assert "_decode_split" in code and "_decode_combine" in code, code[-3000:]
        assert calls == [], code[-3000:]


@pytest.fixture(scope="module")
def compiled_generate_runs():
    """products -> (tokens, kept positions per layer, per-step profile, CUDA-graph skips) of
    transformers' compiled generate (inductor, CUDA graphs) on a tiny GQA llama: a warm-up call
    (compile, record), then a profiled call; computed once per products value."""
    import importlib.util
    from pathlib import Path

    from torch._dynamo.utils import counters

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "kv" / "step_profile.py"
    spec = importlib.util.spec_from_file_location("kv_step_profile", path)
    sp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sp)
    model = kv.enable(tiny_model("llama").cuda())
    ids = torch.randint(1, 96, (4, 40), generator=torch.Generator().manual_seed(0)).cuda()
    runs = {}

    def run(products):
        if products not in runs:
            ps = sp.ProfileSteps(3, 9)
            cache = kv.H2OCache("30%", static=True, max_new_tokens=ps.stop, decode_products=products)
            kw = {"input_ids": ids, "do_sample": False, "compile_config": CompileConfig(dynamic=True),
                  **kv.cache_kwargs(model, cache)}
            skips = counters["inductor"]["cudagraph_skips"]
            model.generate(**kw, max_new_tokens=4, min_new_tokens=4)  # compile, warm up, record
            out = model.generate(**kw, max_new_tokens=ps.stop, min_new_tokens=ps.stop, logits_processor=[ps])
            runs[products] = (out, [cache.kept_positions(i) for i in range(len(cache.layers))],
                              sp.summarize_profile(ps), counters["inductor"]["cudagraph_skips"] - skips)
        return runs[products]

    return run


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("products", ["matmul", "triton", "triton_op"])
def test_compiled_generate_replays_cuda_graphs_gpu(products, compiled_generate_runs):
    """transformers' own compiled decoding (inductor, CUDA graphs) with ``decode_products``: no
    CUDA-graph skip; each profiled step replays a graph and never calls the op from the host (its
    launches are in the graph); the Triton products give the matmul default's tokens and kept
    slots and launch no more kernels from the host than its step (``benchmarks/kv/step_profile.py``)."""
    out, kept, prof, skips = compiled_generate_runs(products)
    assert skips == 0, (products, skips)
    assert prof["graph_launches"] >= 1, prof
    assert not any(name.startswith("anybudget::") for name in prof["op_calls"]), prof
    if products == "matmul":
        return
    want, want_kept, want_prof, _ = compiled_generate_runs("matmul")
    assert torch.equal(out, want), products
    for i, (a, b) in enumerate(zip(want_kept, kept)):
        assert torch.equal(a, b), (products, i)
    assert prof["kernel_launches"] <= want_prof["kernel_launches"], (prof, want_prof)
