"""What the compiled extension says about its CUDA code (csrc/cuda/build_info_cuda.cu), and the
CUDA kernel registration: whenever the extension was built with its CUDA sources, every op must
have a compiled CUDA kernel, and a CUDA toolkit at build time must have led to such a build.
Without a CUDA build these skip; the GPU-only parts skip without a GPU."""
import ctypes
import os

import pytest
import torch

import anm_fast
from anm_fast._ops import FUSED_CPU_OPS, OP_NAMES
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


def test_build_flag_agrees_with_marker():
    flag = getattr(torch.ops.anm_fast, "_built_with_cuda", None)
    if not anm_fast.has_extension() or flag is None:
        pytest.skip("no compiled extension, or one without the _built_with_cuda op")
    assert bool(flag()) == _cuda_build()


def compiled_cuda_kernel(op: str) -> bool:
    """A C++ kernel from csrc/cuda is registered for the op's CUDA key (active, or shadowed by a
    Python backend override)."""
    dump = torch._C._dispatch_dump(f"anm_fast::{op}")
    return any(line.startswith("CUDA") and "csrc/cuda/" in line for line in dump.splitlines())


def test_cuda_build_registers_every_op():
    if not anm_fast.has_extension():
        pytest.skip("the compiled extension is not loaded")
    if not _cuda_build():
        pytest.skip("the extension was built without its CUDA sources")
    missing = [op for op in OP_NAMES + FUSED_CPU_OPS if not compiled_cuda_kernel(op)]
    assert not missing, f"CUDA build without CUDA kernels for: {missing}"
    for op in OP_NAMES + FUSED_CPU_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"anm_fast::{op}", "CUDA")
    assert anm_fast.backend._compiled_cuda_available()
    assert "cuda" in anm_fast.backend.available_backends()


def _nvcc():
    from torch.utils import cpp_extension
    for home in (cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def test_cuda_toolkit_present_means_cuda_build():
    if not anm_fast.has_extension():
        pytest.skip("the compiled extension is not loaded")
    if os.environ.get("ANM_FAST_SKIP_CUDA", "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.skip("ANM_FAST_SKIP_CUDA is set")
    if torch.version.cuda is None:
        pytest.skip("this torch has no CUDA support")
    if _nvcc() is None:
        pytest.skip("no CUDA toolkit (nvcc) found")
    assert _cuda_build(), (
        "a CUDA toolkit is present but the loaded anm_fast._C has no CUDA kernels: rebuild with "
        "`CUDA_HOME=/usr/local/cuda pip install --no-build-isolation -e .`")
