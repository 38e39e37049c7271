import torch


def scan_inputs(b=2, d=6, seq=29, n=5, dtype=torch.float64, polar=True, seed=0):
    """Random selective-scan inputs (u, delta, A, B, C, D, z, delta_bias), leaf tensors with grad."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    A = -torch.rand(d, n, generator=g, dtype=dtype) * 3 - 0.1
    if polar:
        A[:, 0] = 0.0
        A[:, -1] = float("-inf")
    ts = [r(b, d, seq), r(b, d, seq), A, r(b, n, seq), r(b, n, seq), r(d), r(b, d, seq), r(d)]
    return [t.requires_grad_() for t in ts]
