"""Streaming perplexity under a KV budget: what a budget costs in quality.

Tokens are fed in order through the budgeted cache, ``chunk`` tokens per forward (``chunk=1``,
the default, is the faithful streaming setting: every prediction is made from the evicted cache
as it stands at that step). Each prediction's negative log-likelihood is collected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from anybudget.kv.cache import make_cache, parse_kv_budget
from anybudget.kv.hf import cache_kwargs, enable

__all__ = ["streaming_nll", "evaluate_policies", "EvalResult", "plot_results"]


@torch.no_grad()
def streaming_nll(model, input_ids: torch.Tensor, cache, chunk: int = 1, progress=None) -> torch.Tensor:
    """NLL of each next token when ``input_ids`` (B, N) are streamed through ``cache``.

    Returns (B, N-1) float32: entry t is ``-log p(x_{t+1} | x_{<=t})`` as the budgeted model sees it.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be (batch, tokens) with at least 2 tokens, got {tuple(input_ids.shape)}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r} must be an integer >= 1")
    B, N = input_ids.shape
    nll = torch.empty(B, N - 1, dtype=torch.float32, device=input_ids.device)
    kw = cache_kwargs(model, cache)
    for s in range(0, N - 1, chunk):
        e = min(N - 1, s + chunk)
        pos = torch.arange(s, e, device=input_ids.device).expand(B, -1)
        logits = model(input_ids=input_ids[:, s:e], **kw, position_ids=pos, use_cache=True).logits
        nll[:, s:e] = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), input_ids[:, s + 1 : e + 1], reduction="none"
        )
        if progress is not None:
            progress.update((e - s) * B)  # the bar counts tokens of every sequence in the batch
    return nll


@dataclass(frozen=True)
class EvalResult:
    policy: str
    budget: str
    nll: float
    tokens: int
    kept_fraction: float  # cache slots kept at the end / tokens seen

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)


def evaluate_policies(
    model,
    token_ids: torch.Tensor,
    *,
    policies=("full", "h2o", "streaming", "local", "random"),
    budgets=("50%", "20%", "10%"),
    seq_len: int = 1024,
    num_seqs: int = 8,
    batch_size: int = 8,
    chunk: int = 1,
    device=None,
    quiet: bool = False,
) -> list[EvalResult]:
    """Streaming perplexity of every (policy, budget) on ``num_seqs`` consecutive windows of ``token_ids``.

    token_ids: 1-D tensor of a held-out text. ``full`` is evaluated once (its budget is "100%").
    """
    from tqdm.auto import tqdm

    token_ids = torch.as_tensor(token_ids).long().flatten()
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len!r} must be >= 2")
    avail = token_ids.numel() // seq_len
    if num_seqs < 1 or num_seqs > avail:
        raise ValueError(f"num_seqs={num_seqs!r} must be in [1, {avail}] for {token_ids.numel()} tokens of seq_len {seq_len}")
    for b in budgets:
        parse_kv_budget(b)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    enable(model)
    seqs = token_ids[: num_seqs * seq_len].view(num_seqs, seq_len).to(device)
    runs = [(p, "100%" if p == "full" else b) for p in policies for b in (budgets if p != "full" else [None])]
    results = []
    with tqdm(total=len(runs) * num_seqs * (seq_len - 1), disable=quiet, unit="tok", desc="kv eval") as bar:
        for policy, budget in runs:
            total, count, kept = 0.0, 0, []
            for s in range(0, num_seqs, batch_size):
                x = seqs[s : s + batch_size]
                cache = make_cache(policy, budget)
                bar.set_postfix_str(f"{policy} {budget}")
                nll = streaming_nll(model, x, cache, chunk=chunk, progress=bar)
                total += nll.double().sum().item()
                count += nll.numel()
                if hasattr(cache, "layers") and policy != "full":
                    kept.append(cache.layers[0].length / cache.layers[0].seen)
            results.append(EvalResult(policy, budget, total / count, count, sum(kept) / len(kept) if kept else 1.0))
    return results


def plot_results(results: list[EvalResult], path, title: str = "perplexity under a KV budget") -> str:
    """Perplexity against budget, one curve per policy (full drawn as a horizontal line).

    Percentage budgets are plotted as given; token-count (or mixed) budgets by the fraction of the
    tokens seen that the cache actually kept, so the axis never calls a token count a percentage.
    Returns the x-axis label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anybudget.io import atomic_path

    budgeted = [r for r in results if r.policy != "full"]
    as_percent = all(parse_kv_budget(r.budget).unit == "%" for r in budgeted)
    xlabel = "KV budget (% of tokens seen)" if as_percent else "KV kept (% of tokens seen, measured)"
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy in dict.fromkeys(r.policy for r in results):
        rs = [r for r in results if r.policy == policy]
        if policy == "full":
            ax.axhline(rs[0].ppl, color="k", ls="--", label=f"full ({rs[0].ppl:.2f})")
            continue
        xs = [parse_kv_budget(r.budget).value if as_percent else 100 * r.kept_fraction for r in rs]
        ax.plot(xs, [r.ppl for r in rs], "o-", label=policy)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("perplexity (streaming)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return xlabel
