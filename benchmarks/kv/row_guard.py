"""Time guard of ``serving.py``: which rows fit the run's wall-clock budget, and a cap on a row's
compile warm-up, so that a row that cannot run in the call is skipped with a note in the record
instead of being lost to the call's time limit.

A row's first batch compiles the decoding step (inductor + CUDA-graph recording): on an H200 this
took 121-255 s per row for the 1.35B serving model, depending on how busy the host's CPUs were
(``kv_serving_runs/run7_*``, ``run8_*``), while the timed part of a row takes a few seconds. The
guard predicts a row's first batch as a compile as long as the longest one seen so far in the run
(at least ``compile_s``) plus ``timed_s``; later batches of a row from its last batch's cost. A
warm-up still running when the budget is spent is interrupted (``warmup_limit``): the row is
listed as skipped with the seconds it had compiled for, and the run goes on to save its record.
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["WarmupCapped", "alarm", "estimate_s", "warmup_limit"]


class WarmupCapped(BaseException):
    """A row's compile warm-up ran past its cap (a ``BaseException``, like ``KeyboardInterrupt``, so
    that no ``except Exception`` inside the compiler turns it into a fallback)."""


def estimate_s(prev: tuple[int, float] | None, batch: int, warmups: list[float], compile_s: float,
               timed_s: float) -> float:
    """Expected seconds of one (row, prompt, batch) job. ``prev``: (batch, seconds without warm-up)
    of the same row and prompt's last batch (its step is compiled: scaled by batch); else a first
    batch: the longest warm-up of this run (at least ``compile_s``) plus ``timed_s``."""
    if batch < 1:
        raise ValueError(f"batch={batch}: must be >= 1")
    if prev is not None:
        return prev[1] * batch / prev[0]
    return max([compile_s, *warmups]) + timed_s


@contextlib.contextmanager
def alarm(seconds: float, expired):
    """Raise ``expired()`` in the block once it has run ``seconds`` (SIGALRM, so the main thread
    only; elsewhere, or without SIGALRM, the block runs unbounded). If the signal lands where Python
    cannot raise (a gc callback or ``__del__``: the exception is "ignored"), the block runs on and
    ``expired()`` is raised when it ends. Shared with the kv GPU tests'
    per-test time limit (tests/kv/kv_helpers.py)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    fired = []

    def expire(signum, frame):
        fired.append(True)
        raise expired()

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if fired:  # the signal landed where Python swallows exceptions (a gc callback, a __del__): raise at the end
        raise expired()


@contextlib.contextmanager
def warmup_limit(seconds: float | None):
    """Raise :class:`WarmupCapped` in the block once it has run ``seconds`` (see :func:`alarm`; with
    ``None`` the block is not bounded). The compile it interrupts leaves no compiled graph behind; a
    later call of the same function compiles again."""
    if seconds is None:
        yield
        return
    if seconds <= 0:
        raise WarmupCapped(f"no time left for a warm-up ({seconds:.0f} s)")
    with alarm(seconds, lambda: WarmupCapped(f"compile warm-up ran past its cap of {seconds:.0f} s")):
        yield
