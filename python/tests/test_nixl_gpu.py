"""ferry.nixl with CUDA torch tensors ("VRAM"): NIXL's two-peer flow between two processes on the GPU (nixl_torch.py),
every byte checked on the host.

Skipped unless the module has CUDA, a GPU is usable and torch sees it.
"""

import pytest

import nixl_torch


@pytest.fixture(scope="module")
def gpu(cuda):
    """torch, where it sees the GPU that the cuda fixture (conftest.py) found usable."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no GPU")
    return torch


@pytest.mark.parametrize("prog_thread", [False, True])
def test_cuda_tensors_write_notify_and_read(gpu, prog_thread):
    nixl_torch.run(gpu, prog_thread, "cuda")
