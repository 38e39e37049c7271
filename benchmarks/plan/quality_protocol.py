"""Why the first fit grid's quality check disagreed with its prediction: the reference LM measured
on the CPU under each protocol difference, one at a time (no elastic training needed: the full
model shows each effect).

1 text: the old KV curve streamed the *first* 8 x 1024 test tokens, the old check the *last*
  8 x 1024: full-cache perplexity of both (one forward each)
2 length: new-token perplexity after prompts of several lengths (the model was trained on
  1024-token windows; the old grid served 2048-token prompts)
3 protocol: KV ratios (policy / full cache) on the workload's protocol (``plan.quality``: prompt
  prefilled, new tokens decoded one by one through the cache) at a prompt inside and one outside
  the trained context

CPU (~5 min on 2 cores, float32, needs the reference LM weights in the repo):
    python benchmarks/plan/quality_protocol.py --out /tmp/qp
Smoke (tiny random model, seconds):  python benchmarks/plan/quality_protocol.py --smoke --out /tmp/qp
Writes plan_quality_protocol.json (results record).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "src/anybudget/assets/reflm"))
    ap.add_argument("--test", default=str(ROOT / "benchmarks/zoo/data_v2/test.u16.xz"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--prompts", default="448,896,2048", help="prompt lengths of part 2")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--kv-prompts", default="896,2048", help="prompt lengths of part 3")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke:
        a.windows, a.prompts, a.new, a.kv_prompts = 2, "24,40", 6, "24"
    return a


def load(a):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if a.smoke:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
        return LlamaForCausalLM(cfg).eval(), np.random.default_rng(0).integers(0, 256, 2000), 32
    from anybudget.elastic.data import read_tokens

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    return model, read_tokens(a.test).astype(np.int64), 1024


def main(argv=None) -> int:
    from anybudget.io import write_results
    from anybudget.kv import enable
    from anybudget.plan import ServingWorkload
    from anybudget.plan.device import make_plan_cache
    from anybudget.plan.quality import quality_windows, workload_nll

    a = parse(argv)
    t0 = time.perf_counter()
    model, tokens, seq = load(a)
    enable(model)
    tokens = torch.as_tensor(tokens)
    n = a.windows
    first, last = tokens[: n * seq].view(n, seq), tokens[-n * seq:].view(n, seq)

    def ppl(ids, prompt, cache=None):
        return math.exp(float(workload_nll(model, ids, prompt, cache).mean()))

    text = {"first_windows_ppl": ppl(first, 1), "last_windows_ppl": ppl(last, 1), "windows": n, "seq": seq}
    length = {}
    for p in (int(x) for x in a.prompts.split(",")):
        length[str(p)] = ppl(quality_windows(tokens, ServingWorkload(p, a.new, 1), n), p)
    kv = {}
    for p in (int(x) for x in a.kv_prompts.split(",")):
        w = quality_windows(tokens, ServingWorkload(p, a.new, 1), n)
        full = ppl(w, p)
        row = {"full_ppl": full}
        for policy, budget in (("h2o", "20%"), ("local", "20%"), ("h2o", "10%"), ("local", "10%")):
            row[f"{policy}@{budget}"] = ppl(w, p, make_plan_cache(policy, budget, True, a.new)) / full
        kv[str(p)] = row
    metrics = {"text": text, "new_token_ppl_by_prompt": length, "kv_ratio_by_prompt": kv,
               "total_s": time.perf_counter() - t0}
    config = {"model": "smoke" if a.smoke else a.model, "new_tokens": a.new, "windows": n, "dtype": "float32",
              "protocol": "plan.quality.workload_nll (prompt prefilled, new tokens decoded through the cache)"}
    write_results("plan_quality_protocol", config, metrics, {"kv_ratio": "full cache on the same windows"}, out_dir=a.out)
    print(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
