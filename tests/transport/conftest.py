import pytest
from grpc_helpers import Pki


@pytest.fixture(scope="session")
def net_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One throw-away network CA (and a foreign one) shared by the transport tests."""
    return Pki(tmp_path_factory.mktemp("pki"))
