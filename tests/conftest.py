"""Shared test set-up.

Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter: the variable must be
set before triton is first imported, so it is set here, before any test module loads.
"""
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
