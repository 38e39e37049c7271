"""Files that are never half-written, and the JSON results record every benchmark writes.

Every write goes to a temporary file in the destination folder, is flushed and fsync'ed, then
renamed over the destination (``os.replace`` is atomic on POSIX and Windows), so a crash leaves
either the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "results_record",
    "results_module",
    "results_dir",
    "RESULT_MODULES",
    "command_record",
    "write_results",
    "read_json",
    "save_figure",
    "write_plot",
    "write_json_and_plot",
    "CheckpointMismatch",
    "check_checkpoint_config",
]


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    For writers that want a file name (``torch.save``, ``safetensors.torch.save_file``,
    ``plt.savefig``). On an exception the temporary file is removed and ``path`` is untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the file the permissions a plain open() would (umask applies).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def _jsonable(obj: Any) -> Any:
    """Turn tensors, numpy values, paths and non-finite floats into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None  # JSON has no NaN/inf
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return _jsonable(obj.tolist())
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(obj))
    return str(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically; tensors/numpy become lists, NaN/inf become null."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def results_record(name: str, config: dict, metrics: dict, baseline: dict | None = None) -> dict:
    """A results record: ``{name, config, metrics, baseline, device, torch, transformers, commit, date}``."""
    from anybudget.measure import device_record

    if not name or any(c in name for c in "/\\"):
        raise ValueError(f"name={name!r} must be a non-empty file stem without slashes")
    dev = device_record()
    return {
        "name": name,
        "config": config,
        "metrics": metrics,
        "baseline": baseline,
        "device": dev,
        "torch": dev.get("torch"),
        "transformers": dev.get("transformers"),
        "commit": dev.get("commit"),
        "date": dev.get("date"),
    }


def model_identity(folder: str | os.PathLike) -> dict:
    """What a results record needs to name a saved model: its ``reflm.json`` name (the reference LM) or
    config's architecture, and the first 16 hex digits of the sha256 of its ``model.safetensors``."""
    import hashlib

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"model folder {str(folder)!r}: no model.safetensors")
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    meta = folder / "reflm.json"
    cfg = folder / "config.json"
    name = read_json(meta).get("name") if meta.is_file() else None
    if not name:  # not the reference LM (or its reflm.json names nothing): the config's architecture
        name = (read_json(cfg).get("architectures") or ["?"])[0] if cfg.is_file() else "?"
    return {"name": name, "weights_sha256": h.hexdigest()[:16]}


def command_record(obj: dict, config: Any) -> dict:
    """A command's output ``obj`` with its configuration and the device record (versions, commit, date).

    ``config``: a dict, a dataclass or an ``argparse.Namespace`` (its plain str/number/bool/None
    values are kept; the handler function and such are dropped).
    """
    from anybudget.measure import device_record

    if hasattr(config, "__dataclass_fields__"):
        import dataclasses

        config = dataclasses.asdict(config)
    elif not isinstance(config, dict):
        config = vars(config)
    config = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in config.items()}
    config = {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))}
    dev = device_record()
    return {**obj, "config": config, "device": dev, "torch": dev.get("torch"),
            "transformers": dev.get("transformers"), "commit": dev.get("commit"), "date": dev.get("date")}


RESULT_MODULES = ("core", "reflm", "kv", "elastic", "prune", "splat", "nas", "ssm", "plan")


def results_module(name: str) -> str:
    """The ``benchmarks/results/`` folder of a record: its name's prefix before the first ``_``
    when that is one of ``RESULT_MODULES`` (``kv_serving`` -> ``kv``), else ``core``."""
    prefix = Path(name).name.split("_", 1)[0]
    return prefix if prefix in RESULT_MODULES else "core"


def results_dir(name: str, root: str | os.PathLike = "benchmarks/results") -> Path:
    """``<root>/<module>/``, the folder where the record ``name`` (file stem or sub-folder) belongs."""
    return Path(root) / results_module(name)


def write_results(
    name: str,
    config: dict,
    metrics: dict,
    baseline: dict | None = None,
    out_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``<out_dir>/<name>.json`` atomically with the device record; return its path.

    ``out_dir=None``: the record's module folder, ``results_dir(name)`` (relative to the working directory).
    """
    record = results_record(name, config, metrics, baseline)
    return atomic_write_json(Path(out_dir if out_dir is not None else results_dir(name)) / f"{name}.json", record)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120, **kwargs) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it (frees its memory)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", **kwargs)
    finally:
        plt.close(fig)
    return Path(path)


def write_plot(path: str | os.PathLike, draw: Callable[[Path], Any]) -> Path | None:
    """Call ``draw(path)`` to write a plot; a failure is reported as one ``warning:`` line on stderr.

    A plot is a view of results already written elsewhere, so it never stops the caller: a missing
    matplotlib, an unwritable path or a bug in the drawing code each cost the PNG only. Returns the
    path, or ``None`` when nothing was written. ``ANYBUDGET_DEBUG=1`` re-raises instead.
    """
    import sys

    try:
        draw(Path(path))
        return Path(path)
    except Exception as e:  # reported in one line; the JSON is safe
        if os.environ.get("ANYBUDGET_DEBUG", "") not in ("", "0"):
            raise
        if isinstance(e, ImportError):
            why = f"{e.name or e} is missing: pip install 'anybudget[plot]'"
        else:
            lines = str(e).strip().splitlines()
            why = f"{type(e).__name__}: {lines[0] if lines else ''}"
        print(f"warning: {os.fspath(path)} not written ({why[:300]}); the JSON results are complete",
              file=sys.stderr)
        return None


def write_json_and_plot(
    json_path: str | os.PathLike,
    obj: Any,
    png_path: str | os.PathLike,
    draw: Callable[[Path], Any],
) -> tuple[Path, Path | None]:
    """Write ``obj`` as JSON atomically first, then the PNG with :func:`write_plot`.

    The pair every command and benchmark writes: the numbers are on disk before any plotting
    starts, and a failed plot is one ``warning:`` line that loses nothing else.
    ``draw(path)`` writes the PNG to ``path`` (e.g. ``save_figure(fig, path)``).
    """
    jp = atomic_write_json(json_path, obj)
    return jp, write_plot(png_path, draw)


class CheckpointMismatch(ValueError):
    """A checkpoint (or resumable output folder) was written by a run with another configuration."""


def _short(v: Any) -> str:
    t = json.dumps(_jsonable(v))
    return t if len(t) <= 40 else t[:37] + "..."


def _flat(d: Any, prefix: str = "") -> dict:
    """Nested dicts as one level of dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``)."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_checkpoint_config(
    path: str | os.PathLike, stored: dict | None, wanted: dict, what: str = "checkpoint", hint: str = ""
) -> None:
    """Refuse to resume from ``path`` when its stored configuration differs from ``wanted``.

    Both dicts are compared as JSON values (tuples == lists; nested dicts key by key, named
    ``outer.inner``). Keys that ``stored`` lacks (a file
    written before the key existed) are not compared. Raises :class:`CheckpointMismatch` with one
    line naming every differing key, its stored value and the asked one, and what to do.
    """
    if stored is None:
        return
    s, w = _flat(_jsonable(stored)), _flat(_jsonable(wanted))
    diff = [k for k in w if k in s and s[k] != w[k]]
    if diff:
        items = "; ".join(f"{k}: {_short(s[k])} there, {_short(w[k])} now" for k in diff)
        raise CheckpointMismatch(
            f"{what} {os.fspath(path)!r} was written with another configuration ({items}); "
            + (hint or "use another path, or delete it to start over")
        )
