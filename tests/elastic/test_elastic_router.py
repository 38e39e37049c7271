import pytest
import torch
from elastic_helpers import tiny_model, token_batches

from anybudget.budget import BudgetError
from anybudget.elastic import make_elastic
from anybudget.elastic.data import eval_windows
from anybudget.elastic.latency import CostTable, Workload, memory_bytes, param_count, params_table
from anybudget.elastic.router import RouterTrainConfig, StaticRouter, route, train_static_router


def _fake_latency_table(em):
    # deterministic "measured" table: cost grows with the choice sizes, layer 1 twice as expensive
    per = [[[(li + 1) * (g * 1e-3 + w * 1e-5) for w in em.mlp_choices] for g in em.kv_choices] for li in range(em.num_layers)]
    return CostTable("latency", 2e-3, per, em.kv_choices, em.mlp_choices, {"batch": 1, "seq": 8, "mode": "prefill", "dtype": "float32"}, "fake")


@pytest.fixture(scope="module")
def trained():
    em = make_elastic(tiny_model("llama", layers=3), token_batches())
    windows = eval_windows(torch.randint(0, 97, (200,), generator=torch.Generator().manual_seed(0)), seq=16, batch=4)
    table = _fake_latency_table(em)
    cfg = RouterTrainConfig(steps=40, surrogate_samples=24, sample_every=10, surrogate_threshold=10.0)
    router, stats = train_static_router(em, table, windows, cfg)
    return em, table, router, stats


def test_router_meets_latency_budgets(trained):
    em, table, router, stats = trained
    assert stats["router_steps"] > 0 and stats["measured"] >= 24
    lo, hi = table.cost(em.smallest()), table.cost(em.full())
    for frac in (0.0, 0.1, 0.3, 0.5, 0.8, 1.0):
        target = lo + frac * (hi - lo)
        sub = route(em, f"latency={target * 1e3:.6f}ms", router=router, table=table)
        assert table.cost(sub) <= target * (1 + 1e-9)
    uni = route(em, f"latency={(lo + hi) / 2 * 1e3}ms", router=router, table=table, uniform=True)
    assert uni.is_uniform


def test_budget_below_smallest_names_the_smallest(trained):
    em, table, router, _ = trained
    smallest_ms = table.cost(em.smallest()) * 1e3
    with pytest.raises(BudgetError, match="smallest feasible budget is latency="):
        route(em, f"latency={smallest_ms * 0.5}ms", router=router, table=table)
    with pytest.raises(BudgetError, match="needs a measured latency table"):
        route(em, "latency=5ms")
    with pytest.raises(BudgetError, match="smallest feasible budget is params="):
        route(em, "params=10")


def test_params_and_mem_budgets_without_router(trained):
    em = trained[0]
    full = param_count(em, em.full())
    sub = route(em, f"params={full // 2}")
    assert param_count(em, sub) <= full // 2
    wl = Workload(batch=1, seq=64, mode="decode", dtype="float32")
    m = memory_bytes(em, em.full(), wl)
    sub = route(em, f"mem={int(m * 0.9)}B", workload=wl)
    assert memory_bytes(em, sub, wl) <= m * 0.9
    assert params_table(em).cost(em.full()) == full


def test_router_save_load_round_trip(trained, tmp_path):
    em, table, router, _ = trained
    router.save(tmp_path / "r.safetensors")
    again = StaticRouter.load(tmp_path / "r.safetensors")
    t = torch.tensor([table.cost(em.full()) * 0.8], dtype=torch.float64)
    for x, y in zip(router(t), again(t)):
        assert torch.equal(x, y)
    assert again.surrogate is not None


@pytest.mark.parametrize("encoding,cost_loss", [("onehot", "asymmetric"), ("scalar", "hinge")])
def test_router_variants_train_and_meet_budgets(encoding, cost_loss):
    em = make_elastic(tiny_model("qwen2"), token_batches())
    windows = eval_windows(torch.randint(0, 97, (120,), generator=torch.Generator().manual_seed(1)), seq=16, batch=4)
    table = _fake_latency_table(em)
    cfg = RouterTrainConfig(steps=12, surrogate_samples=10, surrogate_threshold=10.0, encoding=encoding, cost_loss=cost_loss)
    router, stats = train_static_router(em, table, windows, cfg)
    assert stats["router_steps"] == 12
    lo, hi = table.cost(em.smallest()), table.cost(em.full())
    for f in cfg.onehot_budgets:
        t = lo + f * (hi - lo)
        assert table.cost(route(em, f"latency={t * 1e3}ms", router=router, table=table)) <= t * (1 + 1e-9)
    with pytest.raises(ValueError, match="cost_loss='x'"):
        RouterTrainConfig(cost_loss="x")


def test_route_with_calibration_is_no_worse_than_any_uniform_width_that_fits(trained):
    from anybudget.elastic.router import uniform_configs
    from anybudget.elastic.surrogate import measure_loss

    em, table, router, _ = trained
    calib = eval_windows(torch.randint(0, 97, (120,), generator=torch.Generator().manual_seed(5)), seq=16, batch=4)
    lo, hi = table.cost(em.smallest()), table.cost(em.full())
    for frac in (0.2, 0.5, 0.9):
        target = lo + frac * (hi - lo)
        sub = route(em, f"latency={target * 1e3:.6f}ms", router=router, table=table, calib=calib)
        assert table.cost(sub) <= target * (1 + 1e-9)
        fits = [c for c in uniform_configs(em) if table.cost(c) <= target]
        assert fits
        best_uniform = min(measure_loss(em, c, calib) for c in fits)
        assert measure_loss(em, sub, calib) <= best_uniform + 1e-6



def _measure_like(table, em, scale_uniform=0.93, scale_other=1.06):
    """A fake measurement: the table over-estimates uniform configs and under-estimates mixed ones."""
    calls = []

    def measure(sub):
        calls.append(str(sub))
        return table.cost(sub) * (scale_uniform if sub.is_uniform else scale_other)
    return measure, calls


def _kl_from_full(em, windows):
    """A calibration score on which the full model is the strict best: forward KL from the full model."""
    from anybudget.elastic.train import forward_kl

    with torch.no_grad():
        full = [em.model(input_ids=w[:, :-1]).logits for w in windows]

    def score(sub):
        with torch.no_grad(), em.use(sub):
            return sum(float(forward_kl(em.model(input_ids=w[:, :-1]).logits, f)) for w, f in zip(windows, full))
    return score


def test_routed_choice_is_never_worse_on_calibration_than_a_fitting_uniform_width(trained):
    from anybudget.elastic.router import uniform_configs
    from anybudget.elastic.surrogate import measure_loss

    em, table, router, _ = trained
    calib = eval_windows(torch.randint(0, 97, (120,), generator=torch.Generator().manual_seed(7)), seq=16, batch=4)
    losses = {str(c): measure_loss(em, c, calib) for c in uniform_configs(em)}
    measure, _ = _measure_like(table, em)
    for kw in ({}, {"measure": measure}):
        check = kw.get("measure", table.cost)
        lo, hi = check(em.smallest()), check(em.full())
        for frac in (0.0, 0.15, 0.4, 0.6, 0.85, 1.0):
            target = lo + frac * (hi - lo)
            sub = route(em, f"latency={target!r}s", router=router, table=table, calib=calib, **kw)
            assert check(sub) <= target * (1 + 1e-9)
            fits = [c for c in uniform_configs(em) if check(c) <= target * (1 + 1e-9)]
            assert measure_loss(em, sub, calib) <= min(losses[str(c)] for c in fits) + 1e-6
    # a budget equal to the full model's latency gets the full model (table and measured budgets)
    # when the full model scores best on the calibration (as trained elastic models do)
    kl = _kl_from_full(em, calib)
    assert kl(em.full()) < min(kl(c) for c in uniform_configs(em) if c != em.full())
    for kw, full in (({}, table.cost(em.full())), ({"measure": measure}, measure(em.full()))):
        assert route(em, f"latency={full!r}s", router=router, table=table, calib=kl, **kw) == em.full()


def test_measured_fit_keeps_what_measures_within_the_budget_and_drops_what_does_not(trained):
    em, table, router, _ = trained
    measure, calls = _measure_like(table, em)
    full_measured = measure(em.full())
    # the table says the full model costs more than this budget; measured, it fits: it is kept
    sub = route(em, f"latency={full_measured!r}s", table=table, uniform=True, measure=measure)
    assert sub == em.full() and table.cost(sub) > full_measured
    # the router's mixed configs measure 6% over the table: whatever comes back measures within the budget
    lo, hi = table.cost(em.smallest()), table.cost(em.full())
    over = 0
    for frac in (0.1, 0.3, 0.7):
        target = lo + frac * (hi - lo)
        over += measure(route(em, f"latency={target!r}s", router=router, table=table)) > target
        calls.clear()
        sub = route(em, f"latency={target!r}s", router=router, table=table, measure=measure)
        assert measure(sub) <= target and calls
    assert over  # the premise: trusting the table alone breaks some of these budgets when measured
    with pytest.raises(BudgetError, match=r"\(measured\); the smallest feasible budget is latency="):
        route(em, f"latency={measure(em.smallest()) * 0.99 * 1e3}ms", router=router, table=table, measure=measure)
    with pytest.raises(ValueError, match="measure= checks latency budgets"):
        route(em, "params=1000000", measure=measure)
