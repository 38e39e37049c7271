"""Shared argparse ``type=`` checks and start-of-command checks for the ``anybudget`` command.

Every check runs before any model is loaded or any work starts, so a bad argument costs nothing and
ends in one ``error:`` line naming the argument (argparse adds the ``--flag`` name to a
``ArgumentTypeError``). Only the standard library is imported here, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path


def _int(text: str, low: int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"{v} must be {what} (>= {low})")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int(text, 1, "a positive integer")


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    return _int(text, 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """A finite float > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"{v} must be a finite number > 0")
    return v


def fraction(text: str) -> float:
    """A float in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v} must be a fraction in [0, 1]")
    return v


def budget(text: str) -> str:
    """A budget string such as ``flops=100M`` or ``latency=5ms``, parsed by :class:`anybudget.budget.Budget`.

    Returns the text unchanged (commands parse it again with their own rules); refuses an empty one.
    """
    from anybudget.budget import Budget, BudgetError

    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give e.g. flops=100M, latency=5ms or mem=2GiB")
    try:
        Budget(text)
    except BudgetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def kv_budget(text: str) -> str:
    """A KV budget: ``kv=20%``, ``20%`` (of tokens seen) or ``512`` (tokens); refuses an empty one."""
    from anybudget.budget import Budget, BudgetError

    t = text.strip()
    if not t or t == "kv=":
        raise argparse.ArgumentTypeError("is empty; give e.g. kv=20% or kv=512")
    try:
        if "=" in t:
            Budget(t).require("kv")
        else:
            Budget({"kv": int(t) if t.isdigit() else t})
    except BudgetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def kv_budget_list(text: str) -> str:
    """A comma-separated list of KV budgets, each as in :func:`kv_budget`; refuses an empty list."""
    items = [b.strip() for b in text.split(",") if b.strip()]
    if not items:
        raise argparse.ArgumentTypeError("is empty; give e.g. 50%,20%")
    for b in items:
        kv_budget(b)
    return text


def existing_file(text: str) -> str:
    """A path to a readable regular file."""
    p = Path(text)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file" if p.exists() else f"{text!r} does not exist")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not readable")
    return text


def folder_with(name: str, what: str):
    """Type for an existing folder holding ``name`` (e.g. ``config.json`` of a Hugging Face model,
    ``elastic.json`` of ``anybudget elastic build``); ``what`` says which folder is expected."""

    def check(text: str) -> str:
        p = Path(text)
        if not p.exists():
            raise argparse.ArgumentTypeError(f"{text!r} does not exist ({what})")
        if not p.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is not a folder ({what})")
        if not (p / name).is_file():
            raise argparse.ArgumentTypeError(f"{text!r} has no {name}: not {what}")
        return text

    return check


def utf8_file(text: str) -> str:
    """An existing file whose content decodes as UTF-8 (checked up front, not after a model loads)."""
    existing_file(text)
    try:
        Path(text).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
        ) from None
    return text


def _check_dir_writable(d: Path, text: str) -> None:
    """Raise unless ``d`` exists as a folder, or could be created, and a file can be written there."""
    probe = d
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {str(probe)!r} is not a folder")
    try:  # a real test write: os.access says yes for root even on read-only or virtual file systems
        fd, tmp = tempfile.mkstemp(prefix=".anybudget-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not writable ({e.strerror} in {str(probe)!r})") from None


def writable_dir(text: str) -> str:
    """An output folder that exists and is writable, or can be created; nothing is created here."""
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    _check_dir_writable(p, text)
    return text


def writable_file(text: str) -> str:
    """An output file path whose folder is writable (or can be created) and that is not a folder."""
    p = Path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file path")
    _check_dir_writable(p.parent if str(p.parent) else Path("."), text)
    return text


def writable_stem(*suffixes: str):
    """An output stem ``OUT`` for files ``OUT<suffix>`` (e.g. ``.json``, ``.png``), each checked."""

    def check(text: str) -> str:
        for s in suffixes:
            try:
                writable_file(text + s)
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return text

    check.__name__ = "output stem"
    return check


def require(extra: str, *modules: str) -> None:
    """At command start: stop with one line naming the extra when an optional package is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        # exit code 1, not 2: the input is fine, the installation lacks a package
        err = SystemExit(f"error: this command needs {', '.join(missing)}: pip install 'anybudget[{extra}]'")
        print(err.code, file=sys.stderr)
        err.code = 1
        raise err


def as_path(check):
    """``check`` (one of the above), returning a :class:`pathlib.Path` for commands that use paths."""

    def typ(text: str) -> Path:
        return Path(check(text))

    typ.__name__ = getattr(check, "__name__", "path")
    return typ


def device(text: str) -> str:
    """A torch device that exists here (``cpu``, ``cuda``, ``cuda:1``); checked before any model loads."""
    import torch

    try:
        d = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu or cuda") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device here (torch {torch.__version__}); use cpu")
        if d.index is not None and d.index >= n:
            raise argparse.ArgumentTypeError(f"{text!r}: only {n} CUDA device(s) here")
    elif d.type != "cpu" and d.type != "mps":
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu or cuda")
    return text


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true/false")


def _tuple_of(elem):
    def parse(text: str) -> tuple:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("is empty; give comma-separated values")
        try:
            return tuple(elem(x) for x in items)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {elem.__name__}") from None

    parse.__name__ = f"list of {elem.__name__}"
    return parse


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def add_dataclass_args(p: argparse.ArgumentParser, cls, prefix: str = "", only=None, skip=(),
                       overrides: dict | None = None, title: str | None = None) -> None:
    """One flag per field of the dataclass ``cls``: ``--PREFIX-FIELD-NAME``, default and help from it.

    The dataclass holds every default (the flag's own default is None: "not given"), so no default is
    typed twice; :func:`dataclass_from_args` builds the instance. ``only`` / ``skip``: field names to
    include / leave out. ``overrides``: ``{field: {"type": ..., "choices": ..., "help": ...,
    "flag": "--name"}}`` where the default's type is not the right parser (e.g. ``positive_int``,
    an optional field). Ints and floats are parsed as such; bools take true/false; tuples take
    comma-separated values.
    """
    import dataclasses

    overrides = overrides or {}
    g = p.add_argument_group(title or (f"{cls.__name__} (--{prefix}...)" if prefix else cls.__name__))
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        o = dict(overrides.get(f.name, {}))
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if "type" in o:
            typ = o.pop("type")
        elif isinstance(default, bool):
            typ = _bool
        elif isinstance(default, tuple):
            typ = _tuple_of(type(default[0]) if default else str)
        elif isinstance(default, (int, float, str)):
            typ = type(default)
        else:
            continue  # nested or optional fields need an override to become flags
        shown = (",".join(map(str, default)) if isinstance(default, tuple) else str(default)).replace("%", "%%")
        text = o.pop("help", "")
        flag = o.pop("flag", _flag(prefix, f.name))
        g.add_argument(flag, dest=_dest(prefix, f.name), type=typ, default=None,
                       help=f"{text + ' ' if text else ''}(default {shown})", **o)


def dataclass_from_args(cls, args: argparse.Namespace, prefix: str = "", **fixed):
    """``cls`` from the flags :func:`add_dataclass_args` added (fields not given keep their defaults).

    ``fixed``: values set by the command itself. A ``ValueError`` of the dataclass's own checks is
    raised again with the flag's name in front (the CLI's boundary prints it as one line, exit 2).
    """
    import dataclasses

    kw = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, _dest(prefix, f.name), None)
        if v is not None:
            kw[f.name] = v
    kw.update(fixed)
    try:
        return cls(**kw)
    except ValueError as e:
        msg = str(e)
        named = [f.name for f in dataclasses.fields(cls) if msg.startswith((f.name + "=", f.name + " "))]
        flag = f"{_flag(prefix, named[0])}: " if named and named[0] not in fixed else ""
        raise ValueError(f"{flag}{msg}") from None
