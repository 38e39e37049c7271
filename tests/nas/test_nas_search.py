import json

import pytest
import torch

from anybudget import Budget, BudgetError
from anybudget.nas.cost import arch_cost, edge_costs
from anybudget.nas.search import TENASConfig, enforce_budget, rank_ops, tenas_search
from anybudget.nas.space import OPS

# A toy setting: tiny networks, few samples, one draw per op (~seconds on 2 CPU cores).
TOY = TENASConfig(batch_size=8, repeat=1, C=1, region_samples=300, region_batch=150, image_pool=24)


def test_rank_ops_reference_rule_with_ties():
    # Edge 0 has ops 1,2,3; edge 1 has ops 1,2.
    ntk = {(0, 1): 0.5, (0, 2): 0.1, (0, 3): 0.5, (1, 1): -0.2, (1, 2): 0.0}
    reg = {(0, 1): 0.0, (0, 2): 0.3, (0, 3): 0.1, (1, 1): 0.0, (1, 2): 0.2}
    choice, ranks = rank_ops(ntk, reg, prune_number=1, precision=3)
    # NTK descending, dense ranks with ties: 0.5,0.5 -> 0; 0.1 -> 1; 0.0 -> 2; -0.2 -> 3.
    # Regions ascending: 0.0,0.0 -> 0; 0.1 -> 1; 0.2 -> 2; 0.3 -> 3.
    assert ranks == {(0, 1): (0, 0), (0, 3): (0, 1), (0, 2): (1, 3), (1, 2): (2, 2), (1, 1): (3, 0)}
    assert choice == {(0,): [(0, 1)], (1,): [(1, 1)]}  # (1,1) and (1,2) tie at 3 and 4 -> (1,1)
    choice2, _ = rank_ops(ntk, reg, prune_number=2, precision=3)
    assert choice2[(0,)] == [(0, 1), (0, 3)]


def test_rank_sum_ties_are_broken_by_the_ntk_order():
    ntk = {(0, 1): 0.2, (0, 2): 0.1}
    reg = {(0, 1): 0.2, (0, 2): 0.1}  # sums: (0,1): 0+1, (0,2): 1+0 -> tie
    choice, _ = rank_ops(ntk, reg)
    assert choice == {(0,): [(0, 1)]}  # first in the NTK ranking
    with pytest.raises(ValueError, match="same"):
        rank_ops(ntk, {(0, 1): 0.0})


def test_enforce_budget_keeps_exactly_the_feasible_ops():
    base, per = edge_costs()
    per_f = {o: float(c.flops) for o, c in per.items()}
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, 0] = False
    # Room for exactly one 3x3 conv on top of the cheapest cell: a 3x3 on any edge stays
    # feasible, and nothing costlier than a 3x3 exists.
    limit = base.flops + per_f["nor_conv_3x3"]
    out = enforce_budget(mask, limit, float(base.flops), per_f)
    assert torch.equal(out, mask)
    limit = base.flops + per_f["nor_conv_3x3"] - 1
    out = enforce_budget(mask, limit, float(base.flops), per_f)
    assert not bool(out[:, OPS.index("nor_conv_3x3")].any()) and bool(out[:, OPS.index("nor_conv_1x1")].all())
    with pytest.raises(BudgetError, match="below every architecture left"):
        enforce_budget(mask, base.flops - 1, float(base.flops), per_f)


def test_toy_search_is_single_path_deterministic_and_resumable(tmp_path):
    a = tenas_search(TOY, seed=3, device="cpu", quiet=True)
    b = tenas_search(TOY, seed=3, device="cpu", quiet=True)
    assert a.arch == b.arch and a.rounds == b.rounds
    assert len(a.arch) == 6 and "none" not in a.arch
    assert len(a.rounds) == 3  # 4 ops per edge, one pruned per edge per round
    # Stop after the first round by planting its checkpoint, then resume.
    ck = tmp_path / "ck.json"
    state = {"seed": 3, "config": __import__("dataclasses").asdict(TOY), "budget": None,
             "mask": a.rounds[0]["mask"], "rounds": a.rounds[:1], "seconds": 1.0}
    ck.write_text(json.dumps(state))
    c = tenas_search(TOY, seed=3, device="cpu", quiet=True, checkpoint=ck)
    assert c.arch == a.arch and c.rounds == a.rounds
    with pytest.raises(ValueError, match="belongs to another run"):
        tenas_search(TOY, seed=4, device="cpu", quiet=True, checkpoint=ck)


def test_search_respects_a_flops_budget_of_half_the_largest_cell():
    limit = arch_cost(("nor_conv_3x3",) * 6).flops // 2
    r = tenas_search(TOY, seed=0, device="cpu", quiet=True, budget=Budget(flops=limit))
    assert arch_cost(r.arch).flops <= limit
    assert r.cost["value"] == arch_cost(r.arch).flops and r.cost["key"] == "flops"
    r = tenas_search(TOY, seed=0, device="cpu", quiet=True, budget="params=0.2M")
    assert arch_cost(r.arch).params <= 200_000


def test_impossible_or_wrong_budgets_raise():
    with pytest.raises(BudgetError, match=r"flops=1M is below every architecture.*the smallest costs 7.78M flops"):
        tenas_search(TOY, device="cpu", quiet=True, budget="flops=1M")
    with pytest.raises(BudgetError, match="exactly one of flops, params or latency"):
        tenas_search(TOY, device="cpu", quiet=True, budget="kv=20%")
    with pytest.raises(BudgetError, match="flops=abc is not valid"):
        tenas_search(TOY, device="cpu", quiet=True, budget="flops=abc")


def test_config_validation():
    with pytest.raises(ValueError, match="init='xavier' is not known"):
        TENASConfig(init="xavier")
    with pytest.raises(ValueError, match="batch_size=1 must be >= 2"):
        TENASConfig(batch_size=1)
    with pytest.raises(ValueError, match="repeat=0 must be an integer >= 1"):
        TENASConfig(repeat=0)
    with pytest.raises(ValueError, match="ntk_method='fast' must be"):
        TENASConfig(ntk_method="fast")


def test_latency_budget_uses_measured_costs():
    with pytest.raises(BudgetError, match=r"latency=1us is below every architecture"):
        tenas_search(TOY, device="cpu", quiet=True, budget="latency=1us")
