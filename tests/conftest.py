"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Small tensors: one intra-op thread is faster and immune to a busy machine (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
