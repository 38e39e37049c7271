"""Re-split the staged v3 training tokens (and the anneal tokens) into parts small enough to travel.

The v3 parts of ``tokenize_v3.py`` (.carry/reflm3/part1 51.0 MB with its eval sets) leave ~0.1 MB
of the 64 MiB trip to the GPU machine once the 16 MB tracked tree travels with them: any growth of
the tree breaks staging. This script cuts the same token stream again into parts of at most
``--cap`` bytes (40 MB: ~11 MB to spare next to the tree) and adds the files that the in-domain
anneal phase needs (``anneal_lm.py --prepare``: v1's in-domain tokens and its validation set), so
that one staging scheme carries everything:

  python benchmarks/zoo/restage_v3.py [--src-root /work/main] [--anneal-dir /work/main/.carry/reflm_anneal]
  -> .carry/reflm3s/part{1..N}/ (git-ignored) and benchmarks/zoo/data_v3/manifest_s.json (committed)

The training stream is cut at document starts (``<|bos|>``), so every part begins a document. The
concatenated stream of the new parts is byte-for-byte the old one: the sha256 of the decompressed
uint16 stream is checked after writing and kept in the new manifest (``stream_sha256``), which
``train_lm_v3.py`` checks again after loading. Eval and anneal files are copied unchanged (same
sha256 as their sources). Part sizes are planned from the source parts' xz bytes per token (per
source part, since the new domains compress worse) with 3% slack, then compressed (xz preset 9, as
``tokenize_v3.write_part``) and checked against the cap; an overfull part stops with an error that
suggests ``--parts``. The original manifest (data_v3/manifest.json) keeps working unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenize_v3 import write_part
from train_lm_v3 import MANIFEST, verify

from anybudget.elastic.data import read_tokens
from anybudget.io import atomic_write_bytes, atomic_write_json, read_json

MANIFEST_S = ROOT / "benchmarks/zoo/data_v3/manifest_s.json"
DEST = ".carry/reflm3s"
CAP = 40_000_000
ANNEAL_FILES = ("indomain", "indomain_val")
BOS = 1  # <|bos|> in the reference LM's tokenizer (checked against the stream below)


def stream_sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.uint16).tobytes()).hexdigest()


def plan_parts(part_tokens: list[int], part_bytes: list[int], extras: dict[str, int], bos_pos: np.ndarray,
               cap: int, n_parts: int | None = None, slack: float = 0.03) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """Token ranges [a, b) of the stream per new part and {extra file: part index}, each part ~equal in bytes.

    ``part_tokens``/``part_bytes``: the source parts (their xz bytes per token estimate a range's size);
    ``extras``: bytes of the files copied unchanged; ``bos_pos``: document starts (cut points).
    """
    if cap < 1:
        raise ValueError(f"cap={cap}: must be >= 1 byte")
    bounds = np.concatenate([[0], np.cumsum(part_tokens)])
    cum_bytes = np.concatenate([[0.0], np.cumsum(part_bytes, dtype=np.float64)])

    def est(t: float) -> float:  # estimated xz bytes of the stream's first t tokens
        return float(np.interp(t, bounds, cum_bytes))

    total = cum_bytes[-1] + sum(extras.values())
    n = n_parts or max(1, math.ceil(total / (cap * (1 - slack))))
    budget = total / n
    room, where = [budget] * n, {}
    for name, size in sorted(extras.items(), key=lambda kv: -kv[1]):  # largest first, to the emptiest part
        k = int(np.argmax(room))
        where[name] = k
        room[k] -= size
    ranges, a, spent = [], 0, 0.0
    for k in range(n):
        if k == n - 1:
            ranges.append((a, int(bounds[-1])))
            break
        spent += room[k]
        t = float(np.interp(spent, cum_bytes, bounds))  # token position where the byte budget runs out
        i = np.searchsorted(bos_pos, t, side="right") - 1  # the last document start at or before it,
        if i >= 0 and bos_pos[i] > a:
            b = int(bos_pos[i])
        elif i + 1 < len(bos_pos):  # else the next one (a document longer than the budget)
            b = int(bos_pos[i + 1])
        else:
            b = int(t)
        ranges.append((a, b))
        a = b
    return ranges, where


def _compress(job: tuple[Path, np.ndarray, Path]) -> dict:
    path, arr, root = job
    return write_part(path, arr, root=root)


def restage(src_manifest: dict, src_root: Path, root: Path, dest: str = DEST, cap: int = CAP,
            anneal_dir: Path | None = None, anneal_files=ANNEAL_FILES, n_parts: int | None = None,
            jobs: int = 1) -> dict:
    """Write the new parts under ``root / dest`` and return the new manifest (not yet written)."""
    verify(src_manifest, src_root)
    train = np.concatenate([read_tokens(src_root / p["path"]) for p in src_manifest["parts"]])
    sha = stream_sha256(train)
    if train.size and train[0] != BOS:
        raise ValueError(f"the v3 stream starts with id {train[0]}, not <|bos|> ({BOS}): not tokenize_v3's format")
    extras = {f"eval/{k}": (src_root / e["path"], e) for k, e in src_manifest["eval"].items()}
    for name in anneal_files if anneal_dir else ():
        p = Path(anneal_dir) / f"{name}.u16.xz"
        if not p.is_file():
            raise FileNotFoundError(f"--anneal-dir {anneal_dir}: no {p.name} (write it with anneal_lm.py --prepare)")
        extras[f"anneal/{name}"] = (p, None)
    sizes = {k: p.stat().st_size for k, (p, _) in extras.items()}
    ranges, where = plan_parts([p["tokens"] for p in src_manifest["parts"]], [p["bytes"] for p in src_manifest["parts"]],
                               sizes, np.flatnonzero(train == BOS), cap, n_parts)
    jobs_in = [(root / dest / f"part{k + 1}/train.u16.xz", train[a:b], root) for k, (a, b) in enumerate(ranges)]
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        parts = list(pool.map(_compress, jobs_in))
    for k, e in enumerate(parts):
        e.update(part=f"part{k + 1}", first_token=int(ranges[k][0]))
    new = {"source_manifest": "benchmarks/zoo/data_v3/manifest.json", "vocab_size": src_manifest.get("vocab_size"),
           "cap_bytes": cap, "stream_sha256": sha,
           "train_tokens": int(train.size), "parts": parts, "eval": {}, "anneal": {}}
    for key, (src, entry) in extras.items():
        kind, name = key.split("/")
        data = src.read_bytes()
        path = root / dest / f"part{where[key] + 1}/{name}.u16.xz"
        atomic_write_bytes(path, data)
        e = {"path": str(path.relative_to(root)), "tokens": int(read_tokens(path).size), "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "part": f"part{where[key] + 1}"}
        if entry is not None and e["sha256"] != entry["sha256"]:
            raise ValueError(f"{src}: sha256 differs from the source manifest's")
        new[kind][name] = {**(entry or {}), **e}
    staged = {}
    for e in [*new["parts"], *new["eval"].values(), *new["anneal"].values()]:
        staged[e["part"]] = staged.get(e["part"], 0) + e["bytes"]
    over = {p: b for p, b in staged.items() if b > cap}
    if over:
        raise ValueError(f"parts over --cap {cap}: {over}; run again with --parts {len(ranges) + 1}")
    new["staging"] = [{"part": p, "carry": f"{dest}/{p}", "bytes": b} for p, b in sorted(staged.items())]
    check = np.concatenate([read_tokens(root / p["path"]) for p in new["parts"]])
    if stream_sha256(check) != sha:
        raise ValueError("the re-split stream differs from the source stream (sha256)")
    return new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", default=str(MANIFEST), help="the source (tokenize_v3) manifest")
    ap.add_argument("--src-root", default=str(ROOT), help="folder the source manifest's paths are relative to")
    ap.add_argument("--root", default=str(ROOT), help="folder the new parts are written under")
    ap.add_argument("--dest", default=DEST)
    ap.add_argument("--out-manifest", default=str(MANIFEST_S))
    ap.add_argument("--cap", type=int, default=CAP, help="bytes per part folder at most")
    ap.add_argument("--parts", type=int, default=None, help="number of parts (default: the fewest under --cap)")
    ap.add_argument("--anneal-dir", default=str(ROOT / ".carry/reflm_anneal"), help="'' for no anneal files")
    ap.add_argument("--anneal-files", default=",".join(ANNEAL_FILES))
    ap.add_argument("--jobs", type=int, default=1, help="parts compressed in parallel")
    args = ap.parse_args(argv)
    if args.parts is not None and args.parts < 1:
        ap.error(f"--parts {args.parts}: must be >= 1")
    new = restage(read_json(args.manifest), Path(args.src_root), Path(args.root), args.dest, args.cap,
                  Path(args.anneal_dir) if args.anneal_dir else None, args.anneal_files.split(","), args.parts, args.jobs)
    atomic_write_json(args.out_manifest, new)
    for s in new["staging"]:
        print(f"{s['part']}: {s['bytes'] / 1e6:.2f} MB  carry {s['carry']}")
    print(f"stream sha256 {new['stream_sha256']} ({new['train_tokens']} tokens), manifest {args.out_manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
