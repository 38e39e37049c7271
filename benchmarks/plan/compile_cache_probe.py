"""What inductor's cache holds for fit_grid's smoke model, and whether a new process hits it (CPU).

fit_grid.py can carry ``TORCHINDUCTOR_CACHE_DIR`` from one device call to the next
(``--compile-cache``); this measures, on the CPU, the cache of one compiled decoding step of the
smoke model (fit_grid.smoke_inputs' tiny Llama, a static cache, ``dynamic=True``): its files by
kind, raw and xz sizes, and the first compiled step's seconds in a cold and in a warm process with
inductor's FX-graph and AOTAutograd cache counters. On CUDA the cache holds Triton kernels instead
of C++ ones (``triton/``), the same structure otherwise.

CPU (~1-2 min: one cold compilation):  python benchmarks/plan/compile_cache_probe.py --out /tmp/ccp
Writes plan_compile_cache_probe.json (results record).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

STEP = r"""
import json, os, sys, time
import torch
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=2)
m = LlamaForCausalLM(cfg).eval()
ids = torch.randint(0, 512, (2, 40))
cache = StaticCache(config=cfg, max_cache_len=48)
with torch.no_grad():
    nxt = m(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    step = torch.compile(m.forward, dynamic=True)
    t = time.perf_counter()
    pos = torch.tensor([40])
    step(input_ids=nxt, past_key_values=cache, use_cache=True, cache_position=pos, position_ids=pos.expand(2, 1))
print(json.dumps({"first_step_s": time.perf_counter() - t, "inductor": dict(counters["inductor"]),
                  "aot_autograd": dict(counters["aot_autograd"])}))
"""


def run(cache: Path) -> dict:
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton")}
    out = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    from anybudget.io import write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "inductor"
        cold, warm = run(cache), run(cache)
        files = [f for f in cache.rglob("*") if f.is_file()]
        kinds = Counter(f.name.split(".", 1)[1] if "." in f.name else "(no suffix)" for f in files)
        top = (str(f.relative_to(cache)).split("/")[0] for f in files)
        folders = Counter(t if len(t) > 2 else "kernels (2-letter hash folders)" for t in top)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz", preset=0) as t:
            t.add(cache, arcname="inductor")
        metrics = {"files": len(files), "raw_bytes": sum(f.stat().st_size for f in files), "xz_bytes": buf.tell(),
                   "by_suffix": dict(kinds), "by_folder": dict(folders), "cold": cold, "warm": warm}
    write_results("plan_compile_cache_probe", {"model": "fit_grid smoke Llama (2 layers, hidden 64)", "device": "cpu",
                                               "compile": "torch.compile(forward, dynamic=True), static cache"},
                  metrics, None, out_dir=a.out)
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
