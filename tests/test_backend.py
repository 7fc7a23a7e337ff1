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
    assert available == tuple(b for b in backend.PRIORITY if b in available)
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
            torch.tensor([0]), torch.tensor(1), 8, 8, 3, anm_fast.ANMConfig().box_params(),
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


# ------------------------------------------------------------ the fixed priority and its reasons
def test_auto_follows_the_documented_priority(monkeypatch):
    assert backend.PRIORITY == ("cuda", "triton", "reference")
    reasons = {"cuda": "no CUDA here", "triton": None, "reference": None}
    monkeypatch.setattr(backend, "_unavailable_reason", lambda name: reasons[name])
    assert backend.available_backends() == ("triton", "reference")
    assert backend.auto_choice() == "triton"
    reasons["triton"] = "no triton here"
    assert backend.auto_choice() == "reference"


def test_explain_names_the_choice_and_why_not_the_others():
    backend.set_backend("reference")
    text = backend.explain()
    assert "served by 'reference'" in text and "requested: 'reference'" in text
    assert "cuda > triton > reference" in text
    lines = {line.split(":")[0].strip(): line for line in text.splitlines()[2:5]}
    assert lines.keys() == {"cuda", "triton", "reference"}
    assert "selected" in lines["reference"]
    for name in ("cuda", "triton"):
        reason = backend._unavailable_reason(name)
        if reason is None:
            assert "available, not requested" in lines[name]
        else:
            assert "not available" in lines[name] and reason in lines[name]
    assert "CPU tensors are served by" in text


def test_nothing_written_by_the_benchmarks_steers_the_choice():
    import pathlib
    package = pathlib.Path(anm_fast.__file__).parent
    assert not list(package.glob("*.json")), "the package carries measurement files"
    assert "measured" not in backend.__dict__.get("_state", {})


@pytest.mark.parametrize("archs,capability,fits", [
    (["sm_80", "sm_90"], (9, 0), True),
    (["sm_80", "sm_90"], (8, 6), True),        # same major, newer minor: the sm_80 code runs
    (["sm_80", "sm_90"], (10, 0), False),      # Blackwell, no PTX: "no kernel image"
    (["sm_80", "sm_90"], (12, 0), False),
    (["sm_80", "compute_90"], (12, 0), True),  # PTX is compiled by the driver for newer GPUs
    (["8.0", "9.0+PTX"], (10, 0), True),       # TORCH_CUDA_ARCH_LIST spelling
    (["sm_90"], (8, 0), False),
    (["compute_90"], (8, 9), False),
    (["sm_90a"], (9, 0), True),
])
def test_arch_fit(archs, capability, fits):
    assert backend._arch_fits(archs, *capability) is fits


def test_auto_falls_back_when_the_binary_lacks_the_gpus_arch(monkeypatch):
    # As on a GPU whose architecture the extension was not built for (CUDA state faked).
    monkeypatch.setattr(backend, "_compiled_cuda_available", lambda: True)
    monkeypatch.setattr(backend, "_triton_installed", lambda: True)
    monkeypatch.setitem(backend._state, "device_misfit", None)
    installed = []
    monkeypatch.setattr(backend, "_install_override", lambda active: installed.append(active))
    assert backend.set_backend("auto") == "cuda" and installed[-1] == "pending-auto"
    monkeypatch.setattr(backend.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(backend.torch.cuda, "get_device_capability", lambda i: (12, 0))
    monkeypatch.setattr(backend._ext, "built_cuda_archs", lambda: ["sm_80", "sm_90"])
    monkeypatch.setattr(backend._ext, "cuda_runs_on", lambda i: None)  # decided by the arch list
    with pytest.warns(RuntimeWarning, match=r"built for sm_80, sm_90.*'triton' serves"):
        assert backend._settle_auto() == "triton"
    assert installed[-1] == "triton" and backend._state["pending_auto"] is False
    assert "compute capability 12.0" in backend.explain()
    assert backend.set_backend("auto") == "triton"  # decided once per process
    # a GPU the binary fits keeps the compiled kernels, without a warning
    monkeypatch.setitem(backend._state, "device_misfit", None)
    assert backend.set_backend("auto") == "cuda"
    monkeypatch.setattr(backend.torch.cuda, "get_device_capability", lambda i: (9, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend._settle_auto() == "cuda"
    assert backend._state["device_misfit"] == ""
    backend._state["device_misfit"] = None


def test_triton_compile_failure_falls_back_to_the_reference_per_op(monkeypatch):
    errors = backend._triton_failure_types()
    if not errors:
        pytest.skip("triton is not installed")
    class NoCodeForThisGPU(errors[0]):  # constructors differ between triton versions
        def __init__(self, message):
            Exception.__init__(self, message)

        def __str__(self):
            return self.args[0]

    def broken(*args):
        raise NoCodeForThisGPU("ptxas fatal: unsupported architecture 'sm_999'")

    launchers = dict(backend._triton_launchers())
    launchers["sample_boxes"] = broken
    monkeypatch.setitem(backend._state, "triton", launchers)
    monkeypatch.setitem(backend._state, "triton_broken", {})
    impl = backend._lazy_triton("sample_boxes")
    args = (torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), torch.tensor([0.5]),
            torch.tensor([0]), torch.tensor(1), 8, 8, 3, anm_fast.ANMConfig().box_params(),
            torch.zeros(3))
    with pytest.warns(RuntimeWarning, match="does not compile on this GPU"):
        got = impl(*args)
    for g, w in zip(got, anm_fast.reference.sample_boxes(*args)):
        assert torch.equal(g, w)
    assert "sample_boxes" in backend._state["triton_broken"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls go to the reference directly
        impl(*args)
    # any other error is the kernel's own and is raised, not hidden
    launchers["sample_boxes"] = lambda *a: (_ for _ in ()).throw(ValueError("bad argument"))
    monkeypatch.setitem(backend._state, "triton_broken", {})
    with pytest.raises(ValueError, match="bad argument"):
        impl(*args)


def test_the_drivers_answer_decides_when_the_extension_gives_it(monkeypatch):
    # The driver knows about embedded PTX, which the compiled arch list does not show.
    monkeypatch.setattr(backend.torch.cuda, "get_device_capability", lambda i: (12, 0))
    monkeypatch.setattr(backend._ext, "built_cuda_archs", lambda: ["sm_80", "sm_90"])
    monkeypatch.setattr(backend._ext, "cuda_runs_on", lambda i: True)
    assert backend._device_misfit(0) is None
    monkeypatch.setattr(backend._ext, "cuda_runs_on", lambda i: False)
    why = backend._device_misfit(0)
    assert "machine code for sm_80, sm_90" in why and "compute capability 12.0" in why


def test_built_cuda_archs_reads_the_extensions_list():
    if not anm_fast.has_cuda_kernels():
        pytest.skip("the extension was built without its CUDA sources")
    archs = backend._ext.built_cuda_archs()
    assert archs and all(a.startswith("sm_") and a[3:].isdigit() for a in archs), archs
