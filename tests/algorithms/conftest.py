import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests use tiny tensors: intra-op threads only add contention (10x+ on a busy CI)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
