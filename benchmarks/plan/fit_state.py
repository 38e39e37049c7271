"""What lets ``fit_grid.py`` run across several device calls: progress lines, the wall-clock guard,
and the state folder that one call leaves for the next.

State folder (``--state``)::

    progress.json          finished phases, their results (quality data, latency model and its
                           calibration measurements, grid entries, quality checks), seconds per
                           phase and per call, the durations the guard estimates from, every
                           measurement by candidate label and device (``measured``: reused, not
                           measured again) and the compile mode (``compile_mode``)
    elastic/               the elastic build as the benchmark uses it: elastic.json, latency table,
                           router, model/ (config and tokenizer files) and model.safetensors.xz, the
                           trained weights in bfloat16 (every run loads these, resumed or not, so
                           both use the same numbers; on CUDA every measurement exports
                           sub-networks in bfloat16 anyway, so nothing changes there); the build's
                           fp32 weights and training checkpoint stay in ``--build``
    compile_cache.tar.xz   optional: the inductor / Triton cache (``--compile-cache``; give the same
                           absolute folder every call: Triton's cache index names its files by
                           absolute path, and a missing one is a miss)

A call ends by writing the folder into ``$OUT`` as one tar (``plan_state.tar``), split into
``plan_state.tar.00``, ``.01``, ... when larger than one part (``part_bytes``); read it back with
``cat plan_state.tar* | tar -xf - -C PARENT_OF_STATE`` or :func:`extract_state`. The weights
(~38 MiB for the reference LM: three parts) are in the tar of the call that built them only; later
calls' tars (one file) are extracted over the folder, which keeps them.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path

from anybudget.io import atomic_write_bytes, atomic_write_json, check_checkpoint_config

STATE_TAR = "plan_state.tar"
PART_BYTES = 15 * 2**20  # the device returns files of at most 16 MiB
WEIGHTS_XZ = "model.safetensors.xz"
ELASTIC_FILES = ("elastic.json", "latency_table.json", "router.safetensors")


class Stop(BaseException):
    """Ends a call early (wall clock, ``--stop-after``, SIGTERM). A BaseException, so that the
    grid's per-fit ``except Exception`` does not swallow it."""


class Clock:
    """Elapsed seconds since ``t0`` (default: now, the start of the call), the deadline, one stderr line per event."""

    def __init__(self, wall_seconds: float, t0: float | None = None):
        self.t0 = time.perf_counter() if t0 is None else t0
        self.wall = float(wall_seconds)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.wall - self.elapsed()

    def say(self, msg: str) -> None:
        """One progress line on stderr (printed under --quiet too: a killed run still shows where it was)."""
        print(f"[fit_grid {self.elapsed():6.1f}s] {msg}", file=sys.stderr, flush=True)

    def need(self, seconds: float, what: str) -> None:
        """Raise :class:`Stop` unless ``seconds`` more still end before the deadline."""
        if self.elapsed() + seconds > self.wall:
            raise Stop(f"{what}: needs ~{seconds:.0f} s, {max(0.0, self.left()):.0f} s left of --wall-seconds {self.wall:g}")


def stop_on_sigterm():
    """Turn SIGTERM (``timeout``) into :class:`Stop` in the main thread, so the state is still saved;
    returns the previous handler."""
    def handler(signum, frame):
        raise Stop("SIGTERM")
    return signal.signal(signal.SIGTERM, handler)


class State:
    """``progress.json`` of a state folder and the files beside it (module doc)."""

    def __init__(self, path, config: dict):
        self.dir = Path(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / "progress.json"
        d = json.loads(self.file.read_text()) if self.file.is_file() else {}
        check_checkpoint_config(self.dir, d.get("config"), config, "--state",
                                "give another --state, or delete it to start over")
        self.d = {"config": config, "done": [], "phases_s": {}, "durations": {}, "calls": [], "grid": [],
                  "checked": {}} | d
        self.resumed = bool(d)

    def __getitem__(self, key):
        return self.d[key]

    def __setitem__(self, key, value):
        self.d[key] = value

    def get(self, key, default=None):
        return self.d.get(key, default)

    def done(self, phase: str) -> bool:
        return phase in self.d["done"]

    def finish(self, phase: str, seconds: float) -> None:
        if phase not in self.d["done"]:
            self.d["done"].append(phase)
        self.add_time(phase, seconds)
        self.save()

    def add_time(self, phase: str, seconds: float) -> None:
        self.d["phases_s"][phase] = self.d["phases_s"].get(phase, 0.0) + seconds

    def save(self) -> Path:
        return atomic_write_json(self.file, self.d)

    def switch_compile_mode(self, mode: str) -> None:
        """Record ``--compile`` in the state. A state whose latency measurements were compiled another way
        (calls before ``--compile`` existed compiled shared graphs) keeps its build and quality data and
        redoes phases 3 and 4: their measurements, compile durations and compile cache are dropped."""
        old = self.get("compile_mode")
        if old is None and "share" in self.d:  # written before --compile: shared graphs, or (--static-weight-shapes)
            old = "shared" if self["share"] else "dynamic-per-subnet"  # dynamic=True per sub-network
        if mode == "shared" and old == "static" and self.get("shared_graphs_error"):
            mode = "static"  # shared graphs failed in an earlier call, which went on with static ones
        if old is not None and old != mode:
            self["done"] = [p for p in self["done"] if p != "latency" and p.split("_")[0] != "grid"]
            for key in [k for k in self.d if k.startswith("grid_")]:  # other grids (fit_grid --grid)
                del self.d[key]
            self["grid"], self["checked"], self["measured"] = [], {}, {}
            self.d.pop("latency_memo", None)  # states written before the measurements' memo was "measured"
            self.d.pop("latency", None)
            drop = ("compile", "measure", "budget")
            self["durations"] = {k: v for k, v in self["durations"].items() if not k.startswith(drop)}
            (self.dir / "compile_cache.tar.xz").unlink(missing_ok=True)
            self.d.pop("compile_cache", None)
            change = {"from": old, "to": mode, "call": len(self["calls"])}
            self["compile_mode_changed"] = self.get("compile_mode_changed", []) + [change]
        self["compile_mode"], self["share"] = mode, mode == "shared"

    def check_device(self, device: str, refit: bool) -> None:
        """A state's latency model (phase 3) holds for the device it was measured on, and its
        measurements are reused on that device only: on another, refuse (the grid would plan with one
        device's latencies and measure on another) unless ``--refit-latency`` (phase 3 again, here)."""
        lat_dev = (self.get("latency") or {}).get("model", {}).get("device")
        if not self.done("latency") or lat_dev in (None, device):
            return
        if not refit:
            raise SystemExit(f"error: --state {str(self.dir)!r}: its latency model and measurements are from {lat_dev}, this "
                             f"call runs on {device}: run it on {lat_dev}, or give --refit-latency to fit phase 3 again here "
                             "(~150 s, and every candidate is measured again)")
        self["done"].remove("latency")
        self["refit_latency"] = self.get("refit_latency", []) + [{"from": lat_dev, "to": device, "call": len(self["calls"])}]
        self.d.pop("latency")

    # -- the elastic build ---------------------------------------------------------------------
    @property
    def elastic(self) -> Path:
        return self.dir / "elastic"

    def publish_build(self, build) -> dict:
        """Copy what the benchmark needs of the finished build ``build`` into ``elastic/``, the
        weights in bfloat16 (xz-compressed beside ``model/``); returns sizes in bytes."""
        import torch
        from safetensors.torch import load_file, save_file

        build, e = Path(build), self.elastic
        if e.exists():
            shutil.rmtree(e)
        (e / "model").mkdir(parents=True)
        for name in ELASTIC_FILES:
            if (build / name).is_file():
                shutil.copyfile(build / name, e / name)
        for f in (build / "model").iterdir():
            if f.is_file() and not f.name.endswith(".safetensors") and not f.name.endswith(".index.json"):
                shutil.copyfile(f, e / "model" / f.name)
        sd = {}
        for f in sorted((build / "model").glob("*.safetensors")):
            sd.update({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(f)).items()})
        raw = e / "model" / "model.safetensors"
        save_file(sd, str(raw), metadata={"format": "pt"})
        atomic_write_bytes(e / WEIGHTS_XZ, lzma.compress(raw.read_bytes(), preset=0))
        return {"weights_bf16_bytes": raw.stat().st_size, "weights_xz_bytes": (e / WEIGHTS_XZ).stat().st_size}

    def elastic_ready(self) -> Path:
        """``elastic/`` with ``model/model.safetensors`` (unpacked from the carried .xz when missing)."""
        e = self.elastic
        raw = e / "model" / "model.safetensors"
        if not raw.is_file():
            if not (e / WEIGHTS_XZ).is_file():
                raise FileNotFoundError(f"--state {str(self.dir)!r} says the build is done but has no {e / WEIGHTS_XZ}: "
                                        "they travel in the tar of the call that built them only; extract every "
                                        "later call's plan_state.tar over that folder")
            atomic_write_bytes(raw, lzma.decompress((e / WEIGHTS_XZ).read_bytes()))
        return e

    # -- the compile cache ---------------------------------------------------------------------
    def restore_compile_cache(self, cache_dir) -> int:
        """Unpack ``compile_cache.tar.xz`` into ``cache_dir``; its number of files (0: none carried)."""
        src = self.dir / "compile_cache.tar.xz"
        if not src.is_file():
            return 0
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with tarfile.open(src, "r:xz") as t:
            members = [m for m in t.getmembers() if m.isfile() or m.isdir()]
            t.extractall(cache_dir, members=members, filter="data")
        return sum(m.isfile() for m in members)

    def pack_compile_cache(self, cache_dir, max_bytes: int) -> dict:
        """Pack ``cache_dir`` into ``compile_cache.tar.xz`` when it compresses to at most
        ``max_bytes``; otherwise drop it (the record says so)."""
        dest = self.dir / "compile_cache.tar.xz"
        cache_dir = Path(cache_dir)
        files = [f for f in sorted(cache_dir.rglob("*")) if f.is_file() and not f.name.endswith(".lock")]
        raw = sum(f.stat().st_size for f in files)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz", preset=0) as t:
            for f in files:
                t.add(f, arcname=str(f.relative_to(cache_dir)))
        info = {"files": len(files), "raw_bytes": raw, "xz_bytes": buf.tell(), "max_bytes": max_bytes}
        if buf.tell() > max_bytes:
            dest.unlink(missing_ok=True)
            return info | {"kept": False, "why": f"{buf.tell()} bytes compressed > {max_bytes}: dropped"}
        atomic_write_bytes(dest, buf.getvalue())
        return info | {"kept": True}

    # -- the tar that travels --------------------------------------------------------------------
    def write_tar(self, out, part_bytes: int = PART_BYTES, weights: bool = True) -> list[Path]:
        """The state folder as ``out/plan_state.tar`` (members under the folder's name), split into
        ``.00``, ``.01``, ... parts of at most ``part_bytes`` when larger; the files written.
        ``weights=False`` leaves out ``elastic/model.safetensors.xz`` (unchanged since the call that
        built it: the tar is then extracted over the folder that call's tar made)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        skip = {self.elastic / "model" / "model.safetensors"}  # travels as model.safetensors.xz
        if not weights:
            skip.add(self.elastic / WEIGHTS_XZ)
        whole = out / (STATE_TAR + ".tmp")
        with tarfile.open(whole, "w", format=tarfile.PAX_FORMAT) as t:
            for f in sorted(self.dir.rglob("*")):
                if f.is_file() and f not in skip and ".tmp" not in f.name:  # atomic writes' leftovers
                    info = t.gettarinfo(str(f), arcname=str(Path(self.dir.name) / f.relative_to(self.dir)))
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    with open(f, "rb") as fh:
                        t.addfile(info, fh)
        for old in out.glob(STATE_TAR + ".[0-9][0-9]"):
            old.unlink()
        size = whole.stat().st_size
        if size <= part_bytes:
            os.replace(whole, out / STATE_TAR)
            return [out / STATE_TAR]
        (out / STATE_TAR).unlink(missing_ok=True)
        parts = []
        with open(whole, "rb") as src:
            for i in range((size + part_bytes - 1) // part_bytes):
                p = out / f"{STATE_TAR}.{i:02d}"
                atomic_write_bytes(p, src.read(part_bytes))
                parts.append(p)
        whole.unlink()
        return parts


def extract_state(parts, parent) -> Path:
    """Extract the tar written by :meth:`State.write_tar` (its file or its parts, in order) into
    ``parent``; returns the state folder."""
    parts = sorted(Path(p) for p in parts)
    if not parts:
        raise FileNotFoundError(f"parts={parts!r}: no {STATE_TAR} file given")
    data = b"".join(p.read_bytes() for p in parts)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
        top = {Path(m.name).parts[0] for m in t.getmembers()}
        t.extractall(parent, filter="data")
    if len(top) != 1:
        raise ValueError(f"{parts[0]} holds {sorted(top)}; one state folder expected")
    return Path(parent) / top.pop()


def reusable(measured: dict) -> bool:
    """Whether a recorded measurement is reused: not a CUDA peak taken before ``measure_candidate``
    collected an earlier candidate's garbage first (``baseline``; those peaks could read low)."""
    return measured.get("peak_kind") != "cuda_max_allocated" or measured.get("baseline") == "gc"


class Run:
    """One call of the benchmark: the state it resumes, the clock that guards it, the loaded model."""

    def __init__(self, a, st: State, clock: Clock, dev, out: Path, record):
        self.a, self.st, self.clock, self.dev, self.out = a, st, clock, dev, out
        self.record = record  # record(run): the results record so far
        self.call = st["calls"][-1]
        self.compiled: set = set()  # cache kinds compiled in this process (a new process compiles again)
        self.cuda_static = a.serve == "static" and dev.type == "cuda"
        self.warm_cache = False  # a compile cache of earlier calls was restored

    def est(self, key: str) -> float:
        """Seconds the guard expects ``key`` to take: the last recorded duration (+15%), else a default.
        ``compile:KIND``: a kind compiled by an earlier call, its cache restored, takes its recorded
        cached compile time (half its first one until there is one); a kind never compiled takes
        its own record, else the slowest compilation recorded, else the default."""
        d = self.st["durations"]
        if key.startswith("compile:"):
            kind = key.split(":", 1)[1]
            if self.warm_cache and key in d:
                return 1.15 * d.get(f"compile_warm:{kind}", 0.5 * d[key])
            cold = [v for k, v in d.items() if k.startswith("compile:")]
            if key not in d and cold:
                return 1.15 * max(cold)
        if key in d:
            return 1.15 * d[key]
        return (DEFAULT_S_CUDA if self.dev.type == "cuda" else DEFAULT_S_CPU).get(key.split(":")[0], 0.0)

    def phase(self, name: str, label: str, work):
        """Run phase ``name`` unless an earlier call finished it; guard, progress lines, record after it."""
        if self.st.done(name):
            self.clock.say(f"{label}: done in an earlier call, skipped")
            return
        self.clock.need(self.est(name), f"{label} not started")
        self.clock.say(f"{label}: start")
        self.call["phase"] = name
        t = time.perf_counter()
        work()
        dt = time.perf_counter() - t
        self.st["durations"][name] = dt
        self.call["phases_s"][name] = dt
        self.st.finish(name, dt)
        self.clock.say(f"{label}: end ({dt:.1f} s)")
        self.record(self)
        if self.a.stop_after == name:
            raise Stop(f"--stop-after {name}")

    def compile_key(self, c) -> str:
        """What one compilation serves: static shapes (default), one candidate (``c.label``); shared
        graphs (``--compile shared``), a cache kind (one KV group apart: compilers specialise size 1)."""
        if not self.st["share"]:
            return c.label
        return c.policy + ("/g1" if c.kv_groups == 1 else "")

    def measure(self, model, c, w):
        """The benchmark's one measurement function (latency model and every fit): guarded by the
        clock with the compile time of a graph not yet compiled in this process. A candidate already
        measured on this device (an earlier fit, budget or call: the same serving path, workload and
        weights) is not measured again: its measurement is reused (the call's ``reused`` counts it),
        unless :func:`reusable` says its peak predates the garbage collection (measured again)."""
        memo = self.st.d.setdefault("measured", {})
        hit = memo.get(c.label)
        if hit is not None and hit["device"] == self.call.get("device") and reusable(hit["measured"]):
            self.call["reused"] = self.call.get("reused", 0) + 1
            return dict(hit["measured"])
        key = self.compile_key(c)
        cold = self.cuda_static and key not in self.compiled
        est = self.est(f"compile:{key}" if cold else "measure")
        self.clock.need(est, f"measuring {c.label}" + (" (compiles)" if cold else ""))
        if cold:  # one line per compilation: a killed call still shows what it was compiling
            what = f"cache kind {key}" if self.st["share"] else "its static-shape graph"
            self.clock.say(f"measuring {c.label}: compiles {what} (expected <= {est:.0f} s)")
        t = time.perf_counter()
        import anybudget.plan as P  # looked up at each call (tests replace measure_candidate)

        m = P.measure_candidate(model, c, w, serve=self.a.serve, share_graphs=self.st["share"])
        dt = time.perf_counter() - t
        if m.get("timed_compiles"):  # compiled inside the timed runs: its step time includes compiling
            self.call.setdefault("timed_compiles", []).append({"label": c.label, "frames": m["timed_compiles"]})
        if cold:
            self.compiled.add(key)
            warm = self.warm_cache and f"compile:{key}" in self.st["durations"]
            self.st["durations"][f"compile_warm:{key}" if warm else f"compile:{key}"] = dt
            self.call["compile_s"][key] = dt
            self.clock.say(f"measured {c.label}: {dt:.1f} s with the compilation{' (cache restored)' if warm else ''}")
        elif float(m.get("warmup_s") or 0.0) > 30.0:  # compiled again, unexpectedly: noted, not an estimate
            self.call.setdefault("recompiles", []).append({"label": c.label, "seconds": dt})
        else:
            self.st["durations"]["measure"] = max(dt, self.st["durations"].get("measure", 0.0))
        memo[c.label] = {"device": self.call.get("device"), "measured": m}
        self.st.save()  # a call stopped later still has it
        return m


# Defaults for what no call recorded yet (CUDA: H200, reference LM, fit_grid's workload; build 138 s and
# quality 13 s in call 1; COMPILE_S: one static-shape compilation + its measurement, fit_grid's doc)
COMPILE_S = 60.0
DEFAULT_S_CUDA = {"build": 150.0, "quality": 30.0, "latency": COMPILE_S, "compile": COMPILE_S, "measure": 20.0,
                  "check": 20.0, "budget": 20.0}
DEFAULT_S_CPU = {"build": 60.0, "quality": 30.0, "latency": 10.0, "compile": 0.0, "measure": 2.0, "check": 2.0}
