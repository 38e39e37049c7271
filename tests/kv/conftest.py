import pytest
from kv_helpers import FAMILIES, tiny_model


@pytest.fixture(params=FAMILIES)
def family_model(request):
    return tiny_model(request.param)
