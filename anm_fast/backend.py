"""Which implementation serves CUDA tensors: the one place that decides.

Backends: "cuda" (the compiled CUDA kernels of csrc/cuda), "triton" (the Triton launchers of
anm_fast/kernels/), "reference" (pure PyTorch), or "auto" (the default).
"auto" takes the backend the benchmarks measured faster on this GPU model, recorded in
anm_fast/measured_backends.json by `python bench/report.py --pick-backend GPU_RUN.json`; for a
GPU model not in that file, compiled CUDA when built, else Triton when it imports, else the
reference. When the file could change the choice, "auto" decides on the first CUDA call (asking
for the GPU's name earlier would initialise CUDA when anm_fast is imported).
Chosen by the environment variable ANM_FAST_BACKEND at import, or at run time with
`anm_fast.set_backend(name)`. CPU tensors are always served by the C++ kernels (or the reference
when the extension is missing).

Mechanism: the compiled CUDA kernels are registered by the extension itself; any other choice is a
Python `torch.library.Library` that overrides the CUDA key of every op. Destroying that library
gives the compiled kernels back, so switching is cheap and reversible.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from . import _ext, reference

BACKENDS = ("auto", "cuda", "triton", "reference")
_OP_NAMES = ("activation_peaks", "sample_boxes", "erase_and_modulate",
             "erase_and_modulate_backward")

_state = {"requested": "auto", "active": None, "lib": None, "compiled_cuda": None,
          "triton": None, "triton_error": None, "measured": None, "pending_auto": False}

MEASURED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measured_backends.json")


def _compiled_cuda_available() -> bool:
    # Asked once, before this module overrides the CUDA key: afterwards the dispatcher would also
    # report our own Python override as "a CUDA kernel".
    if _state["compiled_cuda"] is None:
        _state["compiled_cuda"] = bool(_state["lib"] is None and _ext.has_cuda_kernels())
    return _state["compiled_cuda"]


def _triton_launchers():
    """The Triton launchers (op name -> function), or None with the reason recorded."""
    if _state["triton"] is None and _state["triton_error"] is None:
        try:
            from . import kernels  # imports triton
            _state["triton"] = dict(kernels.LAUNCHERS)
        except Exception as exc:  # ImportError, or a broken triton install
            _state["triton_error"] = f"{type(exc).__name__}: {exc}"
    return _state["triton"]


def _triton_installed() -> bool:
    # "auto" decides without importing triton (import anm_fast stays fast); the launchers are
    # imported on the first CUDA call, or right away when "triton" is asked for by name.
    if _state["triton"] is not None:
        return True
    return _state["triton_error"] is None and importlib.util.find_spec("triton") is not None


def _lazy_triton(op: str):
    def impl(*args):
        launchers = _triton_launchers()
        if launchers is None:  # only reachable through "auto": an explicit request imports early
            if not _state.get("warned_triton"):
                _state["warned_triton"] = True
                warnings.warn(f"anm_fast: triton could not be imported ({_state['triton_error']});"
                              f" the pure-PyTorch reference serves CUDA tensors instead.",
                              RuntimeWarning, stacklevel=2)
            return getattr(reference, op)(*args)
        return launchers[op](*args)

    impl.__name__ = f"{op}_triton"
    return impl


def available_backends() -> tuple:
    """The backends that can serve CUDA tensors in this installation ("auto" excluded)."""
    names = []
    if _compiled_cuda_available():
        names.append("cuda")
    if _triton_installed():
        names.append("triton")
    names.append("reference")
    return tuple(names)


def _unavailable_reason(name: str) -> str | None:
    if name == "cuda" and not _compiled_cuda_available():
        why = _ext.extension_error() if not _ext.has_extension() else \
            "the extension was built without CUDA kernels (no CUDA toolkit at build time)"
        return (f"backend 'cuda' needs the compiled CUDA kernels of anm_fast, which are not "
                f"available: {why}. Rebuild with a CUDA toolkit present "
                f"(`pip install --no-build-isolation -e .`) or use 'triton' or 'reference'.")
    if name == "triton" and _triton_launchers() is None:
        return (f"backend 'triton' needs the triton package, which could not be imported "
                f"({_state['triton_error']}). Install it (`pip install triton`, or the "
                f"`anm_fast[triton]` extra) or use 'cuda' or 'reference'.")
    return None


def measured_choices() -> dict:
    """GPU model name -> the backend measured faster on it (read once from MEASURED_FILE). A
    missing or damaged file means no measurements: a warning, never an import error."""
    if _state["measured"] is None:
        choices = {}
        try:
            import json

            with open(MEASURED_FILE) as f:
                data = json.load(f)
            for gpu, entry in (data.get("gpus") or {}).items():
                if isinstance(entry, dict) and entry.get("faster") in ("cuda", "triton"):
                    choices[str(gpu)] = entry["faster"]
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - a bad file must not break `import anm_fast`
            warnings.warn(f"anm_fast: ignoring {MEASURED_FILE} ({type(exc).__name__}: {exc}); "
                          f"'auto' uses the default order", RuntimeWarning, stacklevel=2)
        _state["measured"] = choices
    return _state["measured"]


def _gpu_name():
    return torch.cuda.get_device_name(torch.cuda.current_device())


def auto_choice(gpu_name=None) -> str:
    """What "auto" selects on the GPU model `gpu_name`: its measured winner when this
    installation has it, else the first available of cuda, triton, reference."""
    available = available_backends()
    measured = measured_choices().get(gpu_name) if gpu_name else None
    return measured if measured in available else available[0]


def _measurement_could_matter() -> bool:
    # Only when the file names a backend other than the default one and it is available here.
    default = available_backends()[0]
    return any(b != default and b in available_backends() for b in measured_choices().values())


def _resolve(name: str) -> str:
    if name == "auto":
        return auto_choice(None)
    return name


def _settle_auto() -> str:
    """First CUDA call under a pending "auto": ask the GPU's name and install its backend."""
    if _state["pending_auto"]:
        choice = auto_choice(_gpu_name())
        _state["pending_auto"] = False
        _install_override(choice)
        _state["active"] = choice
    return _state["active"]


def _pending_auto_impl(op: str):
    def impl(*args):
        _settle_auto()  # replaces this override; the call below dispatches to the choice
        return getattr(torch.ops.anm_fast, op).default(*args)

    impl.__name__ = f"{op}_auto"
    return impl


def _install_override(active: str) -> None:
    if _state["lib"] is not None:
        _state["lib"]._destroy()  # drop the previous Python override of the CUDA key
        _state["lib"] = None
    if active == "cuda":
        return  # the compiled kernels registered by the extension serve the CUDA key
    if active == "triton":
        impls = {op: _lazy_triton(op) for op in _OP_NAMES}
    elif active == "pending-auto":
        impls = {op: _pending_auto_impl(op) for op in _OP_NAMES}
    else:
        impls = {op: getattr(reference, op) for op in _OP_NAMES}
    lib = torch.library.Library("anm_fast", "IMPL")
    with warnings.catch_warnings():
        # Overriding the compiled CUDA kernels is the point here, not a mistake to warn about.
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        for op in _OP_NAMES:
            lib.impl(op, impls[op], "CUDA")
    _state["lib"] = lib


def set_backend(name: str, *, fallback: bool = False) -> str:
    """Select the implementation for CUDA tensors; returns the backend now active.

    An unknown name raises ValueError. A known backend that this installation cannot provide
    raises RuntimeError saying why, or with `fallback=True` warns and uses "auto" instead.
    """
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    name = name.strip().lower()
    _compiled_cuda_available()  # settle it before any override exists
    if name == "triton":
        _triton_launchers()  # import now, so a broken triton is reported here
    reason = _unavailable_reason(name)
    if reason is not None:
        if not fallback:
            raise RuntimeError(reason)
        active = _resolve("auto")
        warnings.warn(f"anm_fast: {reason} Falling back to '{active}'.", RuntimeWarning,
                      stacklevel=2)
    else:
        active = _resolve(name)
    pending = name == "auto" and reason is None and _measurement_could_matter()
    _install_override("pending-auto" if pending else active)
    _state["requested"], _state["active"], _state["pending_auto"] = name, active, pending
    return active


def get_backend() -> str:
    """The backend serving CUDA tensors now ("cuda", "triton" or "reference"). Under an "auto"
    that waits for the first CUDA call (see the module docstring), the default-order choice until
    CUDA is initialised, the measured one from then on."""
    if _state["pending_auto"] and torch.cuda.is_available() and torch.cuda.is_initialized():
        return _settle_auto()
    return _state["active"]


def install() -> None:
    """Import-time choice from ANM_FAST_BACKEND: an unavailable backend falls back with a warning
    (importing anm_fast never fails over it); an unknown name is an error."""
    name = os.environ.get("ANM_FAST_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"ANM_FAST_BACKEND must be one of {BACKENDS}, got {name!r}")
    set_backend(name, fallback=True)
