"""Where a compiled ``generate`` decoding step's time goes: profiler counts per decoding step.

``serving.py --profile`` runs one short extra ``generate`` per row with a logits processor
(:class:`ProfileSteps`) that starts ``torch.profiler`` after the ``start``-th token and stops it
after the ``stop``-th, so that only whole decoding steps are profiled (no prefill). Per step it
reports:

- ``gpu_kernel_ms``: the GPU busy time (sum of the device kernels and copies), against
  ``wall_ms`` (the step with the profiler on): a step far longer than its kernels is host-bound;
- ``graph_launches``: ``cudaGraphLaunch`` calls (CUDA-graph replays: 1 for a step that replays one
  graph), ``kernel_launches``: host kernel launches (``cudaLaunchKernel*`` / ``cuLaunchKernel*``:
  0 when the step is all replay), ``captures``: ``cudaStreamBeginCapture`` calls (> 0: the step
  was re-recorded);
- ``op_calls``: host calls of each ``anybudget::`` custom op (the Triton decode op: 0 when its
  launches are replayed from a CUDA graph, one per layer when the op runs on the host, i.e. the
  step or the op's part of it runs outside a graph);
- ``top_kernels``: the device kernels by time.

:func:`cudagraph_tree_counts` reads inductor's CUDA-graph tree manager (graphs recorded, warm-up
nodes, re-recordings) as a cross-check. On the CPU (``--smoke``) the CUDA counts are 0 and
``op_calls`` counts the op's calls (compiled with the eager backend it runs every step).
"""

from __future__ import annotations

import re
import time

import torch

__all__ = ["ProfileSteps", "counts_delta", "cudagraph_tree_counts", "profile_calls", "summarize_profile"]

LAUNCH_APIS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
GRAPH_APIS = ("cudaGraphLaunch",)
CAPTURE_APIS = ("cudaStreamBeginCapture",)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class ProfileSteps:
    """A logits processor that profiles decoding steps ``start`` .. ``stop`` - 1 of one generate call
    (the processor runs once per generated token; its first call follows the prompt's forward)."""

    def __init__(self, start: int = 3, stop: int = 9):
        if not 1 <= start < stop:
            raise ValueError(f"need 1 <= start < stop, got start={start}, stop={stop}")
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.prof = profile(activities=acts)
        self.start, self.stop, self.calls = start, stop, 0
        self.t0 = self.t1 = None

    @property
    def steps(self) -> int:
        return self.stop - self.start

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls == self.start:
            _sync()
            self.prof.start()
            self.t0 = time.perf_counter()
        elif self.calls == self.stop:
            _sync()
            self.t1 = time.perf_counter()
            self.prof.stop()
        return scores

    def done(self) -> bool:
        return self.t1 is not None


def summarize_profile(ps: ProfileSteps, top: int = 10) -> dict:
    """Per-step counts of a finished :class:`ProfileSteps` (see the module doc)."""
    if not ps.done():
        raise RuntimeError(f"the profiled generate stopped after {ps.calls} tokens; it needs {ps.stop}")
    return _summary(ps.prof, ps.steps, ps.t1 - ps.t0, top)


def profile_calls(fn, n: int = 3, top: int = 10) -> dict:
    """The same per-call counts for ``n`` calls of ``fn`` (e.g. a compiled decoding step)."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    _sync()
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync()
        t1 = time.perf_counter()
    return _summary(prof, n, t1 - t0, top)


def _summary(prof, n: int, seconds: float, top: int) -> dict:
    api, ops, kernels = {}, {}, []
    gpu_us = 0.0
    for e in prof.key_averages():
        dev = e.device_type.name
        if dev == "CUDA":
            if e.device_time_total:
                gpu_us += e.device_time_total
                kernels.append({"kernel": e.key[:120], "calls_per_step": e.count / n,
                                "us_per_step": e.device_time_total / n})
            continue
        if e.key in LAUNCH_APIS + GRAPH_APIS + CAPTURE_APIS:
            api[e.key] = api.get(e.key, 0) + e.count
        elif e.key.startswith("anybudget::"):
            ops[e.key] = ops.get(e.key, 0) + e.count / n
    kernels.sort(key=lambda r: -r["us_per_step"])
    return {
        "steps": n,
        "wall_ms": seconds * 1e3 / n,
        "gpu_kernel_ms": gpu_us / 1e3 / n,
        "graph_launches": sum(api.get(k, 0) for k in GRAPH_APIS) / n,
        "kernel_launches": sum(api.get(k, 0) for k in LAUNCH_APIS) / n,
        "captures": sum(api.get(k, 0) for k in CAPTURE_APIS) / n,
        "op_calls": ops,
        "top_kernels": kernels[:top],
    }


def _count(it) -> int | None:
    """The next value of an ``itertools.count`` without advancing it (from its repr)."""
    m = re.match(r"count\((-?\d+)", repr(it))
    return int(m.group(1)) if m else None


def cudagraph_tree_counts() -> dict | None:
    """Inductor's CUDA-graph tree manager of the current device: graphs recorded (``graphs``),
    warm-up nodes (``warmups``), recordings begun (``recordings``), re-recordings per function.
    None where there is none (CPU, or nothing compiled with CUDA graphs). Private torch state:
    read defensively, any missing attribute gives None for its field."""
    if not torch.cuda.is_available():
        return None
    try:
        from torch._inductor import cudagraph_trees as ct

        mgr = ct.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    except Exception:  # noqa: BLE001 - private API: absent or changed
        return None
    if mgr is None:
        return None
    graphs = _count(getattr(mgr, "graph_counter", None))
    warm = _count(getattr(mgr, "warmup_node_counter", None))
    rerec = getattr(mgr, "num_rerecord", {})
    try:
        rerecords = sum(sum(d.values()) for d in rerec.values())
    except Exception:  # noqa: BLE001
        rerecords = None
    return {"graphs": graphs, "warmups": None if warm is None else -warm - 1,
            "recordings": getattr(mgr, "debug_fail_counter", None), "rerecords": rerecords,
            "functions": len(getattr(mgr, "ids_to_funcs", {}) or {})}


def counts_delta(before: dict | None, after: dict | None) -> dict | None:
    """``after - before`` for the numeric fields of two :func:`cudagraph_tree_counts`."""
    if before is None or after is None:
        return after
    return {k: (after[k] - before[k] if isinstance(after.get(k), int) and isinstance(before.get(k), int)
                else after.get(k)) for k in after}
