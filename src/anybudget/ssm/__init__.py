"""anybudget.ssm: polarized Mamba (Wang et al., ICLR 2025), selective scans, MQAR, diagnostics.

``Mamba(MambaConfig(d_model=128, polarize="both"))`` adds a never-forgetting (A-bar = 1) and a
current-token-only (A-bar = 0) state channel to a Mamba-1 mixer. Triton is optional: the fast
scan is used on CUDA when it imports, the chunked PyTorch scan otherwise.
"""

from anybudget.ssm.lm import AttentionLM, LMConfig, MambaLM, build_lm
from anybudget.ssm.mamba import POLARIZE_CHOICES, Mamba, MambaConfig, MambaState
from anybudget.ssm.scan import selective_scan, selective_scan_chunked, selective_scan_ref

__all__ = [
    "POLARIZE_CHOICES",
    "AttentionLM",
    "LMConfig",
    "Mamba",
    "MambaConfig",
    "MambaLM",
    "MambaState",
    "build_lm",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]
