import os

import pytest
from kv_helpers import FAMILIES, GPU_TEST_SECONDS, time_limit, tiny_model


@pytest.fixture(params=FAMILIES)
def family_model(request):
    return tiny_model(request.param)


@pytest.fixture(autouse=True)
def _gpu_test_time_limit(request):
    """Every gpu-marked kv test is bounded (``ANYBUDGET_GPU_TEST_S``, default 240 s): one that
    compiles too long or hangs fails with a TimeoutError and its traceback, and the session goes on
    to the next test and prints its report (an outer ``timeout`` that kills pytest prints none)."""
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    seconds = float(os.environ.get("ANYBUDGET_GPU_TEST_S", GPU_TEST_SECONDS))
    with time_limit(seconds, request.node.nodeid):
        yield
