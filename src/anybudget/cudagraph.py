"""CUDA graphs: warm a step up on a side stream, capture one call, replay it.

One helper for the captured loops of the library and the benchmarks (``kv.decode_loop``,
``ssm.fast_step``, ``benchmarks/kv/decode_step.py``, ``benchmarks/prune/speed24.py``): the warm-up compiles kernels (Triton, torch.compile) and
settles the caching allocator off the capture, as ``torch.cuda.graphs`` requires.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["capture"]


def capture(fn: Callable[[], object], *, warmup: int = 2, pool=None) -> torch.cuda.CUDAGraph:
    """Call ``fn()`` ``warmup`` times on a side stream, then capture one call in a CUDA graph.

    Returns the graph: ``graph.replay()`` runs the captured kernels again on the same tensors
    (``fn`` must read its inputs from, and write its results to, tensors whose addresses stay).
    The warm-up calls run for real, so a step that changes state has advanced ``warmup`` times
    when this returns; the capture itself runs nothing. ``pool``: a memory pool shared with other
    graphs that never run at the same time (``torch.cuda.graph_pool_handle()``).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("capture() needs CUDA (torch.cuda.is_available() is False); call the step eagerly instead")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} is out of range; it must be an integer >= 0")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph
