"""``anybudget demo``: the embedded reference LM under a KV budget, what it saves and what it costs.

1. Generates from a prompt with the full cache and with the H2O budget (greedy), side by side.
2. Reports the KV-cache memory of each at the end of generation.
3. Streams a held-out passage (``assets/reflm/sample.txt``, from the test split of the reference
   corpus, never trained on) through full, H2O and local-window caches and prints perplexities.
4. Plans the model for two memory budgets with ``anybudget fit``'s planner (``anybudget.plan.demo``:
   elastic sub-network x KV cache, the choice measured).
"""

from __future__ import annotations

import time

from anybudget.models import REFLM_DIR as ASSETS

PROMPT = "The device-mapper target"


def _cache_bytes_full(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)


def embedded_name() -> str:
    """The embedded reference LM as its ``reflm.json`` names it (version and size), for the demo's header."""
    from anybudget.io import read_json
    from anybudget.models import REFLM_DIR

    meta = read_json(REFLM_DIR / "reflm.json")
    return (f"embedded {meta['name'].removeprefix('anybudget ')} ({meta['params'] / 1e6:.1f}M-parameter Llama, "
            "trained here on English from Debian packages)")


def run_demo(model=None, budget="kv=20%", tokens=64, device=None, quiet=False, plan=True) -> int:
    import torch
    from transformers import DynamicCache

    from anybudget.kv import H2OCache, LocalCache, cache_kwargs, enable
    from anybudget.kv.cache import parse_kv_budget
    from anybudget.kv.evaluate import streaming_nll
    from anybudget.models import load_causal_lm

    if not isinstance(tokens, int) or tokens < 1:
        raise SystemExit(f"error: --tokens {tokens!r} must be an integer >= 1")
    kvq = parse_kv_budget(budget)
    t0 = time.perf_counter()
    lm, tok, dev = load_causal_lm(model, device)
    enable(lm)
    print(f"model: {model or embedded_name()} on {dev}; KV budget {kvq}")
    enc = tok(PROMPT, return_tensors="pt").to(dev)
    outs = {}
    for name, cache in (("full cache", DynamicCache()), (f"H2O {kvq}", H2OCache(kvq))):
        with torch.no_grad():
            out = lm.generate(**enc, max_new_tokens=tokens, do_sample=False, **cache_kwargs(lm, cache),
                              pad_token_id=tok.pad_token_id, repetition_penalty=1.1)
        outs[name] = (tok.decode(out[0], skip_special_tokens=True), cache)
    full_bytes = _cache_bytes_full(outs["full cache"][1])
    h2o_cache = outs[f"H2O {kvq}"][1]
    h2o_bytes = h2o_cache.used_bytes()
    for name, (text, _) in outs.items():
        print(f"\n--- {name} ---\n{text}")
    layer = h2o_cache.layers[0]
    print(f"\nKV cache after {layer.seen} tokens: full {full_bytes / 1024:.0f} KiB, H2O {h2o_bytes / 1024:.0f} KiB "
          f"({layer.length} of {layer.seen} tokens per head): {1 - h2o_bytes / full_bytes:.0%} less memory")

    sample = (ASSETS / "sample.txt").read_text(encoding="utf-8")
    ids = tok(sample, return_tensors="pt")["input_ids"][:, :512].to(dev)
    print(f"\nQuality: streaming perplexity on a held-out passage ({ids.shape[1]} tokens, budgeted caches fed one token per step)")
    ppl = {}
    # The full cache evicts nothing, so one causal forward makes exactly the predictions that
    # streaming would (a third of the demo's time saved); the budgeted caches stream token by token.
    for name, make, chunk in (("full", DynamicCache, ids.shape[1]), (f"h2o {kvq}", lambda: H2OCache(kvq), 1),
                              (f"local {kvq}", lambda: LocalCache(kvq), 1)):
        nll = streaming_nll(lm, ids, make(), chunk=chunk)
        ppl[name] = float(torch.exp(nll.mean()))
    base = ppl["full"]
    for name, v in ppl.items():
        print(f"  {name:<12} perplexity {v:8.2f}   x{v / base:.3f} of full")
    pct = kvq.value if kvq.is_percent else 100.0 * kvq.value / ids.shape[1]  # a token budget, on this passage
    if plan and pct < 100:
        from anybudget.elastic import UnsupportedModelError
        from anybudget.plan.demo import plan_demo

        try:
            plan_demo(lm, ids, {"full": ppl["full"], "h2o": ppl[f"h2o {kvq}"], "local": ppl[f"local {kvq}"]}, pct)
        except UnsupportedModelError as e:
            print(f"\n(no plan part: {e})")
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0
