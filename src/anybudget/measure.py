"""What a budget is measured in: latency of a call, peak device memory, model and file size.

``device_record()`` is the provenance every benchmark JSON carries (GPU, driver, versions,
git commit, date), so a number can always be traced to the machine and code that produced it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["default_device", "Timing", "latency", "host_time", "kernel_times", "peak_memory", "model_bytes", "file_size",
           "device_record"]


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of repeated calls, in seconds."""

    times_s: tuple[float, ...]
    device: str
    warmup: int
    result: Any = field(default=None, repr=False, compare=False)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    def as_dict(self) -> dict:
        return {
            "median_s": self.median_s,
            "mean_s": self.mean_s,
            "min_s": self.min_s,
            "repeat": len(self.times_s),
            "warmup": self.warmup,
            "device": self.device,
        }


def default_device(device: Any = None) -> str:
    """``device`` as a string when given, else ``"cuda"`` when a CUDA device is usable, else ``"cpu"``.

    The one place every command and library entry point picks its default device.
    """
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_count(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


def latency(
    fn: Callable[..., Any],
    *args,
    warmup: int = 3,
    repeat: int = 20,
    device: str | None = None,
    **kwargs,
) -> Timing:
    """Time ``fn(*args, **kwargs)``: ``warmup`` untimed calls, then ``repeat`` timed ones.

    On CUDA (``device="cuda"``, or auto-detected when CUDA is available and ``device`` is None)
    each call is bracketed by CUDA events, so asynchronous kernels are timed, not just launched;
    otherwise ``time.perf_counter``. Report ``median_s``: robust to the odd slow call.
    """
    _check_count("warmup", warmup, 0)
    _check_count("repeat", repeat, 1)
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    use_cuda = False
    if device is None or str(device).startswith("cuda"):
        try:
            import torch

            use_cuda = torch.cuda.is_available()
        except ImportError:
            use_cuda = False
        if device is not None and str(device).startswith("cuda") and not use_cuda:
            raise RuntimeError(f"device={device!r} was asked for but CUDA is not available")
    result = None
    for _ in range(warmup):
        result = fn(*args, **kwargs)
    times: list[float] = []
    if use_cuda:
        import torch

        torch.cuda.synchronize()
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn(*args, **kwargs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        dev = torch.cuda.get_device_name()
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            times.append(time.perf_counter() - t0)
        dev = "cpu"
    return Timing(tuple(times), dev, warmup, result)


def _cuda_sync() -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def kernel_times(fn: Callable[[], Any], steps: int = 3, top: int = 16) -> tuple[list[dict], float, float]:
    """Kernels of ``steps`` calls of ``fn`` under the profiler: the ``top`` ones by time (``kernel``
    name, ``calls_per_step``, ``us_per_step``), and the total kernel microseconds and kernel count
    per call. On CUDA the device kernels (GPU busy time without the host gaps between calls);
    on the CPU the operators' self time."""
    _check_count("steps", steps, 1)
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        if cuda and e.device_type.name != "CUDA":
            continue
        t = e.device_time_total if cuda else e.self_cpu_time_total
        if t:
            rows.append({"kernel": e.key[:120], "calls_per_step": e.count / steps, "us_per_step": t / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows[:top], sum(r["us_per_step"] for r in rows), sum(r["calls_per_step"] for r in rows)


def host_time(fn: Callable[..., Any], *args, warmup: int = 5, repeat: int = 100, **kwargs) -> float:
    """Host seconds per call of ``fn(*args, **kwargs)``: the calls are queued back to back and the
    clock stops before waiting for the GPU, so this is the launch cost a host-bound loop (a
    small-batch decoding step) pays per call, not the GPU time (use :func:`latency` for that)."""
    _check_count("warmup", warmup, 0)
    _check_count("repeat", repeat, 1)
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    for _ in range(warmup):
        fn(*args, **kwargs)
    _cuda_sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(*args, **kwargs)
    t = (time.perf_counter() - t0) / repeat
    _cuda_sync()
    return t


def peak_memory(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, int | None]:
    """Run ``fn`` once and return ``(result, peak_bytes)``.

    ``peak_bytes`` is the peak CUDA memory allocated by PyTorch during the call *above what was
    already allocated before it* (so it measures the call, not the weights already resident).
    On a machine without CUDA it is ``None``: CPU peak memory is not measured reliably in-process.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    try:
        import torch
    except ImportError:
        return fn(*args, **kwargs), None
    if not torch.cuda.is_available():
        return fn(*args, **kwargs), None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn(*args, **kwargs)
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - base


def model_bytes(model, *, buffers: bool = True) -> int:
    """Bytes of a module's parameters (and buffers), counting each shared tensor once."""
    try:
        params = list(model.parameters())
    except AttributeError:
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}") from None
    tensors = params + (list(model.buffers()) if buffers else [])
    seen: set[int] = set()
    total = 0
    for t in tensors:
        key = t.data_ptr() if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def file_size(path: str | os.PathLike) -> int:
    """Size in bytes of a file, or of all files under a folder."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raise FileNotFoundError(f"path={str(p)!r} does not exist")


def _git_commit() -> str | None:
    # A copy of the tree on another machine (the GPU box) may carry a stale .git: the environment
    # variable, when set, names the commit that was copied and wins.
    if os.environ.get("ANYBUDGET_COMMIT"):
        return os.environ["ANYBUDGET_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return os.environ.get("ANYBUDGET_COMMIT")
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("ANYBUDGET_COMMIT")


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def device_record() -> dict:
    """GPU name, driver, CUDA, versions of torch/transformers/triton, git commit, date, host CPU."""
    rec: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": None,
        "transformers": _version("transformers"),
        "triton": _version("triton"),
        "anybudget": _version("anybudget"),
        "gpu": None,
        "gpu_count": 0,
        "driver": None,
        "cuda": None,
    }
    try:
        import torch

        rec["torch"] = torch.__version__
        if torch.cuda.is_available():
            rec["gpu"] = torch.cuda.get_device_name()
            rec["gpu_count"] = torch.cuda.device_count()
            rec["cuda"] = torch.version.cuda
            rec["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    except ImportError:
        pass
    if rec["gpu"]:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            )
            if out.returncode == 0:
                rec["driver"] = out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return rec
