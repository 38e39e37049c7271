import pytest
import torch

from anybudget.kv.attention import attention_with_colsum_reference, masked_sdpa


def naive(q, k, v, scale, key_mask):
    """fp64 full-matrix attention: the definition."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    kk = k.double().repeat_interleave(G, 1)
    vv = v.double().repeat_interleave(G, 1)
    s = q.double() @ kk.transpose(-1, -2) * scale
    qpos = torch.arange(Lq) + Lk - Lq
    vis = (torch.arange(Lk)[None, :] <= qpos[:, None]).expand(B, Hq, Lq, Lk).clone()
    if key_mask is not None:
        km = key_mask if key_mask.dim() == 3 else key_mask[:, None].expand(B, Hkv, Lk)
        vis &= km.repeat_interleave(G, 1)[:, :, None, :]
    s = s.masked_fill(~vis, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    out = p @ vv
    col = p.view(B, Hkv, G, Lq, Lk).sum((2, 3))
    return out, col


@pytest.mark.parametrize("Hq,Hkv,Lq,Lk,chunk", [(4, 2, 7, 7, 3), (6, 3, 1, 13, 1024), (4, 4, 5, 11, 2), (8, 2, 16, 16, 1024)])
@pytest.mark.parametrize("mask_kind", [None, "2d", "3d"])
def test_reference_matches_definition(Hq, Hkv, Lq, Lk, chunk, mask_kind):
    g = torch.Generator().manual_seed(Hq * 100 + Lk)
    B, D = 2, 8
    q, k, v = (torch.randn(B, h, L, D, generator=g) for h, L in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk)))
    km = None
    if mask_kind == "2d":
        km = torch.rand(B, Lk, generator=g) > 0.3
        km[1, :] = False  # a row with no visible key: zeros out, nothing in colsum
    elif mask_kind == "3d":
        km = torch.rand(B, Hkv, Lk, generator=g) > 0.3
    out, col = attention_with_colsum_reference(q, k, v, scale=0.7, key_mask=km, chunk_size=chunk)
    ro, rc = naive(q, k, v, 0.7, km)
    assert col.dtype == torch.float32 and col.shape == (B, Hkv, Lk)
    torch.testing.assert_close(out.double(), ro, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(col.double(), rc, rtol=1e-5, atol=1e-5)
    if mask_kind == "2d":
        assert col[1].abs().sum() == 0 and out[1].abs().sum() == 0
    # every visible query row's probabilities sum to 1, so colsum totals (#visible rows x G)
    sdpa = masked_sdpa(q, k, v, scale=0.7, key_mask=km)
    torch.testing.assert_close(sdpa.double(), ro, rtol=1e-5, atol=1e-5)


def test_bad_shapes():
    q = torch.randn(1, 3, 4, 8)
    k = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attention_with_colsum_reference(q, k, k)
    with pytest.raises(ValueError, match="more queries"):
        attention_with_colsum_reference(torch.randn(1, 2, 5, 8), k, k)
    with pytest.raises(ValueError, match="key_mask"):
        attention_with_colsum_reference(torch.randn(1, 2, 4, 8), k, k, key_mask=torch.ones(1, 3, dtype=torch.bool))


def test_colsum_out_accumulates_in_place_and_bad_colsum_out_raises():
    from anybudget.kv.attention import attention_with_colsum

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 3, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    out_ref, col_ref = attention_with_colsum_reference(q, k, v)
    wide = torch.rand(2, 2, 9, generator=g)
    scores, tail, before = wide[..., :6], wide[..., 6:].clone(), wide[..., :6].clone()
    out, col = attention_with_colsum(q, k, v, colsum_out=scores)
    assert col.data_ptr() == scores.data_ptr()
    torch.testing.assert_close(scores, before + col_ref)
    torch.testing.assert_close(out, out_ref)
    assert torch.equal(wide[..., 6:], tail)
    for bad, got in ((torch.zeros(2, 2, 5), "got (2, 2, 5) torch.float32"),
                     (torch.zeros(2, 2, 6, dtype=torch.float64), "got (2, 2, 6) torch.float64"),
                     (torch.zeros(2, 6, 2).transpose(1, 2), "got (2, 2, 6) torch.float32"),  # last stride 2
                     ([0.0] * 12, "got list")):
        with pytest.raises(ValueError, match=r"colsum_out must be a float32 \(2, 2, 6\) tensor") as e:
            attention_with_colsum(q, k, v, colsum_out=bad)
        assert got in str(e.value)
    pytest.importorskip("triton")
    from anybudget.kv.decode_triton import decode_attention_with_colsum_triton
    from anybudget.kv.kernels_triton import attention_with_colsum_triton

    with pytest.raises(ValueError, match="colsum_out must be a float32"):  # checked before any launch
        decode_attention_with_colsum_triton(q[:, :, :1], k, v, colsum_out=torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match="colsum_out must be a float32"):
        attention_with_colsum_triton(q, k, v, decode_kernel=False, colsum_out=torch.zeros(2, 2, 5))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (8, 2)])
def test_slot_decode_reductions_equal_matmuls(dtype, tol, Hq, Hkv):
    """The static step's two ways of forming q K^T and P V (fused reductions when compiled, matmuls
    in eager) give the same output and the same scores, with GQA and evicted (masked) slots."""
    from anybudget.kv.attention import slot_decode_attention

    g = torch.Generator().manual_seed(Hq + Hkv)
    B, S, D = 3, 37, 32
    q = torch.randn(B, Hq, 1, D, generator=g).to(dtype)
    k, v = (torch.randn(B, Hkv, S, D, generator=g).to(dtype) for _ in range(2))
    mask = torch.rand(B, Hkv, S, generator=g) > 0.3
    mask[..., 0] = True
    outs, cols = [], []
    for products in ("reduce", "matmul"):
        col = torch.ones(B, Hkv, S)
        outs.append(slot_decode_attention(q, k, v, key_mask=mask, colsum_out=col, products=products).float())
        cols.append(col)
    assert outs[0].shape == (B, Hq, 1, D)
    assert torch.allclose(outs[0], outs[1], atol=tol, rtol=tol)
    assert torch.allclose(cols[0], cols[1], atol=tol, rtol=tol)
    assert torch.equal(cols[0][~mask], torch.ones(int((~mask).sum())))  # evicted slots get nothing
    # each query head's probabilities sum to 1: the scores grow by the group size per (row, KV head)
    assert torch.allclose(cols[0].sum(-1) - S, torch.full((B, Hkv), float(Hq // Hkv)), atol=tol * S)
    with pytest.raises(ValueError, match="products='fast' is not one of auto, reduce, matmul, triton"):
        slot_decode_attention(q, k, v, key_mask=mask, products="fast")
