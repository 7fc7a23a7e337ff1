"""The backend switch: which implementation serves CUDA tensors (anm_fast/backend.py).

These tests need no GPU: they check the choice, the errors and the fallbacks, and that the CUDA
dispatch key is filled whatever the choice.
"""
import os
import subprocess
import sys
import warnings

import pytest
import torch

import anm_fast
from anm_fast import backend

OPS = ("activation_peaks", "sample_boxes", "erase_and_modulate", "erase_and_modulate_backward")


@pytest.fixture(autouse=True)
def restore_backend():
    # Autouse, so set up before (and torn down after) monkeypatch: the restore sees the real state.
    before = backend._state["requested"]
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend.set_backend(before, fallback=True)


def cuda_key_filled():
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"anm_fast::{op}", "CUDA")
               for op in OPS)


def hide_triton(monkeypatch):
    """Make this process behave as if triton were not installed."""
    monkeypatch.setitem(backend._state, "triton", None)
    monkeypatch.setitem(backend._state, "triton_error", "ImportError: No module named 'triton'")


def test_default_is_the_best_available():
    available = backend.available_backends()
    assert available[-1] == "reference"
    assert backend.set_backend("auto") == available[0] == anm_fast.get_backend()
    expected = "cuda" if anm_fast.has_extension() and backend._state["compiled_cuda"] else None
    if expected is None:
        expected = "triton" if "triton" in available else "reference"
    assert available[0] == expected
    assert cuda_key_filled()


@pytest.mark.parametrize("bad", ["bogus", "", "CUDA-fast", None, 3])
def test_invalid_names_raise_value_error_and_keep_the_backend(bad):
    before = anm_fast.get_backend()
    with pytest.raises(ValueError, match="backend must be one of"):
        anm_fast.set_backend(bad)
    assert anm_fast.get_backend() == before


def test_reference_backend_and_names_are_case_insensitive():
    assert anm_fast.set_backend(" Reference ") == "reference"
    assert anm_fast.get_backend() == "reference"
    assert cuda_key_filled()


def test_switching_back_and_forth():
    for name in backend.available_backends() + ("auto", "reference"):
        active = anm_fast.set_backend(name)
        assert active == anm_fast.get_backend()
        assert active in backend.available_backends()
        assert cuda_key_filled()


def test_compiled_cuda_missing_raises_or_falls_back():
    if "cuda" in backend.available_backends():
        pytest.skip("this build has compiled CUDA kernels")
    with pytest.raises(RuntimeError, match="backend 'cuda' needs the compiled CUDA kernels"):
        anm_fast.set_backend("cuda")
    with pytest.warns(RuntimeWarning, match="Falling back to"):
        active = anm_fast.set_backend("cuda", fallback=True)
    assert active == backend.available_backends()[0] == anm_fast.get_backend()


def test_triton_missing_raises_or_falls_back(monkeypatch):
    hide_triton(monkeypatch)
    assert "triton" not in backend.available_backends()
    with pytest.raises(RuntimeError, match="backend 'triton' needs the triton package"):
        anm_fast.set_backend("triton")
    with pytest.warns(RuntimeWarning, match="Falling back to"):
        active = anm_fast.set_backend("triton", fallback=True)
    assert active != "triton" and active == anm_fast.get_backend()
    assert anm_fast.set_backend("auto") != "triton"
    assert cuda_key_filled()


def test_triton_backend_when_installed():
    pytest.importorskip("triton")
    assert anm_fast.set_backend("triton") == "triton"
    assert cuda_key_filled()


def test_lazy_triton_impl_falls_back_to_reference(monkeypatch):
    # "auto" picks triton without importing it; if the import then fails on the first CUDA call,
    # the reference serves the call and a warning says why.
    hide_triton(monkeypatch)
    monkeypatch.setitem(backend._state, "warned_triton", False)
    impl = backend._lazy_triton("sample_boxes")
    args = (torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), torch.tensor([0.5]),
            torch.tensor([0]), torch.tensor(1), 8, 8, 3, 0.02, 0.07, 0.03, 0.8, 0.5, True, True,
            torch.zeros(3))
    with pytest.warns(RuntimeWarning, match="triton could not be imported"):
        got = impl(*args)
    for g, w in zip(got, anm_fast.reference.sample_boxes(*args)):
        assert torch.equal(g, w)


def test_install_reads_the_environment(monkeypatch):
    monkeypatch.setenv("ANM_FAST_BACKEND", "reference")
    backend.install()
    assert anm_fast.get_backend() == "reference"
    monkeypatch.setenv("ANM_FAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="ANM_FAST_BACKEND"):
        backend.install()
    hide_triton(monkeypatch)
    monkeypatch.setenv("ANM_FAST_BACKEND", "triton")
    with pytest.warns(RuntimeWarning, match="Falling back"):
        backend.install()  # an unavailable choice never breaks `import anm_fast`
    assert anm_fast.get_backend() != "triton"


def test_environment_variable_at_import():
    env = dict(os.environ, ANM_FAST_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", "import anm_fast; print(anm_fast.get_backend())"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "reference"
