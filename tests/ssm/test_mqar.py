import pytest
import torch

from anybudget.ssm.mqar import TEST_SETS, TRAIN_MIXTURE, MQARStream, multiquery_ar


def test_structure_matches_zoology_semantics():
    V, L, k = 64, 40, 5
    x, y = multiquery_ar(V, L, k, 50, seed=3, power_a=0.01)
    assert x.shape == y.shape == (50, L) and x.dtype == torch.int64
    keys, vals = x[:, 0 : 2 * k : 2], x[:, 1 : 2 * k : 2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((vals >= V // 2) & (vals < V)).all()
    for i in range(50):
        assert len(set(keys[i].tolist())) == k and len(set(vals[i].tolist())) == k
        q = (y[i] != -100).nonzero().flatten()
        assert len(q) == k
        assert ((q - 2 * k) % 2 == 0).all() and (q >= 2 * k).all()
        mapping = dict(zip(keys[i].tolist(), vals[i].tolist()))
        for pos in q.tolist():
            assert y[i, pos].item() == mapping[x[i, pos].item()]  # label = value of queried key
        rest = torch.ones(L, dtype=torch.bool)
        rest[: 2 * k] = False
        rest[q] = False
        assert (x[i, rest] == 0).all()  # filler is 0 by default


def test_power_law_puts_queries_near_the_context_and_random_filler():
    _x, y = multiquery_ar(4096, 1024, 8, 200, seed=0, power_a=0.01)
    pos = (y != -100).nonzero()[:, 1].float()
    uniform_mean = 16 + (1024 - 16) / 2
    assert pos.mean() < uniform_mean - 100  # p(gap) ~ gap^-0.99 favours short gaps
    xr, yr = multiquery_ar(4096, 1024, 8, 4, seed=0, random_non_queries=True)
    assert (xr[:, 16:] != 0).float().mean() > 0.99
    assert torch.equal(yr, multiquery_ar(4096, 1024, 8, 4, seed=0)[1])


def test_deterministic_by_seed_and_stream_resumable():
    a = multiquery_ar(256, 64, 4, 8, seed=11)
    b = multiquery_ar(256, 64, 4, 8, seed=11)
    c = multiquery_ar(256, 64, 4, 8, seed=12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    s1, s2 = MQARStream(batch_size=2, seed=5), MQARStream(batch_size=2, seed=5)
    for step in (0, 7, 7):
        x1, _y1, seg1 = s1.batch(step)
        x2, _y2, seg2 = s2.batch(step)
        assert seg1 == seg2 and torch.equal(x1, x2) and x1.shape == (2, seg1.seq_len)


def test_reference_mixture_and_test_sets():
    assert sum(s.num_examples for s in TRAIN_MIXTURE) == 300_000
    assert [(s.seq_len, s.num_kv_pairs, s.num_examples) for s in TEST_SETS] == [
        (1024, 64, 1000), (1024, 128, 1000), (1024, 256, 1000)]
    _x, y = multiquery_ar(8192, 1024, 256, 2, seed=0)  # the hardest test set fits exactly
    assert ((y != -100).sum(1) == 256).all()


@pytest.mark.parametrize(
    "args, match",
    [
        ((64, 32, 9, 1), r"num_kv_pairs=9 needs seq_len >= 4 \* num_kv_pairs = 36, got 32"),
        ((32, 32, 2, 1), "vocab_size=32 must be > seq_len=32"),
        ((64, 31, 2, 1), "seq_len=31 must be even"),
        ((64, 32, 0, 1), "num_kv_pairs=0"),
        ((64, 32, 2, 0), "num_examples=0"),
    ],
)
def test_bad_arguments_raise(args, match):
    with pytest.raises(ValueError, match=match):
        multiquery_ar(*args)


def test_bad_power_a_and_stream_args():
    with pytest.raises(ValueError, match="power_a=0.0 must be > 0"):
        multiquery_ar(64, 32, 2, 1, power_a=0.0)
    with pytest.raises(ValueError, match="batch_size=0"):
        MQARStream(batch_size=0)
