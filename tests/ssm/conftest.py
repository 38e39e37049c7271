import pytest
from ssm_helpers import scan_inputs


@pytest.fixture
def inputs():
    return scan_inputs()
