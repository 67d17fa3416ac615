import pytest


@pytest.fixture
def tmp_world(tmp_path):
    return tmp_path
