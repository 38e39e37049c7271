"""v2 tokenizer (byte-level BPE, 16384 tokens) and token files for the v2 corpus.

Every document is encoded as ``<|bos|> text <|endoftext|>``; the Hugging Face tokenizer adds
``<|bos|>`` itself (a template post-processor), so ``tok("The kernel")`` starts like a document.

Usage:  python benchmarks/zoo/tokenize_v2.py --build benchmarks/zoo/build_v2 --vocab 16384
Writes  <build>/tokenizer/                       (AutoTokenizer.from_pretrained works offline)
        .carry/zoo2/train.u16.xz, .carry/zoo2/tokenizer/   (git-ignored; travels to the GPU)
        benchmarks/zoo/data_v2/{validation,test,v1_test,heldout}.u16.xz and tokens.json (committed)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
from anybudget.io import atomic_write_json, read_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenize_corpus import write_xz

DOC_SEP = "\n\n\f\n\n"
BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"
EVAL_SPLITS = ("validation", "test", "v1_test", "heldout")


def train_tokenizer(train_txt: Path, vocab: int, out: Path, max_bytes: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, min_frequency=2, special_tokens=[EOS, BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    text = train_txt.read_text(encoding="utf-8")
    docs = text.split(DOC_SEP)
    # Train on an even sample of documents up to max_bytes (every k-th document).
    step = max(1, int(len(text.encode()) / max_bytes + 0.999))
    tok.train_from_iterator(docs[::step], trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=None)
    fast.model_max_length = 4096
    fast.save_pretrained(out)
    return fast


def encode_split(fast, txt: Path) -> np.ndarray:
    bos, eos = fast.convert_tokens_to_ids(BOS), fast.convert_tokens_to_ids(EOS)
    docs = txt.read_text(encoding="utf-8").split(DOC_SEP)
    parts = []
    for i in range(0, len(docs), 2000):
        for d in fast(docs[i: i + 2000], add_special_tokens=False)["input_ids"]:
            parts.append(np.asarray([bos, *d, eos], dtype=np.uint16))
    arr = np.concatenate(parts)
    assert int(arr.max()) < 2**16
    return arr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="benchmarks/zoo/build_v2")
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--tokenizer-bytes", type=float, default=120e6, help="text sampled to train the BPE")
    ap.add_argument("--elastic-tokens", type=int, default=7_000_000,
                    help="size of the training subset carried for elastic continued training")
    args = ap.parse_args(argv)
    build = Path(args.build)
    t0 = time.time()
    fast = train_tokenizer(build / "train.txt", args.vocab, build / "tokenizer", int(args.tokenizer_bytes))
    print(f"tokenizer trained in {time.time() - t0:.0f}s", flush=True)
    data_dir, carry = ROOT / "benchmarks/zoo/data_v2", ROOT / ".carry/zoo2"
    carry.mkdir(parents=True, exist_ok=True)
    record = {"vocab_size": len(fast), "tokenizer": "byte-level BPE (tokenizers) on the v2 train split",
              "format": "<|bos|> document <|endoftext|>, uint16, xz", "splits": {}}
    for split in ("train", *EVAL_SPLITS):
        arr = encode_split(fast, build / f"{split}.txt")
        dest = carry / "train.u16.xz" if split == "train" else data_dir / f"{split}.u16.xz"
        nbytes = write_xz(dest, arr)
        text_bytes = (build / f"{split}.txt").stat().st_size
        record["splits"][split] = {"tokens": int(arr.size), "xz_bytes": nbytes, "text_bytes": text_bytes,
                                   "bytes_per_token": text_bytes / arr.size}
        if split == "train":
            # A contiguous run of whole documents from the middle of the train split.
            start = len(arr) // 2
            start += int(np.nonzero(arr[start:] == fast.convert_tokens_to_ids(BOS))[0][0])
            sub = arr[start: start + args.elastic_tokens]
            record["splits"]["elastic_train"] = {"tokens": int(sub.size), "offset": start,
                                                 "xz_bytes": write_xz(carry / "elastic_train.u16.xz", sub)}
        print(split, record["splits"][split], f"{time.time() - t0:.0f}s", flush=True)
    record["corpus"] = read_json(build / "corpus.json")
    atomic_write_json(data_dir / "tokens.json", record)
    shutil.copytree(build / "tokenizer", carry / "tokenizer", dirs_exist_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
