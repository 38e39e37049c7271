"""The compiled static measurement (``plan.device``, dynamo on the CPU with cheap backends): how many
graphs it compiles for several decoding steps and sub-networks, and that it serves the tokens the
eager path serves."""

from __future__ import annotations

import pytest
import torch
from plan_helpers import tiny_elastic
from torch._dynamo.utils import counters

from anybudget.kv import enable
from anybudget.plan import Candidate, ServingWorkload, export_candidate, measure_candidate
from anybudget.plan.device import (
    default_compile_config,
    hf_static_cache,
    make_plan_cache,
    serve_generate,
)


@pytest.fixture(scope="module")
def em():
    return tiny_elastic(vocab=256)


def cpu_config(backend: str, share_graphs: bool = False):
    cc = default_compile_config(share_graphs)
    cc.backend, cc.mode, cc._compile_all_devices = backend, None, True
    return cc


def test_default_compile_config_is_static_reduce_overhead():
    cc, shared = default_compile_config(), default_compile_config(share_graphs=True)
    assert (cc.dynamic, cc.mode, cc.backend) == (False, "reduce-overhead", "inductor")  # CUDA graphs, no autotuning
    assert shared.dynamic is True


def recompiles() -> int:
    """Recompilations since dynamo's last reset (a guard failure is logged for each)."""
    from torch._dynamo.utils import guard_failures

    return sum(len(v) for v in guard_failures.values())


def test_static_compile_one_graph_per_candidate_none_per_decoding_step(em):
    """Two sub-networks and two cache kinds, 8 new tokens (3 generate calls each: warm-up, 1, 8):
    one graph and one compiled frame per candidate, so 4 in all, and no recompilation."""
    wl = ServingWorkload(16, 8, 2, "float32")
    cc = cpu_config("eager")
    g0, f0 = counters["stats"]["unique_graphs"], counters["frames"]["total"]
    per = []
    for c in (Candidate(2, 128, "h2o", 50.0), Candidate(1, 64, "h2o", 20.0), Candidate(2, 128), Candidate(1, 64)):
        g, f = counters["stats"]["unique_graphs"], counters["frames"]["total"]
        m = measure_candidate(export_candidate(em, c, dtype=torch.float32), c, wl, repeat=1, serve="static",
                              compile_config=cc)
        assert m["compiled"] and m["compile"] == "static" and m["timed_compiles"] == 0
        per.append((counters["stats"]["unique_graphs"] - g, counters["frames"]["total"] - f, recompiles()))
    assert per == [(1, 1, 0)] * 4  # measure_candidate resets dynamo first: recompiles() counts this candidate's
    assert counters["stats"]["unique_graphs"] - g0 == 4 and counters["frames"]["total"] - f0 == 4


def test_recompile_count_sees_a_second_sub_network_without_reset(em):
    """The control of the count above: two sub-networks served through one dynamo state recompile once."""
    wl = ServingWorkload(16, 3, 2, "float32")
    ids = torch.randint(3, 256, (wl.batch, wl.prompt), generator=torch.Generator().manual_seed(2))
    torch._dynamo.reset()
    for c in (Candidate(2, 128, "h2o", 50.0), Candidate(2, 64, "h2o", 50.0)):
        model = enable(export_candidate(em, c, dtype=torch.float32))
        with torch.no_grad():
            serve_generate(model, ids, torch.ones_like(ids), wl.new_tokens,
                           make_plan_cache(c.policy, c.kv_budget, True, wl.new_tokens), cpu_config("eager"))
    assert recompiles() == 1


@pytest.mark.parametrize("c", [Candidate(2, 96, "h2o", 50.0), Candidate(2, 96, "local", 20.0), Candidate(1, 64)],
                         ids=lambda c: c.label)
def test_compiled_static_path_serves_the_eager_tokens(em, c):
    """serve_generate compiled (aot_eager: dynamo + AOT autograd, static shapes) == eager, greedy tokens."""
    from anybudget.kv import disable

    model = export_candidate(em, c, dtype=torch.float32)
    wl = ServingWorkload(20, 10, 3, "float32")
    ids = torch.randint(3, 256, (wl.batch, wl.prompt), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    (disable if c.policy == "full" else enable)(model)

    def cache():
        if c.policy == "full":
            return hf_static_cache(model, wl.batch, wl.prompt + wl.new_tokens + 1, mark_dynamic=False)
        return make_plan_cache(c.policy, c.kv_budget, True, wl.new_tokens)

    torch._dynamo.reset()
    g0 = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        eager = serve_generate(model, ids, mask, wl.new_tokens, cache())
        compiled = serve_generate(model, ids, mask, wl.new_tokens, cache(), cpu_config("aot_eager"))
    assert counters["stats"]["unique_graphs"] - g0 == 1  # the decoding step; the prefill stays eager
    assert compiled.shape == (wl.batch, wl.prompt + wl.new_tokens)
    assert torch.equal(eager, compiled)
