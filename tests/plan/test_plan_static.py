"""Static serving: fixed-slot caches (compiled decoding on CUDA, eager here), their memory terms,
the bytes-linear latency model fitted from measured points, and a static plan end to end."""

from __future__ import annotations

import pytest
import torch
from plan_helpers import PCT, POL, small_workload

from anybudget.elastic import params_table
from anybudget.kv import KVBudgetCache
from anybudget.plan import (
    Candidate,
    LatencyModel,
    Quality,
    ServingWorkload,
    export_candidate,
    fit,
    load_plan,
    measure_candidate,
    memory_terms,
    static_latency_model,
    write_plan,
)
from anybudget.plan.costs import SLOT_META, step_bytes

WL = small_workload()


def params_of(em, c):
    return int(params_table(em).cost(em.uniform_choice(em.kv_choices.index(c.kv_groups), em.mlp_choices.index(c.mlp_width))))


def test_step_bytes_counts_weights_and_every_slot():
    shape = {"layers": 4, "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "intermediate": 128, "vocab": 100}
    wl = ServingWorkload(1000, 100, 4, "bfloat16")
    full = step_bytes(shape, 10_000, Candidate(2, 128), wl)
    assert full == {"weights": 20_000, "kv": 4 * 4 * 2 * 1101 * 2 * 16 * 2, "total": 20_000 + 4 * 4 * 2 * 1101 * 64}
    h = step_bytes(shape, 10_000, Candidate(1, 128, "h2o", 20.0), wl)
    assert h["kv"] == 4 * 4 * 1 * (220 + 1) * (2 * 16 * 2 + SLOT_META + 4)


def test_static_latency_model_fits_two_points_per_kind(em):
    truth = {"full": (1e-3, 2e-9), "h2o": (3e-3, 1e-9), "local": (2e-3, 0.0)}
    params = {f"{g}/{w}": params_of(em, Candidate(g, w)) for g in em.kv_choices for w in em.mlp_choices}
    seen = []

    def measure(model, c, wl):
        kind = "full" if c.policy == "full" else c.policy
        t0, s = truth[kind]
        seen.append(c.label)
        if kind == "local" and c.mlp_width == 32:  # noise: the smaller point measured slower -> slope 0
            return {"step_s": 2.5e-3, "peak_bytes": 0, "peak_kind": "cpu"}
        b = step_bytes(em.shape, params[f"{c.kv_groups}/{c.mlp_width}"], c, wl)["total"]
        return {"step_s": t0 + s * b, "peak_bytes": 0, "peak_kind": "cpu"}

    lat, calib = static_latency_model(em, WL, POL, PCT, measure=measure)
    assert seen == ["kv2/mlp128 full", "kv2/mlp128 h2o@50%", "kv2/mlp128 local@50%",
                    "kv2/mlp32 full", "kv2/mlp32 h2o@20%", "kv2/mlp32 local@20%"] and len(calib) == 6
    assert lat.mode == "static" and lat.linear["full"] == pytest.approx([1e-3, 2e-9], rel=1e-6)
    assert lat.linear["h2o"] == pytest.approx([3e-3, 1e-9], rel=1e-6)
    assert lat.linear["local"] == [2.5e-3, 0.0]
    c = Candidate(1, 96, "h2o", 50.0)  # a point not measured: on the fitted line
    b = step_bytes(em.shape, params["1/96"], c, WL)["total"]
    assert lat.step(c, WL) == pytest.approx(3e-3 + 1e-9 * b, rel=1e-6)
    assert LatencyModel.from_dict(lat.to_dict()) == lat
    lat.mem_correction, lat.mem_groups = {"h2o": 1000.0}, 2
    assert lat.mem_extra(Candidate(1, 32, "h2o", 20.0)) == 1000.0  # static: not scaled by KV groups
    with pytest.raises(KeyError, match="streaming"):
        lat.step(Candidate(1, 96, "streaming", 50.0), WL)


def test_static_memory_terms_against_the_caches_allocated(em):
    for c in (Candidate(2, 128), Candidate(1, 64, "h2o", 50.0), Candidate(2, 96, "local", 20.0)):
        pred = memory_terms(em.shape, params_of(em, c), c, WL, serve="static")
        m = measure_candidate(export_candidate(em, c, dtype=torch.float32), c, WL, repeat=1, serve="static")
        assert m["serve"] == "static" and not m["compiled"]  # eager off CUDA
        assert pred["weights"] == m["weights_bytes"], c.label
        if c.policy == "full":  # StaticCache: prompt + new + 1 slots of keys and values, exactly
            assert pred["kv_alloc"] == m["kv_alloc_bytes"] == m["kv_used_bytes"], c.label
        else:
            assert m["kv_alloc_bytes"] <= pred["kv_alloc"] <= 2 * m["kv_alloc_bytes"] + 2 * 2 * c.kv_groups * 16 * 4 * 32, c.label
    with pytest.raises(ValueError, match="serve='fast'"):
        memory_terms(em.shape, 1, Candidate(2, 128), WL, serve="fast")


def test_fit_folder_refuses_an_unknown_serve_mode_before_loading(tmp_path):
    from anybudget.plan import fit_folder

    # tmp_path is no elastic folder: the serve check must come first, naming the allowed modes
    with pytest.raises(ValueError, match="serve='fast' must be one of eager, static"):
        fit_folder(tmp_path, "mem=1GiB", WL, serve="fast")


def test_static_plan_serves_and_saves_static_caches(em, tmp_path):
    ppl = {f"kv{g}/mlp{w}": 100.0 / (g * w) ** 0.5 for g in em.kv_choices for w in em.mlp_choices}
    q = Quality(ppl, {"h2o@50%": 1.01, "h2o@20%": 1.2, "local@50%": 1.1, "local@20%": 1.4})
    # compiled full caches slower than the budget here: the best fitting candidate evicts
    lat = LatencyModel(em.num_layers, {}, {}, mode="static", linear={"full": [9e-3, 0.0], "h2o": [1e-3, 0.0],
                       "local": [1e-3, 0.0]}, step_inputs={"shape": dict(em.shape), "params": {
                           f"{g}/{w}": params_of(em, Candidate(g, w)) for g in em.kv_choices for w in em.mlp_choices}})
    calls = []

    def measure(model, c, wl):  # the real static measurement (eager on the CPU), latency zeroed for the budget
        calls.append(c.label)
        return measure_candidate(model, c, wl, repeat=1, serve="static") | {"step_s": 0.0}

    p = fit(em, "mem=1GiB,latency=5ms", WL, q, lat, POL, PCT, measure=measure)
    assert p.serve == "static" and p.candidate.label == "kv2/mlp128 h2o@50%" and calls == [p.candidate.label]
    assert p.cache_settings() == {"policy": "h2o", "budget": "50%", "static": True, "max_new_tokens": 4}
    cache = load_plan(write_plan(p, em, tmp_path / "plan", png=False)).make_cache()
    assert isinstance(cache, KVBudgetCache) and cache.static and cache.max_new_tokens == 4
    assert "compiled static caches" in p.assumptions[1]
    with pytest.raises(ValueError, match="serve='eager' but the latency model was fitted for 'static'"):
        fit(em, "mem=1GiB", WL, q, lat, POL, PCT, serve="eager")


def test_compiled_static_step_is_shared_by_sub_networks():
    """Through dynamo (eager backend on the CPU): with compile_settings' shared graphs (share_graphs=True), sub-networks
    of different widths and KV groups (> 1) and budgets reuse one compiled step per cache kind."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM

    from anybudget.elastic import make_elastic

    torch.manual_seed(0)  # 8 query heads of 8 = hidden: the full model's q_proj rows equal hidden (duck sizing)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=8, max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=2)
    g = torch.Generator().manual_seed(1)
    em4 = make_elastic(LlamaForCausalLM(cfg).eval(), [torch.randint(0, 256, (2, 16), generator=g)])
    cc = CompileConfig(backend="eager", dynamic=True)
    cc._compile_all_devices = True
    wl = ServingWorkload(16, 4, 3, "float32")
    before = counters["stats"]["unique_graphs"]
    for c in (Candidate(4, 128, "h2o", 50.0), Candidate(3, 64, "h2o", 20.0), Candidate(2, 96, "h2o", 50.0)):
        m = measure_candidate(export_candidate(em4, c, dtype=torch.float32), c, wl, repeat=1, serve="static",
                              compile_config=cc, share_graphs=True)
        assert m["compiled"] and m["serve"] == "static"
    assert counters["stats"]["unique_graphs"] - before == 1
