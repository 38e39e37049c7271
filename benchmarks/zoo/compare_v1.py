"""Bits per byte of the v1 reference LM on the v2 evaluation texts, beside v2's recorded values.

v1 (19.4M parameters, 8k BPE) lives in git history (commit 042f756, src/anybudget/assets/reflm);
check it out into a folder first:
    git archive 042f756 src/anybudget/assets/reflm | tar x -C /tmp/v1 --strip-components 3
Then:
    python benchmarks/zoo/compare_v1.py --v1 /tmp/v1/reflm --split heldout --split v1_test
Texts come from benchmarks/zoo/build_v2/<split>.txt (corpus_v2.py), encoded as v1 was trained
(an end-of-text token before every document). Writes benchmarks/results/reflm/reflm_v1_vs_v2.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import DOC_SEP
from lm_eval import evaluate
from same_text import encode_documents

from anybudget.io import read_json, results_dir, write_results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v1", required=True)
    ap.add_argument("--split", action="append", required=True)
    ap.add_argument("--build", default=str(ROOT / "benchmarks/zoo/build_v2"))
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(args.v1, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.v1)
    v2 = read_json(results_dir("reflm_v2_train", ROOT / "benchmarks/results") / "reflm_v2_train.json")["metrics"]["eval"]
    rows = {}
    for split in args.split:
        docs = (Path(args.build) / f"{split}.txt").read_text(encoding="utf-8").split(DOC_SEP)
        r = evaluate(model, tok, encode_documents(tok, docs), seq=1024, batch=8, device="cpu")
        rows[split] = {"v1": r, "v2_bits_per_byte": v2[split]["bits_per_byte"],
                       "v2_lower_by": 1 - v2[split]["bits_per_byte"] / r["bits_per_byte"]}
        print(split, f"v1 {r['bits_per_byte']:.4f}  v2 {v2[split]['bits_per_byte']:.4f}  "
              f"({rows[split]['v2_lower_by']:.1%} lower)", flush=True)
    write_results("reflm_v1_vs_v2", {"v1": "commit 042f756 reference LM (19.4M)", "seq": 1024,
                                     "v1_dtype": "float32 CPU", "v2": "reflm_v2_train.json (bf16 autocast, H100)"},
                  {"splits": rows}, out_dir=results_dir("reflm_v1_vs_v2", ROOT / "benchmarks/results"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
