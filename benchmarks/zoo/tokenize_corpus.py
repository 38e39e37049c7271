"""Train the reference tokenizer (byte-level BPE) on the train split and tokenize every split.

Usage:  python benchmarks/zoo/tokenize_corpus.py --build benchmarks/zoo/build --vocab 8192
Writes  <build>/tokenizer/ (Hugging Face format: AutoTokenizer.from_pretrained works offline)
        <build>/{train,validation,test}.u16.xz   uint16 token ids, documents joined by <|endoftext|>
        benchmarks/zoo/data/{validation,test}.u16.xz and benchmarks/zoo/data/tokens.json (committed)
        .carry/zoo/train.u16.xz (git-ignored; what travels to the GPU machine for training)
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
from anybudget.io import atomic_write_bytes, atomic_write_json  # noqa: E402

DOC_SEP = "\n\n\f\n\n"
EOS = "<|endoftext|>"
SPECIALS = [EOS, "<|pad|>"]


def train_tokenizer(train_txt: Path, vocab: int, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def docs():
        yield from train_txt.read_text(encoding="utf-8").split(DOC_SEP)

    tok.train_from_iterator(docs(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=None, pad_token="<|pad|>"
    )
    fast.model_max_length = 4096
    fast.save_pretrained(out)
    return fast


def encode_split(fast, txt: Path) -> np.ndarray:
    eos = fast.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    docs = txt.read_text(encoding="utf-8").split(DOC_SEP)
    enc = fast(docs, add_special_tokens=False)["input_ids"]
    for d in enc:
        ids.append(eos)  # each document starts after an end-of-text token, GPT-2 style
        ids.extend(d)
    arr = np.asarray(ids, dtype=np.uint16)
    assert arr.max() < 2**16
    return arr


def write_xz(path: Path, arr: np.ndarray, preset: int = 9) -> int:
    data = lzma.compress(arr.tobytes(), preset=preset)
    atomic_write_bytes(path, data)
    return len(data)


def read_xz(path: Path) -> np.ndarray:
    return np.frombuffer(lzma.decompress(Path(path).read_bytes()), dtype=np.uint16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="benchmarks/zoo/build")
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args(argv)
    build = Path(args.build)
    fast = train_tokenizer(build / "train.txt", args.vocab, build / "tokenizer")
    record = {"vocab_size": len(fast), "tokenizer": "byte-level BPE (tokenizers), trained on train split", "splits": {}}
    data_dir = ROOT / "benchmarks/zoo/data"
    carry = ROOT / ".carry/zoo"
    for split in ("train", "validation", "test"):
        arr = encode_split(fast, build / f"{split}.txt")
        nbytes = write_xz(build / f"{split}.u16.xz", arr)
        record["splits"][split] = {"tokens": int(arr.size), "xz_bytes": nbytes}
        if split == "train":
            carry.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(build / f"{split}.u16.xz", carry / f"{split}.u16.xz")
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(build / f"{split}.u16.xz", data_dir / f"{split}.u16.xz")
        print(split, arr.size, "tokens", nbytes, "bytes xz", flush=True)
    corpus = json.loads((build / "corpus.json").read_text())
    record["corpus"] = corpus
    atomic_write_json(data_dir / "tokens.json", record)
    shutil.copytree(build / "tokenizer", carry / "tokenizer", dirs_exist_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
