"""Train the v3 reference LM on the staged v3 token parts (a thin layer over train_lm_v2.py).

The v3 training tokens (~4x v2's unique text; ``tokenize_v3.py``) do not fit one call's 64 MiB trip
to the GPU machine, so they travel as parts, one per call on a warm machine (git-ignored paths that
are already there are kept between calls):

  call 1  carry ['.carry/reflm3/part1']  --verify-only --expect part1     (part 1 + new eval sets)
  call k  carry ['.carry/reflm3/partK']  --verify-only --expect part1..K
  last    no carry                        torchrun ... train_lm_v3.py --out $OUT

Every rank checks every file named in the committed manifest (benchmarks/zoo/data_v3/manifest.json)
against its sha256 and size before anything is loaded; a missing or damaged part stops the run at
once with a message naming it and the carry list that stages it (exit code 3). The parts are then
decompressed and concatenated (uint16 kept in memory: 2 bytes a token) and handed to
``train_lm_v2.main`` with v2's model (27.3M parameters: the same architecture, so v2 -> v3 is the
effect of the data alone, and the weights still fit the package's asset folder and the trip back).
Evaluation adds the new domains' validation/test sets (``validation_new``, ``test_new``) to v2's
four (validation, test, v1_test, heldout = gnucash-docs).

  torchrun --nproc_per_node 2 benchmarks/zoo/train_lm_v3.py --out $OUT --minutes 8.0
  python benchmarks/zoo/train_lm_v3.py --smoke --out /tmp/smoke [--root DIR --manifest FILE]  (CPU, seconds)

Re-split parts (``restage_v3.py``: <= 40 MB each, the same token stream, checked by its sha256, plus
the anneal phase's in-domain and selection tokens): ``--manifest benchmarks/zoo/data_v3/manifest_s.json``,
parts ``.carry/reflm3s/partK``; its anneal files become the defaults of --anneal-data / --anneal-val.
The options of train_lm_v2.py (the model's size against the trip back included) are checked right
after the parts are verified, before they are read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_eval import read_ids  # noqa: E402

from anybudget.elastic.data import read_tokens  # noqa: E402

MANIFEST = ROOT / "benchmarks/zoo/data_v3/manifest.json"
MISSING_EXIT = 3


class StagingError(RuntimeError):
    """A staged part is missing or differs from the manifest."""


def _file_entries(manifest: dict) -> list[dict]:
    return [*manifest["parts"], *manifest["eval"].values(), *manifest.get("anneal", {}).values()]


def verify(manifest: dict, root: Path = ROOT, parts: list[str] | None = None) -> list[str]:
    """Check every file of ``parts`` (all by default) against the manifest; return the files checked.

    Raises StagingError naming each missing or mismatched part and the carry entry that stages it.
    """
    known = {e["part"] for e in _file_entries(manifest)}
    if parts is not None and not set(parts) <= known:
        raise StagingError(f"parts={sorted(set(parts) - known)} not in the manifest (it has {sorted(known)})")
    problems, checked = [], []
    for e in _file_entries(manifest):
        if parts is not None and e["part"] not in parts:
            continue
        path = root / e["path"]
        if not path.is_file():
            problems.append(f"{e['part']}: {e['path']} is missing")
            continue
        data = path.read_bytes()
        if len(data) != e["bytes"] or hashlib.sha256(data).hexdigest() != e["sha256"]:
            problems.append(f"{e['part']}: {e['path']} differs from the manifest "
                            f"({len(data)} bytes, expected {e['bytes']}; sha256 checked)")
            continue
        checked.append(e["path"])
    if problems:
        bad = sorted({p.split(":")[0] for p in problems})
        folder = {e["part"]: str(Path(e["path"]).parent) for e in _file_entries(manifest)}
        carry = [folder[b] for b in bad]
        raise StagingError("staged v3 data incomplete:\n  " + "\n  ".join(problems)
                           + f"\nstage again with a call whose carry list is {json.dumps(carry)} "
                           "(one part per call, on a warm machine)")
    return checked


def load(manifest: dict, root: Path = ROOT) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(training ids as one uint16 array in part order, {eval name: ids}) after ``verify``."""
    train = np.concatenate([read_tokens(root / p["path"]) for p in manifest["parts"]])
    if train.size != manifest["train_tokens"]:
        raise StagingError(f"train tokens {train.size} != manifest {manifest['train_tokens']}")
    if "stream_sha256" in manifest and hashlib.sha256(train.tobytes()).hexdigest() != manifest["stream_sha256"]:
        raise StagingError("the concatenated training stream differs from the manifest's stream_sha256")
    evals = {name: read_ids(root / e["path"]) for name, e in manifest["eval"].items()}
    return train, evals


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Other options go to train_lm_v2.py (--minutes, --batch, --lr, ...).")
    ap.add_argument("--manifest", default=str(MANIFEST))
    ap.add_argument("--root", default=str(ROOT), help="folder the manifest's paths are relative to")
    ap.add_argument("--verify-only", action="store_true", help="check the staged parts and exit (staging calls)")
    ap.add_argument("--expect", default=None, help="with --verify-only: comma-separated parts that must be there")
    args, rest = ap.parse_known_args(argv)
    manifest = json.loads(Path(args.manifest).read_text())
    root = Path(args.root)
    import train_lm_v2

    defaults = ["--name", "reflm_v3_train", "--tokenizer", str(ROOT / "src/anybudget/assets/reflm"),
                "--max-epochs", "4", "--minutes", "8.0", "--corpus", _rel(Path(args.manifest))]
    anneal = manifest.get("anneal", {})
    if {"indomain", "indomain_val"} <= set(anneal):  # staged with the training parts (restage_v3.py)
        defaults += ["--anneal-data", str(root / anneal["indomain"]["path"]),
                     "--anneal-val", str(root / anneal["indomain_val"]["path"])]
    argv2 = defaults + rest
    try:
        if args.verify_only:
            parts = args.expect.split(",") if args.expect else None
            checked = verify(manifest, root, parts)
            print(f"verified {len(checked)} files ({', '.join(sorted(set(parts or [])) or 'all parts')})")
            return 0
        verify(manifest, root)
    except StagingError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return MISSING_EXIT
    train_lm_v2.parse_args(argv2, vocab=manifest.get("vocab_size"))  # options and model size, before loading
    train, evals = load(manifest, root)
    return train_lm_v2.main(argv2, train=train, extra_evals=evals)


if __name__ == "__main__":
    sys.exit(main())
