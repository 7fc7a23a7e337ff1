"""Shared test set-up.

Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter: the variable must be
set before triton is first imported, so it is set here, before any test module loads.
"""
import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=["cuda", "triton"])
def gpu_backend(request):
    """For what only a GPU shows: each GPU backend in turn serves the CUDA dispatch key (the ops,
    the API and autograd), on CUDA tensors. Skips without a GPU."""
    import anm_fast  # after TRITON_INTERPRET is settled above

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    name = request.param
    if name == "cuda" and not anm_fast.has_cuda_kernels():
        pytest.skip("anm_fast was built without CUDA kernels")
    if name == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    previous = anm_fast.get_backend()
    assert anm_fast.set_backend(name) == name
    yield name
    anm_fast.set_backend(previous)
