"""Triton kernels against the PyTorch reference. On CPU they run under Triton's interpreter in a
subprocess (TRITON_INTERPRET must be set before triton compiles anything)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton not installed (pip install 'anybudget[gpu]')")

CASES = """
import os
import torch
from anybudget.kv.attention import attention_with_colsum_reference as ref
from anybudget.kv.attention import triton_attention_with_colsum as tri
from anybudget.kv.decode_triton import decode_attention_with_colsum_triton as dec
dev = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
worst = 0.0
for seed, (B, Hq, Hkv, Lq, Lk, D, causal, mask) in enumerate([
        (2, 4, 2, 19, 19, 64, True, None),        # prefill, GQA, odd length
        (1, 3, 3, 1, 37, 80, True, "2d"),         # decode, D not a power of two, padding
        (2, 4, 2, 5, 70, 32, True, "3d"),         # a chunk after a cache, per-head evicted slots
        (2, 2, 1, 33, 33, 64, False, "2d"),       # non-causal
        (1, 4, 2, 17, 17, 64, True, "empty"),     # a sequence with no visible key
        (2, 8, 2, 3, 150, 32, True, "3d")]):      # a few GQA queries against a longer cache
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g).to(dev)
    k = torch.randn(B, Hkv, Lk, D, generator=g).to(dev)
    v = torch.randn(B, Hkv, Lk, D, generator=g).to(dev)
    km = None
    if mask == "2d":
        km = (torch.rand(B, Lk, generator=g) > 0.3).to(dev)
    elif mask == "3d":
        km = (torch.rand(B, Hkv, Lk, generator=g) > 0.3).to(dev)
    elif mask == "empty":
        km = torch.ones(B, Lk, dtype=torch.bool); km[0, :] = False; km = km.to(dev)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous view, as HF hands them
    o1, c1 = tri(qt, k, v, scale=0.6, causal=causal, key_mask=km)
    o2, c2 = ref(q, k, v, scale=0.6, causal=causal, key_mask=km)
    eo = ((o1 - o2).norm() / o2.norm().clamp_min(1e-12)).item()
    ec = ((c1 - c2).norm() / c2.norm().clamp_min(1e-12)).item()
    assert torch.isfinite(o1).all() and torch.isfinite(c1).all()
    if mask == "empty":
        assert o1.abs().sum() == 0 and c1.abs().sum() == 0
    worst = max(worst, eo, ec)
    if Lq == 1:  # tri dispatched to split-K above; the two-pass kernels must agree too
        o4, c4 = tri(qt, k, v, scale=0.6, causal=causal, key_mask=km, decode_kernel=False)
        worst = max(worst, ((o4 - o2).norm() / o2.norm().clamp_min(1e-12)).item(),
                    ((c4 - c2).norm() / c2.norm().clamp_min(1e-12)).item())
    if (Hq // Hkv) * Lq <= 128:  # the split-K decode kernel, cut into 3 key ranges
        o3, c3 = dec(qt, k, v, scale=0.6, causal=causal, key_mask=km, num_splits=3, block_n=32)
        assert torch.isfinite(o3).all() and torch.isfinite(c3).all()
        worst = max(worst, ((o3 - o2).norm() / o2.norm().clamp_min(1e-12)).item(),
                    ((c3 - c2).norm() / c2.norm().clamp_min(1e-12)).item())
        o5, c5 = dec(qt, k, v, scale=0.6, causal=causal, key_mask=km, fused=True, block_n=32)  # one launch
        worst = max(worst, ((o5 - o2).norm() / o2.norm().clamp_min(1e-12)).item(),
                    ((c5 - c2).norm() / c2.norm().clamp_min(1e-12)).item())
    # colsum_out: the sums are added into a strided slice of a wider score buffer, in place.
    for kw in ([dict(fused=True), dict(fused=False, num_splits=3)] if (Hq // Hkv) * Lq <= 128 else []) + [None]:
        wide = torch.rand(B, Hkv, Lk + 7, generator=g).to(dev)
        buf = wide[..., :Lk]
        want, tail = buf + c2, wide[..., Lk:].clone()
        if kw is None:  # the two-pass kernels
            o6, c6 = tri(qt, k, v, scale=0.6, causal=causal, key_mask=km, decode_kernel=False, colsum_out=buf)
        else:
            o6, c6 = dec(qt, k, v, scale=0.6, causal=causal, key_mask=km, colsum_out=buf, **kw)
        assert c6.data_ptr() == buf.data_ptr()
        assert torch.equal(wide[..., Lk:], tail)  # nothing written past the slice
        worst = max(worst, ((buf - want).norm() / want.norm()).item(),
                    ((o6 - o2).norm() / o2.norm().clamp_min(1e-12)).item())
print("WORST", worst)
"""


def _run(env_extra):
    env = dict(os.environ, **env_extra)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(CASES)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return float(r.stdout.split("WORST")[-1])


@pytest.mark.skipif(tuple(int(x) for x in __import__("numpy").__version__.split(".")[:2]) >= (2, 4),
                    reason="Triton's interpreter breaks on numpy >= 2.4 (runtime loop bounds); the dev extra pins numpy<2.4")
def test_triton_kernels_match_reference_interpreter():
    # fp32 under the interpreter: numpy arithmetic, so agreement is to float32 rounding.
    worst = _run({"TRITON_INTERPRET": "1"})
    assert worst < 1e-5, worst


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernels_match_reference_gpu():
    worst = _run({})
    assert worst < 1e-4, worst  # fp32 with IEEE dots


def test_decode_kernel_rejects_too_many_query_rows():
    from anybudget.kv.decode_triton import decode_attention_with_colsum_triton

    q = torch.zeros(1, 8, 17, 16)
    k = v = torch.zeros(1, 1, 32, 16)
    with pytest.raises(ValueError, match=r"\(Hq / Hkv\) \* Lq <= 128, got 8 \* 17 = 136"):
        decode_attention_with_colsum_triton(q, k, v)
