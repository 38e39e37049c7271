"""Training-free proxies: plain functions of ``(model, inputs)``.

TE-NAS (Chen, Gong & Wang, ICLR 2021) uses two: the condition number of the neural tangent
kernel (Sec. 3.1, trainability, lower is better) and the number of linear regions (Sec. 3.2,
expressivity, higher is better). For comparison: NASWOT (Mellor et al. 2021), synflow, snip,
grad_norm (as in Abdelfattah et al. 2021, zero-cost proxies) and the parameter count.

The caller owns initialisation and seeds (see :func:`init_model`); each function sets the BN
mode it is told (``train_mode``) and restores the model's mode afterwards.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

__all__ = [
    "activation_patterns",
    "grad_norm",
    "init_model",
    "linear_regions",
    "naswot",
    "ntk_condition_number",
    "ntk_gram",
    "num_params",
    "snip",
    "synflow",
]

INITS = ("kaiming_normal_fanout", "kaiming_normal_fanin", "pytorch_default")


def init_model(model: nn.Module, init: str = "kaiming_normal_fanout", seed: int | None = None) -> nn.Module:
    """Re-initialise ``model`` in place; returns it.

    ``kaiming_normal_fanout`` / ``_fanin``: conv and linear weights ~ Kaiming normal (ReLU gain),
    biases 0, BN weight 1 and bias 0 -- the reference's ``init_model`` (fan-out for the NTK,
    fan-in for regions). ``pytorch_default``: re-run each module's ``reset_parameters``, which is
    what the reference code actually ends up with (its launcher passes ``kaiming_normal`` and
    ``init_model`` only recognises ``kaiming_norm_*``, so no re-initialisation happens).
    """
    if init not in INITS:
        raise ValueError(f"init={init!r} is not known; choose one of {', '.join(INITS)}")
    if seed is not None:
        torch.manual_seed(seed)
    mode = "fan_out" if init.endswith("fanout") else "fan_in"
    for m in model.modules():
        if init == "pytorch_default":
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class _Mode:
    """Set train/eval for the duration of a block, then restore."""

    def __init__(self, model: nn.Module, train: bool):
        self.model, self.train = model, train

    def __enter__(self):
        self.was = self.model.training
        self.model.train(self.train)

    def __exit__(self, *exc):
        self.model.train(self.was)


def _check_inputs(inputs, name: str = "inputs") -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.shape[0] < 2:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"{name} must be a tensor (batch >= 2, ...); got {shape}")


def ntk_gram(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    train_mode: bool = True,
    param_filter: str = "weight",
    method: str = "jacrev",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Empirical NTK ``K = J J^T``: ``(n, n)`` for ``inputs (n, ...)``.

    ``J[i] = d(sum_c f(X)[i, c]) / d theta`` over parameters whose name contains
    ``param_filter`` (the reference keeps every ``*weight*``: conv, linear and BN weights, no
    biases). ``f(X)`` is ONE forward of the whole batch, so in train mode each row also carries
    the batch-statistics coupling of BN, exactly as the reference's per-sample ``backward``
    through a shared forward. ``method="jacrev"`` builds all rows at once (torch.func, a vmap
    over one-hot cotangents); ``"loop"`` is the reference: one backward per sample; ``"auto"``
    picks jacrev on CUDA, loop on CPU.
    """
    _check_inputs(inputs)
    if method not in ("jacrev", "loop", "auto"):
        raise ValueError(f"method={method!r} must be 'jacrev', 'loop' or 'auto'")
    if method == "auto":
        # On this project's 2-core CPU the loop ran 2x faster than jacrev (vmap over 72
        # cotangents is memory-bound there); on a GPU the single batched backward should win.
        method = "jacrev" if inputs.is_cuda else "loop"
    names = [k for k, p in model.named_parameters() if param_filter in k]
    if not names:
        raise ValueError(f"no parameter name of the model contains param_filter={param_filter!r}")
    n = inputs.shape[0]
    with _Mode(model, train_mode):
        if method == "loop":
            params = dict(model.named_parameters())
            out = model(inputs)
            rows = []
            for i in range(n):
                grads = torch.autograd.grad(
                    out[i].sum(), [params[k] for k in names], retain_graph=True, allow_unused=True
                )
                rows.append(torch.cat([
                    (g if g is not None else torch.zeros_like(params[k])).reshape(-1)
                    for g, k in zip(grads, names)
                ]))
            jac = torch.stack(rows)
        else:
            chosen = {k: p.detach() for k, p in model.named_parameters() if k in names}
            rest = {k: p.detach() for k, p in model.named_parameters() if k not in chosen}
            # Clones: the forward's running-stat updates must not leak into the caller's model
            # (they never change train-mode outputs).
            buffers = {k: b.clone() for k, b in model.named_buffers()}

            def summed_logits(p, b):
                return functional_call(model, (p, rest, b), (inputs,)).sum(dim=1)

            # Buffers go in as an argument: train-mode BN updates them in place, which torch.func
            # refuses for captured tensors.
            jd = jacrev(summed_logits, argnums=0, chunk_size=chunk_size)(chosen, buffers)
            jac = torch.cat([jd[k].reshape(n, -1) for k in names], dim=1)
    return jac @ jac.T


def ntk_condition_number(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    train_mode: bool = True,
    param_filter: str = "weight",
    method: str = "jacrev",
    gram_dtype: torch.dtype = torch.float64,
    chunk_size: int | None = None,
) -> float:
    """TE-NAS trainability: ``kappa = lambda_max / lambda_min`` of the NTK (Sec. 3.1); lower is better.

    ``inputs``: ``(n, C, H, W)``; the reference uses one batch of 72 (NB201) in train-mode BN.
    The eigenvalues are taken in ``gram_dtype`` (float64 by default; the reference used
    float32 ``symeig``, which loses the small end of the spectrum first). Returns ``inf`` if the
    smallest eigenvalue is not positive (a rank-deficient kernel).
    """
    gram = ntk_gram(model, inputs, train_mode=train_mode, param_filter=param_filter, method=method, chunk_size=chunk_size)
    eig = torch.linalg.eigvalsh(gram.to(gram_dtype))
    lo, hi = float(eig[0]), float(eig[-1])
    if not lo > 0 or not torch.isfinite(eig).all():
        return float("inf")
    return hi / lo


@torch.no_grad()
def activation_patterns(
    model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 1000, train_mode: bool = True, where: str = "output"
) -> torch.Tensor:
    """Binary ReLU codes ``(n, units)``: ``relu_out > 0`` (or ``relu_in > 0``) over every
    ``nn.ReLU`` fed a 4-D tensor, concatenated in call order.

    Forwards ``batch_size`` inputs at a time (train-mode BN normalises within each chunk, as
    the reference collector does with its batches of 1000).
    """
    _check_inputs(inputs)
    if where not in ("output", "input"):
        raise ValueError(f"where={where!r} must be 'output' or 'input'")
    feats: list[torch.Tensor] = []

    def hook(module, inp, out):
        if inp[0].dim() == 4:
            t = out if where == "output" else inp[0]
            feats.append((t > 0).reshape(t.shape[0], -1))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    chunks = []
    try:
        with _Mode(model, train_mode):
            for x in inputs.split(batch_size):
                feats.clear()
                model(x)
                chunks.append(torch.cat(feats, 1) if feats else x.new_zeros((x.shape[0], 0), dtype=torch.bool))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(chunks, 0)


def _count_unique_rows(codes: torch.Tensor) -> int:
    if codes.shape[1] == 0:
        return 1
    # Pack 8 bits per byte, then exact row de-duplication (no float matmul: the reference's
    # half-precision trick stops being exact once codes exceed 2048 units).
    pad = (-codes.shape[1]) % 8
    bits = F.pad(codes.to(torch.uint8), (0, pad)).view(codes.shape[0], -1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=codes.device)
    packed = (bits * weights).sum(-1, dtype=torch.uint8)
    return int(torch.unique(packed, dim=0).shape[0])


def linear_regions(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 1000, train_mode: bool = True) -> int:
    """TE-NAS expressivity: number of distinct ReLU activation patterns over ``inputs`` (Sec. 3.2).

    ``inputs``: ``(n, C, H, W)``; the reference feeds 3 x 1000 single-channel 3x3 crops to a
    thin network (``C=1, N=1, depth=1``, no stem) in train mode. Higher is better.
    """
    return _count_unique_rows(activation_patterns(model, inputs, batch_size=batch_size, train_mode=train_mode))


@torch.no_grad()
def naswot(model: nn.Module, inputs: torch.Tensor, *, train_mode: bool = True) -> float:
    """NASWOT (Mellor et al. 2021): ``log|K_H|``, ``K_H[i,j]`` = number of ReLU units on
    which inputs i and j agree (codes taken at the ReLU inputs). Higher is better."""
    codes = activation_patterns(model, inputs, batch_size=inputs.shape[0], train_mode=train_mode, where="input")
    x = codes.double()
    k = x @ x.T + (1 - x) @ (1 - x).T
    return float(torch.linalg.slogdet(k)[1])


def _layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def synflow(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """SynFlow (Tanaka et al. 2020) as a zero-cost proxy: ``sum |theta * dR/dtheta|`` over conv and
    linear weights, ``R = sum f(1)`` with all weights replaced by ``|theta|``, BN removed and
    float64 (as zero-cost-nas does). ``input_shape`` is one sample's shape, e.g. ``(3, 32, 32)``.
    Higher is better. The model is not modified (a copy is scored)."""
    net = copy.deepcopy(model).double()
    for name, m in list(net.named_modules()):
        for cname, child in list(m.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(m, cname, nn.Identity())
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.eval()
    device = next(net.parameters()).device
    out = net(torch.ones((1, *input_shape), dtype=torch.float64, device=device))
    layers = _layers(net)
    grads = torch.autograd.grad(out.sum(), [m.weight for m in layers])
    return float(sum((m.weight.detach() * g).abs().sum() for m, g in zip(layers, grads)))


def _loss_grads(model, inputs, labels, train_mode):
    layers = _layers(model)
    with _Mode(model, train_mode):
        loss = F.cross_entropy(model(inputs), labels)
        grads = torch.autograd.grad(loss, [m.weight for m in layers])
    return layers, grads


def snip(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, train_mode: bool = True) -> float:
    """SNIP saliency summed (Lee et al. 2019): ``sum |theta * dL/dtheta|`` over conv/linear weights,
    ``L`` = cross-entropy on ``(inputs, labels)``. Higher is better."""
    _check_inputs(inputs)
    layers, grads = _loss_grads(model, inputs, labels, train_mode)
    return float(sum((m.weight.detach() * g).abs().sum() for m, g in zip(layers, grads)))


def grad_norm(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, train_mode: bool = True) -> float:
    """Sum over conv/linear layers of ``||dL/dW||_2`` (zero-cost proxies' grad_norm)."""
    _check_inputs(inputs)
    _, grads = _loss_grads(model, inputs, labels, train_mode)
    return float(sum(g.norm() for g in grads))


def num_params(model: nn.Module) -> int:
    """Parameter count (the trivial baseline every proxy should beat)."""
    return sum(p.numel() for p in model.parameters())
