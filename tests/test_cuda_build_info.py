"""What the compiled extension says about its CUDA code (csrc/cuda/build_info_cuda.cu), and the
fused op's CUDA kernel registration. Without a CUDA build these skip; the GPU-only parts skip
without a GPU."""
import ctypes

import pytest
import torch

import anm_fast
from anm_fast.config import BoxParams


def _cuda_build() -> bool:
    if not anm_fast.has_extension():
        return False
    import anm_fast._C as ext
    try:
        ctypes.c_char.in_dll(ctypes.CDLL(ext.__file__), "anm_fast_cuda_build")
    except ValueError:
        return False
    return True


cuda_build = pytest.mark.skipif(not _cuda_build(), reason="extension built without CUDA sources")


@cuda_build
def test_archs_are_reported():
    archs = torch.ops.anm_fast._cuda_archs()
    assert archs, "a CUDA build must name the architectures it holds code for"
    assert all(a.isdigit() and int(a) >= 50 for a in archs.split(",")), archs


@cuda_build
def test_anm_mask_has_a_compiled_cuda_kernel():
    dump = torch._C._dispatch_dump("anm_fast::anm_mask")
    assert any(line.startswith("CUDA") and "csrc/cuda/" in line for line in dump.splitlines())


@cuda_build
def test_runs_on_refuses_a_device_that_does_not_exist():
    assert torch.ops.anm_fast._cuda_runs_on(-1) is False
    assert torch.ops.anm_fast._cuda_runs_on(1 << 20) is False


@cuda_build
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_the_visible_gpu_and_the_fused_op_runs():
    assert torch.ops.anm_fast._cuda_runs_on(torch.cuda.current_device())
    x = torch.randn(4, 3, 16, 16, device="cuda")
    fmap = torch.randn(4, 8, 4, 4, device="cuda")
    t = torch.softmax(torch.randn(4, 5, device="cuda"), 1)
    args = (x, fmap, t, torch.rand(4, device="cuda"), torch.arange(4, device="cuda"),
            torch.tensor(3), 0.0, BoxParams(0.02, 0.5, 0.3, 0.5, 1.0, True, True).pack(),
            torch.zeros(3), 1.0, True)
    got = torch.ops.anm_fast.anm_mask(*args)
    want = torch.ops.anm_fast.anm_mask(*(a.cpu() if isinstance(a, torch.Tensor) else a
                                         for a in args))
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w)
