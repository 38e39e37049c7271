import pytest
from splat_helpers import orbit_cameras, random_scene


@pytest.fixture
def scene():
    return random_scene()


@pytest.fixture
def cams():
    return orbit_cameras()
