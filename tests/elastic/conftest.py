import pytest
from elastic_helpers import FAMILIES


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
