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


# ------------------------------------------------------- "auto" from measurements on a GPU model
def fake_measurements(monkeypatch, table, available=("cuda", "triton", "reference")):
    monkeypatch.setitem(backend._state, "measured", dict(table))
    monkeypatch.setattr(backend, "available_backends", lambda: tuple(available))


def test_auto_takes_the_measured_winner_of_this_gpu_model(monkeypatch):
    fake_measurements(monkeypatch, {"NVIDIA H100 80GB HBM3": "triton"})
    assert backend.auto_choice("NVIDIA H100 80GB HBM3") == "triton"
    assert backend.auto_choice("NVIDIA A100-SXM4-40GB") == "cuda"  # not measured: default order
    assert backend.auto_choice(None) == "cuda"
    # a measured winner this installation cannot provide is not taken
    fake_measurements(monkeypatch, {"NVIDIA H100 80GB HBM3": "cuda"},
                      available=("triton", "reference"))
    assert backend.auto_choice("NVIDIA H100 80GB HBM3") == "triton"


def test_auto_decides_on_the_first_cuda_call_only_when_a_measurement_could_matter(monkeypatch):
    installed = []
    monkeypatch.setattr(backend, "_install_override", lambda active: installed.append(active))
    monkeypatch.setattr(backend, "_unavailable_reason", lambda name: None)
    fake_measurements(monkeypatch, {"Some GPU": "cuda"})  # the default anyway: decide now
    assert backend.set_backend("auto") == "cuda" and installed[-1] == "cuda"
    assert backend._state["pending_auto"] is False
    fake_measurements(monkeypatch, {"Some GPU": "triton"})
    assert backend.set_backend("auto") == "cuda"  # provisional until the GPU is known
    assert installed[-1] == "pending-auto" and backend._state["pending_auto"] is True
    monkeypatch.setattr(backend, "_gpu_name", lambda: "Some GPU")
    assert backend._settle_auto() == "triton"  # what the first CUDA call runs
    assert installed[-1] == "triton" and backend._state["pending_auto"] is False
    assert backend._settle_auto() == "triton"  # settled once
    assert installed.count("triton") == 1
    backend._state["pending_auto"] = False


def test_a_damaged_measurements_file_warns_and_changes_nothing(monkeypatch, tmp_path):
    bad = tmp_path / "measured_backends.json"
    bad.write_text("{ not json")
    monkeypatch.setattr(backend, "MEASURED_FILE", str(bad))
    monkeypatch.setitem(backend._state, "measured", None)
    with pytest.warns(RuntimeWarning, match="ignoring"):
        assert backend.measured_choices() == {}
    monkeypatch.setitem(backend._state, "measured", None)
    bad.write_text('{"version": 1, "gpus": {"X": {"faster": "opencl"}, "Y": {"faster": "triton"}}}')
    assert backend.measured_choices() == {"Y": "triton"}  # unknown backends are skipped


def test_the_shipped_measurements_file_is_valid():
    import json

    with open(backend.MEASURED_FILE) as f:
        data = json.load(f)
    assert data["version"] == 1
    for gpu, entry in data["gpus"].items():
        assert entry["faster"] in ("cuda", "triton") and entry["pairs"] > 0, gpu
