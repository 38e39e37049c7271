import numpy as np
import pytest

from anybudget.nas.benchmark import ENV_VAR, NB201Table, kendall_spearman
from anybudget.nas.correlate import (
    ProxyConfig,
    correlation_table,
    sample_indices,
    score_archs,
    tenas_score,
)


def test_table_reads_the_real_accuracies(table):
    arch, acc = table.best("cifar10")
    assert round(acc, 2) == 94.37
    assert table.accuracy(arch, "cifar10") == acc
    assert set(table.accuracies(0)) == {"cifar10", "cifar100", "ImageNet16-120"}
    with pytest.raises(ValueError, match="dataset='svhn' is not known"):
        table.accuracy(0, "svhn")


def test_packaged_table_is_the_shared_one(table, monkeypatch):
    from anybudget.nas.benchmark import PACKAGED

    monkeypatch.delenv(ENV_VAR, raising=False)
    shipped = NB201Table.load()
    assert shipped.path == str(PACKAGED) and len(shipped.arch_strings) == 15625
    assert shipped.arch_strings == table.arch_strings
    for d in ("cifar10", "cifar100", "ImageNet16-120"):
        assert (shipped.acc[d] == table.acc[d]).all()
    assert round(shipped.best("cifar10")[1], 2) == 94.37


def test_table_path_errors(tmp_path, monkeypatch):
    import anybudget.nas.benchmark as nb

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(nb, "PACKAGED", tmp_path / "absent.csv.xz")
    with pytest.raises(FileNotFoundError, match="set ANYBUDGET_NB201_CSV"):
        NB201Table.load()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NB201Table.load(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing column"):
        NB201Table.load(bad)


def test_kendall_spearman_and_tenas_score():
    tau, rho = kendall_spearman([1, 2, 3, 4], [10, 20, 30, 40])
    assert tau == pytest.approx(1.0) and rho == pytest.approx(1.0)
    tau, _ = kendall_spearman([1, 2, np.inf, 4], [40, 30, 0, 10])  # inf dropped
    assert tau == pytest.approx(-1.0)
    # low kappa and many regions -> best (highest) score; ties share the lower rank
    s = tenas_score([1.0, 5.0, 5.0, 9.0], [10, 3, 3, 1])
    assert s.tolist() == [-0.0, -2.0, -2.0, -6.0]
    with pytest.raises(ValueError, match="differ in shape"):
        kendall_spearman([1, 2], [1, 2, 3])


def test_sampling_and_a_small_correlation_run(table):
    idx = sample_indices(6, seed=1)
    assert len(set(idx.tolist())) == 6 and np.array_equal(idx, sample_indices(6, seed=1))
    cfg = ProxyConfig(ntk_batch=6, ntk_C=1, region_samples=200, region_batch=200, zc_batch=4, zc_C=2, zc_N=1)
    s = score_archs(idx, cfg, device="cpu", quiet=True, proxies=("ntk_cond", "linear_regions", "params"))
    assert s["index"] == idx.tolist() and len(s["ntk_cond"]) == 6
    corr = correlation_table(s, table)
    assert set(corr) == {"ntk_cond", "linear_regions", "params", "tenas"}
    assert -1 <= corr["tenas"]["cifar100"]["kendall"] <= 1
    with pytest.raises(ValueError, match=r"n=0 must be an integer in \[1, 15625\]"):
        sample_indices(0)
    with pytest.raises(ValueError, match="unknown proxies"):
        score_archs([0], cfg, proxies=("zen",), device="cpu", quiet=True)


def test_score_arch_shared_backward_equals_separate_proxies():
    from anybudget.nas.correlate import score_arch
    from anybudget.nas.data import photo_batch

    cfg = ProxyConfig(zc_batch=6, zc_C=2, zc_N=1)
    x, y = photo_batch(6, seed=2)
    both = score_arch(11, cfg, x, y, None, proxies=("snip", "grad_norm"))
    assert both["snip"] == pytest.approx(score_arch(11, cfg, x, y, None, proxies=("snip",))["snip"], rel=1e-6)
    assert both["grad_norm"] == pytest.approx(score_arch(11, cfg, x, y, None, proxies=("grad_norm",))["grad_norm"], rel=1e-6)
