#!/usr/bin/env bash
# Rebuild the reference LM's staged training tokens from Debian packages, offline but for apt (~45 min, 2 cores).
#   bash benchmarks/zoo/stage_v3.sh [DEBS_DIR]
# -> .carry/reflm3s/part{1,2,3} (the GPU staging parts, benchmarks/zoo/data_v3/manifest_s.json) and
#    .carry/reflm_anneal/, every file checked against the committed manifests' sha256 (restage_v3, train_lm_v3).
# These are the steps of the 2026-11-26 rebuild after a machine reset (done by hand then, step by step, with an
# identical stream: sha256 f5a51db2...); written down here as one script, not yet run end to end as one.
# The git-ignored build folders (build, build_v2, build_v3: ~4 GB with the .debs) make each step resumable.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=".venv/bin/python"; export PYTHONPATH=src
debs="${1:-benchmarks/zoo/build_v2/debs}"
mkdir -p "$debs" benchmarks/zoo/build_v3/debs
apt-get update -q >/dev/null  # bookworm-updates / -security lists: linux-doc-6.12 is only there
command -v pdftotext >/dev/null || apt-get install -y -q poppler-utils >/dev/null
# The committed v3 build used Rails 2:6.1.7.10+dfsg-1~deb12u3; apt now offers a later ~deb12u*: fetch the recorded ones.
for p in activesupport activerecord actionpack actionview activemodel railties; do
  f="benchmarks/zoo/build_v3/debs/ruby-${p}_2%3a6.1.7.10+dfsg-1~deb12u3_all.deb"
  [ -f "$f" ] || curl -fsSL -o "$f" "http://deb.debian.org/debian-security/pool/updates/main/r/rails/ruby-${p}_6.1.7.10+dfsg-1~deb12u3_all.deb"
done
$py benchmarks/zoo/corpus.py --out benchmarks/zoo/build --debs "$debs"            # v1 (the anneal's in-domain text)
[ -f benchmarks/zoo/build_v2/corpus.json ] || $py benchmarks/zoo/corpus_v2.py --out benchmarks/zoo/build_v2 --debs "$debs"
$py benchmarks/zoo/corpus_v3.py --v2-build benchmarks/zoo/build_v2 --out benchmarks/zoo/build_v3
# v2's train tokens with the shipped tokenizer (tokenize_v2's file, without retraining the tokenizer): the anneal's general slice
[ -f .carry/zoo2/train.u16.xz ] || $py - <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks/zoo")
from tokenize_corpus import write_xz
from tokenize_v2 import encode_split
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained("src/anybudget/assets/reflm")
Path(".carry/zoo2").mkdir(parents=True, exist_ok=True)
write_xz(Path(".carry/zoo2/train.u16.xz"), encode_split(tok, Path("benchmarks/zoo/build_v2/train.txt")))
PY
$py benchmarks/zoo/anneal_lm.py --prepare --mirror ''
$py benchmarks/zoo/tokenize_v3.py --v2-build benchmarks/zoo/build_v2 --v3-build benchmarks/zoo/build_v3
$py benchmarks/zoo/restage_v3.py --jobs 2
$py benchmarks/zoo/train_lm_v3.py --manifest benchmarks/zoo/data_v3/manifest_s.json --verify-only --expect part1,part2,part3
git diff --stat -- benchmarks/zoo/data_v3  # empty when the rebuild is exact
