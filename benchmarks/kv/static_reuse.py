"""A static H2O cache reused across ``generate`` calls under transformers' compiled decoding.

The serving benchmark's ``h2o_20`` row (batch 64, prompt 2048) crashed on an H100/H200 in the
second ``generate`` (a warm-up of 4 tokens, then 128) with an inductor device assert
``index out of bounds: 0 <= tmp0 < ks0`` in the scatter that writes the new token's slot. The
slot came from ``argmin`` over the validity mask cast to int8, which inductor compiles wrongly
(on the CPU, from 16 slots on, it returns 0 for every row, so the step overwrote a kept token
from the second step on, or an index past the row, the same device assert; pytorch#184893,
#191499, CUDA bool #174069). The step now takes the
``min`` of slot numbers (an index in range by construction) and writes with ``index_put_``
(in place; ``scatter`` copied every buffer, keys and values included, at every step).

Each variant runs in its own process (a device-side assert leaves the CUDA context unusable):
inductor with CUDA graphs (``reduce-overhead``, what transformers compiles with) or without
(``default``); the cache reused after the warm-up or a fresh one; row micro-batched prompt or
not; and ``legacy_*``: the stored-index step of an earlier version, rebuilt here. Per variant:
whether it ran, whether the reused cache's tokens equal a fresh cache's, the share of tokens
equal to the eager dynamic ``H2OCache`` (bf16: near-ties may differ; where a row first differs,
the eager run's top-1/top-2 logit gap there against its median shows whether it was a near-tie),
and checks of the kept
set that do not depend on numerics: every row keeps exactly its budget, its whole recent window,
and no position twice. GPU: one H100, ~3 min; needs no carried files (random weights).
``--smoke``: the same code on a tiny CPU model (``--backend inductor`` for the real compiler).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from anybudget import kv
from anybudget.io import results_dir, write_results

CUDA = torch.cuda.is_available()
VARIANTS = {  # name: (compile mode, reuse the warm-up's cache, micro-batched prompt, legacy stored index)
    "reuse_cudagraphs": ("reduce-overhead", True, True, False),
    "fresh_cudagraphs": ("reduce-overhead", False, True, False),
    "reuse_no_cudagraphs": ("default", True, True, False),
    "reuse_no_microbatch_cudagraphs": ("reduce-overhead", True, False, False),
    "legacy_reuse_cudagraphs": ("reduce-overhead", True, True, True),
    "legacy_fresh_cudagraphs": ("reduce-overhead", False, True, True),
    "legacy_reuse_no_microbatch": ("reduce-overhead", True, False, True),
    "legacy_reuse_no_cudagraphs": ("default", True, True, True),
}
DEFAULT_VARIANTS = ("reuse_cudagraphs", "fresh_cudagraphs", "reuse_no_cudagraphs")
SMOKE_VARIANTS = ("reuse_cudagraphs", "legacy_reuse_cudagraphs")


def use_legacy_stored_index() -> None:
    """Rebuild the step of before: a (B, H, 1) ``free`` buffer, marked static, written after the
    prompt and after every eviction, read as the next write slot."""
    from anybudget.kv.static_slots import StaticSlotLayer, _mark_static

    cls = StaticSlotLayer
    cls.ROW_BUFFERS = (*cls.ROW_BUFFERS, "free")
    allocate, clear, finish, evict = cls.allocate, cls.clear, cls.finish_prompt, cls.evict

    def new_allocate(self, B, H, *args, **kwargs):
        allocate(self, B, H, *args, **kwargs)
        if getattr(self, "_free_of", None) is not self.keys:  # new buffers: a new index buffer with them
            self.free, self._free_of = torch.zeros(B, H, 1, dtype=torch.long, device=self.device), self.keys
            _mark_static(self.free)

    def new_clear(self):
        clear(self)
        if getattr(self, "free", None) is not None:
            self.free.zero_()

    def store(self):
        self.free.copy_(self.valid.to(torch.int8).argmin(-1, keepdim=True))

    cls.allocate = new_allocate
    cls.clear = new_clear
    cls.finish_prompt = lambda self, *a: (finish(self, *a), store(self))[0]
    cls.evict = lambda self: (evict(self), store(self))[0]
    cls.free_slot = lambda self: self.free


def run_variant(name: str, smoke: bool, B: int, P: int, N: int, backend: str = "aot_eager") -> dict:
    """One variant, in this process: warm-up generate (4 tokens), then N tokens on the same cache
    (or a fresh one), then N tokens on a fresh cache; tokens compared."""
    from serving import (
        build_model,  # the sibling benchmark's model (this script's folder is on sys.path)
    )
    from transformers import CompileConfig

    mode, reuse, micro, legacy = VARIANTS[name]
    if legacy:
        use_legacy_stored_index()
    model, cfg = build_model(smoke, P + N + 8, layers=2)  # the serving model's layers, 2 deep (compile time)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, cfg.vocab_size, (B, P), generator=g).to(model.device)
    gen = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "do_sample": False}
    cc = CompileConfig(dynamic=True, mode=mode) if not smoke else CompileConfig(backend=backend, dynamic=True)
    cc._compile_all_devices = True  # CPU smoke: transformers compiles only on accelerators otherwise
    pbt = 65536 if micro else 1 << 40
    if smoke and micro:
        pbt = P * max(1, B // 2)  # two row micro-batches, as batch 64 x prompt 2048 has on the GPU
    with torch.no_grad():
        eager = model.generate(**gen, max_new_tokens=N, min_new_tokens=N, return_dict_in_generate=True,
                               output_scores=True, **kv.cache_kwargs(kv.enable(model), kv.H2OCache("20%")))
        ref, ref_scores = eager.sequences, torch.stack(eager.scores, 1)  # (B, N, V)
        t0 = time.perf_counter()
        cache = kv.H2OCache("20%", static=True, max_new_tokens=N, prefill_batch_tokens=pbt)
        print("PHASE warm-up generate (4 tokens)", flush=True)
        model.generate(**gen, max_new_tokens=4, min_new_tokens=4, compile_config=cc, **kv.cache_kwargs(model, cache))
        if not reuse:
            cache = kv.H2OCache("20%", static=True, max_new_tokens=N, prefill_batch_tokens=pbt)
        print("PHASE second generate", flush=True)
        second = model.generate(**gen, max_new_tokens=N, min_new_tokens=N, compile_config=cc,
                                **kv.cache_kwargs(model, cache))
        print("PHASE third generate (fresh cache)", flush=True)
        fresh = model.generate(**gen, max_new_tokens=N, min_new_tokens=N, compile_config=cc,
                               **kv.cache_kwargs(model, kv.H2OCache("20%", static=True, max_new_tokens=N,
                                                                   prefill_batch_tokens=pbt)))
        if CUDA:
            torch.cuda.synchronize()
    free_ok = all(bool((~layer.valid).any(-1).all()) for layer in cache.layers)
    return {"variant": name, "ok": True, "seconds": time.perf_counter() - t0,
            "second_equals_fresh": bool(torch.equal(second, fresh)),
            "share_equal_to_dynamic": float((second[:, P:] == ref[:, P:]).float().mean()),
            **divergence(second[:, P:], ref[:, P:], ref_scores),
            "free_slot_in_every_row": free_ok, **kept_set_checks(cache)}


def divergence(tokens: torch.Tensor, ref: torch.Tensor, ref_scores: torch.Tensor) -> dict:
    """Where the compiled tokens first leave the eager ones, per row, and the eager run's top-1 minus
    top-2 logit at that step against its median over all steps: a random-weight model's logits are
    nearly flat, so a bf16 rounding difference flips a near-tie, after which the rows differ anyway."""
    diff = tokens != ref
    rows = diff.any(-1)
    top2 = ref_scores.float().topk(2, dim=-1).values
    gap = top2[..., 0] - top2[..., 1]  # (B, N)
    out = {"rows_identical": int((~rows).sum()), "rows": int(rows.numel()),
           "median_top2_gap_all_steps": float(gap.median())}
    if rows.any():
        first = diff.float().argmax(-1)[rows]
        at = gap[rows].gather(1, first[:, None]).squeeze(1)
        out.update({"median_first_divergence_step": float(first.float().median()),
                    "median_top2_gap_at_first_divergence": float(at.median()),
                    "max_top2_gap_at_first_divergence": float(at.max())})
    return out


def kept_set_checks(cache) -> dict:
    """Checks of every layer's kept set after a generation that hold whatever the numerics: each
    (row, head) keeps exactly its budget of tokens, every position of its recent window, and no
    position twice (a step that overwrote a kept token breaks the first or the last)."""
    budget = window = unique = True
    for layer in cache.layers:
        valid, pos = layer.valid, layer.pos
        tb = layer._row_budget(layer.real_seen)
        recent = layer.policy.split(tb)[1]
        # per-row quantities as (B, 1) against the (B, H) counts and (B, 1, 1) against (B, H, S)
        tb = tb.view(-1, 1) if isinstance(tb, torch.Tensor) else tb
        recent = recent.view(-1, 1) if isinstance(recent, torch.Tensor) else recent
        seen = layer.seen.view(-1, 1) if isinstance(layer.seen, torch.Tensor) else layer.seen
        first_recent = seen - recent
        first_recent = first_recent.unsqueeze(-1) if isinstance(first_recent, torch.Tensor) else first_recent
        budget &= bool((valid.sum(-1) == tb).all())
        window &= bool(((valid & (pos >= first_recent)).sum(-1) == recent).all())
        kept = torch.sort(torch.where(valid, pos, -1 - torch.arange(pos.shape[-1], device=pos.device)), -1).values
        unique &= bool((kept.diff(dim=-1) != 0).all())
    return {"kept_budget_in_every_row": budget, "recent_window_kept": window, "positions_unique": unique}


def _kernel_source(stderr: str) -> str | None:
    """The inductor kernel file a device assert names (its first 120 lines), for the record."""
    import re

    m = re.search(r"(/tmp/torchinductor_[^\s:]+\.py):(\d+)", stderr)
    if not m or not os.path.exists(m.group(1)):
        return None
    with open(m.group(1)) as f:
        return f"{m.group(1)}:{m.group(2)}\n" + "".join(f.readlines()[:120])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", str(results_dir("kv_static_reuse"))))
    ap.add_argument("--name", default="kv_static_reuse")
    ap.add_argument("--variants", default=None,
                    help=f"comma list of {', '.join(VARIANTS)} (default {', '.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--timeout", type=float, default=170, help="seconds per variant (its own process)")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU: the same code path in seconds")
    ap.add_argument("--backend", default="aot_eager", choices=("aot_eager", "inductor"),
                    help="--smoke only: the compiler backend (the GPU always uses inductor)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    B, P, N = (64, 2048, 128) if not args.smoke else (3, 16, 8) if args.backend == "aot_eager" else (3, 64, 16)
    # smoke with inductor: 17 slots a row, where its int8 argmin went wrong (see the doc)
    if not CUDA and not args.smoke:
        raise SystemExit("error: no CUDA device; use --smoke on a CPU")
    if args.child:
        print("RESULT " + json.dumps(run_variant(args.child, args.smoke, B, P, N, args.backend)), flush=True)
        return 0
    names = args.variants.split(",") if args.variants else (SMOKE_VARIANTS if args.smoke else DEFAULT_VARIANTS)
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise SystemExit(f"error: --variants {bad} unknown; choose from {', '.join(VARIANTS)}")
    rows = []
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in names:
        cmd = [sys.executable, __file__, "--child", name] + (["--smoke", "--backend", args.backend] if args.smoke else [])
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=args.timeout)
        except subprocess.TimeoutExpired as e:
            r = subprocess.CompletedProcess(cmd, -9, stdout=e.stdout or "", stderr=f"timed out after {args.timeout} s")
            r.stdout = r.stdout.decode() if isinstance(r.stdout, bytes) else r.stdout
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        err = r.stderr.splitlines()
        row = json.loads(line[-1][7:]) if line else {
            "variant": name, "ok": False, "returncode": r.returncode,
            "index_assert": next((x[-400:] for x in err if "index out of bounds" in x), None),
            "error": next((x for x in reversed(err) if "Error" in x), r.stderr[-300:])[-400:],
            "stderr_tail": r.stderr[-1500:],
            "phase": next((x[6:] for x in reversed(r.stdout.splitlines()) if x.startswith("PHASE ")), None),
            "kernel": _kernel_source(r.stderr)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    config = {"batch": B, "prompt": P, "new_tokens": N, "budget": "20%", "smoke": args.smoke,
              "variants": {n: dict(zip(("mode", "reuse", "microbatched_prompt", "legacy_stored_index"), VARIANTS[n]))
                           for n in names}}
    checks = ("second_equals_fresh", "free_slot_in_every_row", "kept_budget_in_every_row", "recent_window_kept",
              "positions_unique")
    metrics = {"rows": rows, "current_code_ok": all(r["ok"] and all(r.get(c) for c in checks) for r in rows
                                                    if not r["variant"].startswith("legacy"))}
    path = write_results(args.name, config, metrics, out_dir=args.out)
    print("wrote", path)
    return 0 if metrics["current_code_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
