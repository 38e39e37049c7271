"""Mamba-1 mixer with polarized state channels (Wang et al., ICLR 2025, Sec. 5 / Table 2).

Polarization adds state channels whose discretized transition A-bar is fixed for every channel
and time step: a "one" channel (A-bar = 1, never forgets: a running sum, against recency) and a
"zero" channel (A-bar = 0, only the current token: against over-smoothing). Their B, C and dt stay
input-dependent (``x_proj`` is widened by 2 per added channel). State layout, as in the reference
code: ``[ones | learned d_state | zeros]``, so ``d_state_total = d_ones + d_state + d_zeros``.

Two forms of the fixed channels (``polar_form``):

* ``"exact"`` (default, the paper's statement ``(A_t)_{1,1} = 1``, ``(A_t)_{N,N} = 0``):
  A = 0 gives A-bar = exp(0) = 1 exactly; A = -inf gives A-bar = 0 exactly (the scans treat -inf
  as an exact zero).
* ``"reference"`` (VITA-Group/SSM-Bottleneck ``PolarizedMamba``): A = ``value_ones`` = 0 and
  A = ``value_zeros`` = -100, so the zero channel is exp(-100 dt): with dt initialised in
  [1e-3, 0.1] that is between 0.905 and 4.5e-5, i.e. only approximately zero for small dt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anybudget.ssm.scan import SCAN_BACKENDS, discretize, selective_scan

__all__ = ["POLARIZE_CHOICES", "Mamba", "MambaConfig", "MambaState"]

POLARIZE_CHOICES = ("one", "zero", "both", None)


@dataclass(frozen=True)
class MambaConfig:
    """Mamba-1 mixer settings; defaults are Mamba's and the reference PolarizedMamba's.

    polarize: which fixed channels to add, one of ``"one"``, ``"zero"``, ``"both"``, ``None`` (or ``"none"``).
    d_ones / d_zeros: how many channels of each kind when enabled (reference: 1 and 1).
    polar_form: ``"exact"`` (A-bar exactly 1 / 0) or ``"reference"`` (A = value_ones / value_zeros).
    scan_backend: ``"auto"`` (Triton on CUDA, chunked PyTorch otherwise; the custom op while
    ``torch.compile`` traces), ``"triton"``, ``"chunked"``, ``"ref"`` or ``"op"`` (``scan_op``).
    """

    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    polarize: str | None = None
    d_ones: int = 1
    d_zeros: int = 1
    polar_form: str = "exact"
    value_ones: float = 0.0
    value_zeros: float = -100.0
    scan_backend: str = "auto"

    def __post_init__(self):
        def _int(name, low):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name}={v!r} must be an integer >= {low}")

        _int("d_model", 1)
        _int("d_state", 1)
        _int("d_conv", 1)
        _int("expand", 1)
        _int("d_ones", 0)
        _int("d_zeros", 0)
        if self.polarize == "none":  # the CLI's spelling of None (the README lists it)
            object.__setattr__(self, "polarize", None)
        if self.polarize not in POLARIZE_CHOICES:
            raise ValueError(f"polarize={self.polarize!r}; allowed: 'none' (or None), 'one', 'zero', 'both'")
        if self.polar_form not in ("exact", "reference"):
            raise ValueError(f"polar_form={self.polar_form!r}; allowed: 'exact', 'reference'")
        if self.dt_rank != "auto":
            _int("dt_rank", 1)
        if self.dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init={self.dt_init!r}; allowed: 'random', 'constant'")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min={self.dt_min}, dt_max={self.dt_max}: need 0 < dt_min <= dt_max")
        if self.value_ones > 0 or self.value_zeros > 0:
            raise ValueError(
                f"value_ones={self.value_ones}, value_zeros={self.value_zeros} must be <= 0 (stable A)"
            )
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend={self.scan_backend!r}; allowed: {', '.join(map(repr, SCAN_BACKENDS))}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def n_ones(self) -> int:
        return self.d_ones if self.polarize in ("one", "both") else 0

    @property
    def n_zeros(self) -> int:
        return self.d_zeros if self.polarize in ("zero", "both") else 0

    @property
    def d_state_total(self) -> int:
        return self.n_ones + self.d_state + self.n_zeros


@dataclass
class MambaState:
    """Decoding cache of one mixer: the last ``d_conv`` conv inputs and the SSM state.

    conv: (batch, d_inner, d_conv); ssm: (batch, d_inner, d_state_total) float32.
    """

    conv: Tensor
    ssm: Tensor


class Mamba(nn.Module):
    """Mamba-1 mixer: ``(batch, seq, d_model) -> (batch, seq, d_model)``; see module docstring."""

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.config = c = config
        fk = {"device": device, "dtype": dtype}
        d_inner, n_total = c.d_inner, c.d_state_total
        self.in_proj = nn.Linear(c.d_model, 2 * d_inner, bias=c.bias, **fk)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, kernel_size=c.d_conv, groups=d_inner, padding=c.d_conv - 1,
            bias=c.conv_bias, **fk,
        )
        self.x_proj = nn.Linear(d_inner, c.rank + 2 * n_total, bias=False, **fk)
        self.dt_proj = nn.Linear(c.rank, d_inner, bias=True, **fk)
        self.out_proj = nn.Linear(d_inner, c.d_model, bias=c.bias, **fk)

        # dt init (Mamba Sec. 3.6): weights ~ U(+-rank^-0.5), softplus(bias) log-uniform in
        # [dt_min, dt_max].
        std = c.rank**-0.5 * c.dt_scale
        with torch.no_grad():
            if c.dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(
                torch.rand(d_inner, device=device) * (math.log(c.dt_max) - math.log(c.dt_min))
                + math.log(c.dt_min)
            ).clamp(min=c.dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1
        self.dt_proj.bias._no_reinit = True

        # S4D-real init A = -(1..d_state), learned only on the d_state ordinary channels.
        A = torch.arange(1, c.d_state + 1, dtype=torch.float32, device=device).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner, device=device))
        self.D._no_weight_decay = True

    def A(self) -> Tensor:
        """The full transition matrix, ``(d_inner, d_state_total)`` float32, polarized entries fixed."""
        c = self.config
        learned = -torch.exp(self.A_log.float())
        parts = []
        if c.n_ones:
            one = 0.0 if c.polar_form == "exact" else c.value_ones
            parts.append(learned.new_full((learned.shape[0], c.n_ones), one))
        parts.append(learned)
        if c.n_zeros:
            zero = float("-inf") if c.polar_form == "exact" else c.value_zeros
            parts.append(learned.new_full((learned.shape[0], c.n_zeros), zero))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else learned

    def _fixed_channels(self) -> tuple[int, int]:
        """(leading A = 0 columns, trailing A = -inf columns): exact only in the exact form."""
        c = self.config
        ones = c.n_ones if (c.polar_form == "exact" or c.value_ones == 0.0) else 0
        return ones, c.n_zeros if c.polar_form == "exact" else 0

    def _ssm_inputs(self, x: Tensor):
        """x: (batch, d_inner, seq) after conv -> dt (b, d_inner, seq), B, C (b, n_total, seq)."""
        c = self.config
        x_dbl = self.x_proj(x.transpose(1, 2))
        dt, B, C = torch.split(x_dbl, [c.rank, c.d_state_total, c.d_state_total], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        return dt, B.transpose(1, 2), C.transpose(1, 2)

    def _conv(self, x_pre: Tensor, seq: int) -> Tensor:
        """Causal depthwise conv of (batch, d_inner, seq). Eager: ``nn.Conv1d``; while torch.compile traces:
        the same sum as ``d_conv`` shifted multiply-adds, which the compiler fuses with the layout
        change and the SiLU around it (a conv call would need its own contiguous input and kernel)."""
        if not torch.compiler.is_compiling():
            return self.conv1d(x_pre)[..., :seq]
        k = self.config.d_conv
        w = self.conv1d.weight[:, 0, :]  # (d_inner, k): tap j multiplies x[t - (k - 1) + j]
        xp = F.pad(x_pre, (k - 1, 0))
        out = xp[..., :seq] * w[:, :1]
        for j in range(1, k):
            out = out + xp[..., j:j + seq] * w[:, j:j + 1]
        return out + self.conv1d.bias[:, None] if self.conv1d.bias is not None else out

    def scan_inputs(self, hidden: Tensor):
        """hidden (batch, seq, d_model) -> ``x_pre, x, z, dt, B, C``: the conv's input, the scan's input u
        (after conv and SiLU), the gate, and Δ (before bias), B, C, all ``(batch, channels, seq)``."""
        xz = self.in_proj(hidden).transpose(1, 2)
        x_pre, z = xz.chunk(2, dim=1)
        x = F.silu(self._conv(x_pre, hidden.shape[1]))
        dt, B, C = self._ssm_inputs(x)
        return x_pre, x, z, dt, B, C

    def forward(self, hidden: Tensor, return_state: bool = False):
        """hidden: (batch, seq, d_model) -> (batch, seq, d_model) [, MambaState after the last token]."""
        if hidden.dim() != 3 or hidden.shape[-1] != self.config.d_model:
            raise ValueError(
                f"hidden shape {tuple(hidden.shape)} must be (batch, seq, d_model={self.config.d_model})"
            )
        seq = hidden.shape[1]
        x_pre, x, z, dt, B, C = self.scan_inputs(hidden)
        res = selective_scan(
            x, dt, self.A(), B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, return_last_state=return_state, backend=self.config.scan_backend,
            fixed_channels=self._fixed_channels(),
        )
        if not return_state:
            return self.out_proj(res.transpose(1, 2))
        y, last = res
        k = self.config.d_conv
        conv = F.pad(x_pre, (max(0, k - seq), 0))[..., -k:]
        return self.out_proj(y.transpose(1, 2)), MambaState(conv=conv.detach(), ssm=last.detach())

    def init_state(self, batch: int, device=None, dtype=None) -> MambaState:
        c = self.config
        device = device or self.A_log.device
        return MambaState(
            conv=torch.zeros(batch, c.d_inner, c.d_conv, device=device, dtype=dtype or self.in_proj.weight.dtype),
            ssm=torch.zeros(batch, c.d_inner, c.d_state_total, device=device, dtype=torch.float32),
        )

    def step(self, hidden: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One decoding step: hidden (batch, d_model) -> (batch, d_model), new state (inputs untouched).

        Equal to the full-sequence forward at that position (same recurrence, Mamba Alg. 2).
        """
        c = self.config
        if hidden.dim() != 2 or hidden.shape[-1] != c.d_model:
            raise ValueError(f"hidden shape {tuple(hidden.shape)} must be (batch, d_model={c.d_model})")
        x_pre, z = self.in_proj(hidden).chunk(2, dim=-1)
        conv = torch.cat([state.conv[..., 1:], x_pre.unsqueeze(-1)], dim=-1)
        x = (conv * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, B, C = self._ssm_inputs(x.unsqueeze(-1))
        dt = F.softplus(dt[..., 0].float() + self.dt_proj.bias.float())  # (b, d_inner)
        a = discretize(dt.unsqueeze(-1), self.A())[:, :, 0]  # (b, d_inner, n)
        ssm = a * state.ssm + (dt * x.float()).unsqueeze(-1) * B[..., 0].float().unsqueeze(1)
        y = torch.einsum("bdn,bn->bd", ssm, C[..., 0].float()) + self.D.float() * x.float()
        y = (y * F.silu(z.float())).to(hidden.dtype)
        return self.out_proj(y), MambaState(conv=conv, ssm=ssm)
