import os
import time

import pytest
from kv_helpers import FAMILIES, GPU_TEST_SECONDS, time_limit, tiny_model


@pytest.fixture(params=FAMILIES)
def family_model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def _gpu_session_deadline():
    """``ANYBUDGET_GPU_SESSION_S``: seconds all gpu-marked kv tests of the session may take together
    (unset: no session bound); once spent, the remaining ones are skipped, naming the budget."""
    seconds = os.environ.get("ANYBUDGET_GPU_SESSION_S")
    return None if not seconds else time.monotonic() + float(seconds)


@pytest.fixture(autouse=True)
def _gpu_test_time_limit(request):
    """Every gpu-marked kv test is bounded (``ANYBUDGET_GPU_TEST_S``, default 240 s, and what is left
    of ``ANYBUDGET_GPU_SESSION_S``): one that compiles too long or hangs fails with a TimeoutError
    and its traceback, and the session goes on and prints its report (an outer ``timeout`` that
    kills pytest prints none)."""
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    seconds = float(os.environ.get("ANYBUDGET_GPU_TEST_S", GPU_TEST_SECONDS))
    deadline = request.getfixturevalue("_gpu_session_deadline")
    if deadline is not None:
        left = deadline - time.monotonic()
        if left < 5:
            pytest.skip(f"ANYBUDGET_GPU_SESSION_S={os.environ['ANYBUDGET_GPU_SESSION_S']} spent")
        seconds = min(seconds, left)
    with time_limit(seconds, request.node.nodeid):
        yield
