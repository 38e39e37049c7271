"""Quality on the workload's own protocol: the perplexity of the new tokens after a prompt.

A plan serves ``prompt`` tokens (prefilled in one pass, the cache evicting after it) followed by
``new_tokens`` decoding steps, one token each, through its cache. The quality that matters is
the perplexity of those new tokens, so every quality number here is measured that way, on text:

    windows  = ``seqs`` consecutive windows of ``prompt + new_tokens`` held-out tokens
    nll(c)   = mean over windows and the ``new_tokens`` predictions of the last prompt position and
               of every teacher-forced decoding step, with the dense export of ``c``'s sub-network
               (in the workload's dtype) and ``c``'s cache (the one the plan runs)

and the planner's inputs and its check are three calls of the same function :func:`candidate_nll`:
``elastic_ppl[subnet] = exp(nll(subnet, full cache))``, ``kv_ratio[policy@f] = exp(nll(full model,
policy@f) - nll(full model, full cache))``, and the check ``exp(nll(c))``. The prediction
``elastic_ppl x kv_ratio`` is therefore exact for every full-cache candidate and for the full model
with any cache; only the assumption that eviction costs every sub-network the same NLL is tested
by the check. A full cache evicts nothing, so its new-token NLL is read from one forward over the
window (the same numbers as prefill + decode up to float rounding; a test compares them).
"""

from __future__ import annotations

import math

import torch

from anybudget.plan.costs import Candidate, Quality, ServingWorkload

__all__ = ["candidate_nll", "measure_quality", "measured_ppl", "quality_windows", "quality_workload", "workload_nll"]


def quality_workload(wl: ServingWorkload, n_tokens: int) -> ServingWorkload:
    """``wl`` itself when ``n_tokens`` hold one window of ``prompt + new_tokens``; otherwise both
    shrunk by the same factor (KV budgets are percentages of the tokens seen, so they scale)."""
    need = wl.prompt + wl.new_tokens
    if n_tokens >= need:
        return wl
    f = n_tokens / need
    new = max(2, int(wl.new_tokens * f))
    prompt = max(1, n_tokens - new)
    if prompt + new > n_tokens:
        raise ValueError(f"the quality text has {n_tokens} tokens; the workload's protocol needs at least 3")
    return ServingWorkload(prompt, new, wl.batch, wl.dtype)


def quality_windows(tokens, wl: ServingWorkload, seqs: int) -> torch.Tensor:
    """(n, prompt + new_tokens) consecutive windows from the start of ``tokens`` (n <= ``seqs``)."""
    tokens = torch.as_tensor(tokens).long().flatten()
    length = wl.prompt + wl.new_tokens
    n = min(seqs, tokens.numel() // length)
    if n < 1:
        raise ValueError(f"tokens has {tokens.numel()} ids; one quality window needs prompt + new_tokens = {length}")
    return tokens[: n * length].view(n, length)


@torch.no_grad()
def workload_nll(model, ids: torch.Tensor, prompt: int, cache=None) -> torch.Tensor:
    """(B, N) NLL of ``ids[:, prompt:]`` (N = new tokens) as ``generate`` would predict them with
    ``cache``: the prompt in one forward (the cache evicts after it), then one teacher-forced token
    per step. ``cache=None``: the full cache, read from one forward over ``ids[:, :-1]``."""
    B, T = ids.shape
    if not 1 <= prompt < T:
        raise ValueError(f"prompt={prompt!r} must be in [1, {T - 1}] for windows of {T} tokens")
    n = T - prompt
    if cache is None:
        logits = model(input_ids=ids[:, :-1], use_cache=False, logits_to_keep=n).logits
        return torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), ids[:, prompt:], reduction="none")
    from anybudget.kv import cache_kwargs

    kw = cache_kwargs(model, cache)
    nll = torch.empty(B, n, dtype=torch.float32, device=ids.device)
    s, e = 0, prompt
    for i in range(n):
        pos = torch.arange(s, e, device=ids.device).expand(B, -1)
        logits = model(input_ids=ids[:, s:e], position_ids=pos, use_cache=True, logits_to_keep=1, **kw).logits
        nll[:, i] = torch.nn.functional.cross_entropy(logits[:, -1].float(), ids[:, e], reduction="none")
        s, e = e, e + 1
    return nll


def candidate_nll(dense, c: Candidate, windows: torch.Tensor, wl: ServingWorkload, static: bool = False,
                  batch: int = 16) -> float:
    """Mean new-token NLL of ``dense`` (``c``'s exported sub-network) served with ``c``'s cache
    (``static``: the fixed-slot cache a static plan runs, eager here) over ``windows``."""
    from anybudget.kv import enable
    from anybudget.plan.device import make_plan_cache

    enable(dense)
    dev = next(dense.parameters()).device
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        x = windows[i:i + batch].to(dev)
        cache = None if c.policy == "full" else make_plan_cache(c.policy, c.kv_budget, static, wl.new_tokens)
        nll = workload_nll(dense, x, wl.prompt, cache)
        total += float(nll.double().sum())
        count += nll.numel()
    return total / count


def measure_quality(em, tokens, wl: ServingWorkload, policies=("h2o", "streaming", "local"),
                    kv_percents=(50.0, 20.0, 10.0), seqs: int = 32, static: bool = False, batch: int = 16,
                    quiet: bool = True) -> Quality:
    """Quality data on the workload's protocol (module doc): every uniform sub-network with the full
    cache, and the full model with each policy at each budget, on the same ``seqs`` windows of
    ``tokens``. A text shorter than one window runs a proportionally shrunk protocol (``source``
    says which)."""
    from tqdm.auto import tqdm

    from anybudget.elastic.router import uniform_configs
    from anybudget.plan.device import export_candidate

    tokens = torch.as_tensor(tokens).long().flatten()
    qwl = quality_workload(wl, tokens.numel())
    windows = quality_windows(tokens, qwl, seqs)
    dtype = getattr(torch, wl.dtype)
    subs = [Candidate(s.layers[0].kv_groups, s.layers[0].mlp_width) for s in uniform_configs(em)]
    full = Candidate(max(em.kv_choices), max(em.mlp_choices))
    kv = [Candidate(full.kv_groups, full.mlp_width, p, float(f)) for p in policies for f in kv_percents]
    elastic_ppl, nll = {}, {}
    with tqdm(total=len(subs) + len(kv), disable=quiet, desc="quality", unit="run") as bar:
        for c in subs:
            dense = export_candidate(em, c, dtype=dtype)
            nll[c.label] = candidate_nll(dense, c, windows, qwl, static, batch)
            elastic_ppl[c.subnet_label] = math.exp(nll[c.label])
            if c != full:
                del dense
            else:
                full_dense = dense
            bar.update(1)
        for c in kv:
            nll[c.label] = candidate_nll(full_dense, c, windows, qwl, static, batch)
            bar.update(1)
    kv_ratio = {c.kv_label: math.exp(nll[c.label] - nll[full.label]) for c in kv}
    src = {"protocol": "new-token NLL after a prefilled prompt (plan.quality)", "prompt": qwl.prompt,
           "new_tokens": qwl.new_tokens, "windows": int(windows.shape[0]), "scored_tokens": int(windows.shape[0] * qwl.new_tokens),
           "dtype": wl.dtype, "static_cache": static, "shrunk": qwl is not wl, "kv_full_ppl": math.exp(nll[full.label])}
    return Quality(elastic_ppl, kv_ratio, src)


def measured_ppl(em, c: Candidate, windows: torch.Tensor, wl: ServingWorkload, static: bool = False,
                 batch: int = 16) -> float:
    """The check: perplexity of ``c`` as the plan runs it (its dense export and its cache), on the
    quality protocol; equal to ``Quality.ppl(c)`` wherever the combination is exact."""
    from anybudget.plan.device import export_candidate

    dense = export_candidate(em, c, dtype=getattr(torch, wl.dtype))
    return math.exp(candidate_nll(dense, c, windows, wl, static, batch))
