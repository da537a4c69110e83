import pytest
import torch

# One thread: on a shared 2-core machine small CPU models run several times faster and steadier.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    torch.manual_seed(0)
    yield
