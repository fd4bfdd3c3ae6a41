"""Shared test settings.

Unit tests run on one torch thread: on a small shared machine, extra OpenMP threads that wait for a
busy core make small 3D convolutions many times slower, and timings noisy.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
