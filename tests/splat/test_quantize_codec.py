import numpy as np
import pytest
import torch
from splat_helpers import random_scene

from anybudget import Budget, BudgetError
from anybudget.splat.budget import estimated_size, plan_for_size
from anybudget.splat.codec import (
    CodecError,
    decode,
    encode,
    load_lgz,
    pack_bits,
    save_lgz,
    unpack_bits,
)
from anybudget.splat.ply import ply_bytes
from anybudget.splat.quantize import QuantizeConfig, nearest_code, quantize, weighted_kmeans


def _q(n=300, degree=2, position_bits=0, codebook=32, ratio=0.6, seed=0):
    s = random_scene(n, degree=degree, seed=seed)
    sig = torch.rand(n, generator=torch.Generator().manual_seed(seed)).double()
    cfg = QuantizeConfig(codebook_size=codebook, ratio=ratio, iterations=20, batch=128, position_bits=position_bits)
    return s, sig, quantize(s, sig, cfg)


@pytest.mark.parametrize("bits", [1, 5, 13, 17])
def test_bit_packing_round_trip(bits):
    v = np.random.default_rng(bits).integers(0, 2**bits, size=101)
    data = pack_bits(v, bits)
    assert len(data) == -(-101 * bits // 8)
    assert np.array_equal(unpack_bits(data, 101, bits), v)
    with pytest.raises(ValueError, match="bits="):
        pack_bits(np.array([2**bits]), bits)


def test_vq_targets_least_significant_and_keeps_rest_fp16():
    s, sig, q = _q()
    m = round(0.6 * len(s))
    assert int(q.vq_mask.sum()) == m and q.indices.shape == (m,)
    assert sig[q.vq_mask].max() <= sig[~q.vq_mask].min()  # the least significant are quantised
    sh = torch.cat([s.sh_dc, s.sh_rest.reshape(len(s), -1)], 1)
    assert torch.equal(q.sh_fp16, sh[~q.vq_mask].half())
    assert torch.equal(q.indices.long(), nearest_code(sh[q.vq_mask], q.codebook.float()))
    dec = q.to_scene()
    assert torch.equal(dec.means, s.means) and torch.equal(dec.opacity_logits, s.opacity_logits.half().float())


def test_weighted_kmeans_follows_weights():
    # two clusters; the heavy one must own a codeword at its centre
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 2, generator=g) * 0.01 + 5, torch.randn(200, 2, generator=g) * 0.01 - 5])
    w = torch.cat([torch.full((200,), 100.0), torch.full((200,), 0.01)])
    code = weighted_kmeans(x, w, 2, iterations=30, batch=100)
    assert (code - torch.tensor([5.0, 5.0])).norm(dim=-1).min() < 0.05


@pytest.mark.parametrize("position_bits", [0, 16])
def test_decode_encode_reproduces_quantized_scene_exactly(tmp_path, position_bits):
    _, _, q = _q(position_bits=position_bits)
    back = decode(encode(q))
    for f in ("means", "opacity", "log_scales", "quats", "vq_mask", "indices", "codebook", "sh_fp16"):
        assert torch.equal(getattr(back, f), getattr(q, f)), f
    assert back.sh_degree == q.sh_degree
    assert ply_bytes(back.to_scene()) == ply_bytes(q.to_scene())
    size = save_lgz(q, tmp_path / "s.lgz")
    assert size == (tmp_path / "s.lgz").stat().st_size
    assert load_lgz(tmp_path / "s.lgz").to_scene().equal(q.to_scene())


def test_position_quantisation_error_bounded():
    s, _, q = _q(position_bits=16)
    step = (s.means.max(0).values - s.means.min(0).values) / 65535
    assert ((q.means - s.means).abs() <= step * 0.51 + 1e-7).all()


def test_corrupt_streams_raise(tmp_path):
    _, _, q = _q(n=50)
    data = encode(q)
    with pytest.raises(CodecError, match="magic"):
        decode(b"XXXX" + data[4:])
    with pytest.raises(CodecError, match="truncated"):
        decode(data[:-10])
    (tmp_path / "bad.lgz").write_bytes(data[:-10])
    with pytest.raises(CodecError, match="bad.lgz"):
        load_lgz(tmp_path / "bad.lgz")


def test_ratio_and_config_errors():
    with pytest.raises(ValueError, match="ratio=1.0.*\\[0, 1\\)"):
        QuantizeConfig(ratio=1.0)
    with pytest.raises(ValueError, match="position_bits"):
        QuantizeConfig(position_bits=8)


def test_estimated_size_bounds_real_file_and_budget_plan():
    _s, _sig, q = _q(n=400, codebook=64, ratio=0.6)
    est = estimated_size(400, 2, 0.0, 0.6, 64)
    assert len(encode(q)) <= est
    n = 1_000_000
    default = estimated_size(n, 2, 0.66, 0.6)
    loose = plan_for_size(f"size={default + 10}", n, 2)
    assert (loose.prune_ratio, loose.vq_ratio, loose.position_bits) == (0.66, 0.6, 0)
    tight = plan_for_size(Budget(size=int(default * 0.8)), n, 2)
    assert tight.prune_ratio > 0.66 and tight.estimated_bytes <= tight.target_bytes
    tighter = plan_for_size("size=5MB", n, 2)
    assert tighter.vq_ratio == 0.95 and tighter.position_bits == 0 and tighter.estimated_bytes <= 5_000_000
    assert plan_for_size("size=3.5MB", n, 2).position_bits == 16
    with pytest.raises(BudgetError, match="size=10KB is out of reach"):
        plan_for_size("size=10KB", n, 2)
    with pytest.raises(BudgetError, match="no 'size'"):
        plan_for_size("kv=20%", n, 2)


def test_quantize_positions_is_what_quantize_stores_and_bad_fps_batch_raises():
    from anybudget.splat.evaluate import measure_fps
    from anybudget.splat.quantize import quantize_positions

    s, _, q = _q(position_bits=16)
    means, codes, rng = quantize_positions(s.means)
    assert torch.equal(codes, q.means_q) and torch.equal(rng, q.means_range) and torch.equal(means, q.means)
    assert (means - s.means).abs().max() <= (rng[1] - rng[0]).max() / 65535
    with pytest.raises(ValueError, match="batch"):
        measure_fps(s, [], batch=0)
    import time

    from splat_helpers import orbit_cameras

    t = time.perf_counter()
    fps = measure_fps(s, orbit_cameras(1, size=8), backend="reference", repeats=1, warmup=0, min_seconds=0.3)
    assert time.perf_counter() - t >= 0.3 and fps > 0
    with pytest.raises(ValueError, match="CUDA"):
        measure_fps(s, [], batch=8)
    from anybudget.splat.render import render_gsplat_batch

    with pytest.raises(ValueError, match="share one width and height"):  # checked before gsplat is needed
        render_gsplat_batch(s, [])
