"""Which implementation serves CUDA tensors: the one place that decides, and says why.

Backends, in the fixed order "auto" tries them:
  1. "cuda"      the compiled CUDA kernels of csrc/cuda: no JIT warm-up, and their device code runs
                 in every CI run (the CUDA emulation). Needs an extension built with CUDA whose
                 binary carries code for the GPU's architecture.
  2. "triton"    the Triton kernels of anm_fast/kernels/ (JIT-compiled for any GPU Triton knows).
  3. "reference" pure PyTorch (anm_fast/reference.py): always there, slowest.
The first available one is taken; `explain()` says which one serves CUDA tensors and why each of
the others was not picked. The user picks another with the environment variable ANM_FAST_BACKEND
(read at import) or `anm_fast.set_backend(name)`. No file written by the benchmarks changes the
choice. CPU tensors are always served by the C++ kernels (or the reference without the extension).

Whether the compiled binary fits the GPU is known only once CUDA is initialised; asking at import
would initialise CUDA in every process that imports anm_fast. So "auto" with compiled CUDA kernels
decides on the first CUDA call: it checks the device's compute capability against the
architectures the extension was built for (or, when the extension does not report them, launches
one tiny kernel) and falls back to Triton, then the reference, when the binary has no code for it.
The Triton backend likewise falls back to the reference for an op whose kernel Triton cannot
compile on this GPU, with a warning naming the error.

Mechanism: the compiled CUDA kernels are registered by the extension itself; any other choice is a
Python `torch.library.Library` that overrides the CUDA key of every op. Destroying that library
gives the compiled kernels back, so switching is cheap and reversible.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from . import _checks, _ext, reference

BACKENDS = ("auto", "cuda", "triton", "reference")
PRIORITY = ("cuda", "triton", "reference")
_OP_NAMES = ("activation_peaks", "sample_boxes", "erase_and_modulate",
             "erase_and_modulate_backward")
FUSED_OP = "anm_mask"  # peaks, boxes, erasing in one op; defined by the compiled extension only

_state = {"requested": "auto", "active": None, "lib": None, "compiled_cuda": None,
          "triton": None, "triton_error": None, "pending_auto": False,
          # why the compiled kernels cannot run on the GPU: None = not checked yet, "" = they can
          "device_misfit": None, "compiled_fused": None,
          "triton_broken": {}}  # op -> why Triton could not compile its kernel on this GPU


# ------------------------------------------------------------------------------ availability
def _compiled_cuda_available() -> bool:
    # Asked once, before this module overrides the CUDA key: afterwards the dispatcher would also
    # report our own Python override as "a CUDA kernel".
    if _state["compiled_cuda"] is None:
        _state["compiled_cuda"] = bool(_state["lib"] is None and _ext.has_cuda_kernels())
        _state["compiled_fused"] = _state["compiled_cuda"] and \
            torch._C._dispatch_has_kernel_for_dispatch_key(f"anm_fast::{FUSED_OP}", "CUDA")
    return _state["compiled_cuda"]


def fused_op_on_cuda() -> bool:
    """Whether anm_fast::anm_mask has a kernel for CUDA tensors under the active backend (the
    Triton and reference backends provide one; the compiled CUDA kernels when built with it)."""
    if not _ext.has_extension():
        return False
    if _state["active"] == "cuda":
        _compiled_cuda_available()
        return bool(_state["compiled_fused"])
    return True


def _triton_launchers():
    """The Triton launchers (op name -> function), or None with the reason recorded."""
    if _state["triton"] is None and _state["triton_error"] is None:
        try:
            from . import kernels  # imports triton
            _state["triton"] = dict(kernels.LAUNCHERS)
        except Exception as exc:  # noqa: BLE001 - ImportError, or a broken triton install
            _state["triton_error"] = f"{type(exc).__name__}: {exc}"
    return _state["triton"]


def _triton_installed() -> bool:
    # "auto" decides without importing triton (import anm_fast stays fast); the launchers are
    # imported on the first CUDA call, or right away when "triton" is asked for by name.
    if _state["triton"] is not None:
        return True
    return _state["triton_error"] is None and importlib.util.find_spec("triton") is not None


def _unavailable_reason(name: str):
    """Why backend `name` cannot serve CUDA tensors here, or None when it can."""
    if name == "cuda":
        if not _compiled_cuda_available():
            why = _ext.extension_error() if not _ext.has_extension() else \
                "the extension was built without CUDA kernels (no CUDA toolkit at build time)"
            return (f"backend 'cuda' needs the compiled CUDA kernels of anm_fast, which are not "
                    f"available: {why}. Rebuild with a CUDA toolkit present "
                    f"(`pip install --no-build-isolation -e .`) or use 'triton' or 'reference'.")
        if _state["device_misfit"]:
            return f"backend 'cuda': {_state['device_misfit']}"
    if name == "triton" and not _triton_installed():
        return (f"backend 'triton' needs the triton package, which could not be imported "
                f"({_state['triton_error'] or 'not installed'}). Install it (`pip install "
                f"triton`, or the `anm_fast[triton]` extra) or use 'cuda' or 'reference'.")
    return None


def available_backends() -> tuple:
    """The backends that can serve CUDA tensors in this installation, in priority order ("auto"
    excluded)."""
    return tuple(name for name in PRIORITY if _unavailable_reason(name) is None)


def auto_choice() -> str:
    """What "auto" selects: the first available backend of PRIORITY."""
    return available_backends()[0]


# ------------------------------------------------------- does the compiled binary fit the GPU?
def _arch_fits(archs, major: int, minor: int) -> bool:
    """Whether code built for `archs` ("sm_90", "compute_90", "9.0", "9.0+PTX", ...) runs on a
    device of compute capability major.minor: machine code (sm_XY) runs on the same major with
    minor >= Y; PTX (compute_XY) is compiled by the driver for any capability >= X.Y."""
    for arch in archs:
        a = str(arch).strip().lower()
        ptx = a.startswith("compute_") or a.endswith("+ptx")
        digits = a.replace("sm_", "").replace("compute_", "").replace("+ptx", "").rstrip("af")
        digits = digits.replace(".", "")
        if not digits.isdigit() or len(digits) < 2:
            continue
        want = (int(digits[:-1]), int(digits[-1]))
        if want[0] == major and want[1] <= minor:
            return True
        if ptx and want <= (major, minor):
            return True
    return False


def _device_misfit(device_index: int):
    """Why the compiled CUDA kernels cannot run on this device, or None when they can."""
    major, minor = torch.cuda.get_device_capability(device_index)
    archs = _ext.built_cuda_archs()
    runs = _ext.cuda_runs_on(device_index)
    if runs is not None:  # the driver's answer covers embedded PTX, which the arch list does not
        if runs:
            return None
        return (f"the compiled kernels (machine code for {', '.join(archs or ['?'])}) have no code "
                f"this GPU can run (compute capability {major}.{minor}); rebuild on this machine "
                f"or with TORCH_CUDA_ARCH_LIST={major}.{minor}")
    if archs is not None:
        if _arch_fits(archs, major, minor):
            return None
        return (f"the compiled kernels were built for {', '.join(archs)}, which cannot run on "
                f"this GPU (compute capability {major}.{minor}); rebuild on this machine or with "
                f"TORCH_CUDA_ARCH_LIST={major}.{minor}")
    # The extension does not say which architectures it carries: run one tiny kernel.
    try:
        torch.ops.anm_fast.activation_peaks(
            torch.ones(1, 1, 1, 1, device=torch.device("cuda", device_index)), 1, 1, 0.0)
        torch.cuda.synchronize(device_index)
    except RuntimeError as exc:
        if "no kernel image" in str(exc) or "invalid device function" in str(exc):
            return (f"the compiled kernels have no code for this GPU (compute capability "
                    f"{major}.{minor}): {str(exc).splitlines()[0]}")
        raise
    return None


# ------------------------------------------------------------------------- the CUDA dispatch key
def _triton_failure_types() -> tuple:
    """The errors Triton raises when it cannot compile a kernel for the GPU."""
    types = []
    for module, name in (("triton.compiler.errors", "CompilationError"),
                         ("triton.runtime.errors", "PTXASError"),
                         ("triton.runtime.errors", "OutOfResources")):
        try:
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


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
        if op in _state["triton_broken"]:
            return getattr(reference, op)(*args)
        try:
            return launchers[op](*args)
        except _triton_failure_types() as exc:
            # Triton could not compile this kernel for this GPU: the reference serves this op
            # from now on (the same results; boxes and fills bit for bit).
            _state["triton_broken"][op] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            warnings.warn(f"anm_fast: the Triton kernel of {op} does not compile on this GPU "
                          f"({_state['triton_broken'][op]}); the pure-PyTorch reference serves "
                          f"it instead.", RuntimeWarning, stacklevel=2)
            return getattr(reference, op)(*args)

    impl.__name__ = f"{op}_triton"
    return impl


def _checked_fused(impl):
    """anm_mask served from Python: the value checks that the compiled kernels make inside the
    op (quality in [0, 1], a finite energy) are made on its outputs, in one host read."""
    def anm_mask(*args):
        out = impl(*args)
        if args[-1]:  # check_values
            _checks.check_values(quality=args[3], energy=out[9])
        return out

    anm_mask.__name__ = f"{getattr(impl, '__name__', 'anm_mask')}_checked"
    return anm_mask


def _settle_auto() -> str:
    """First CUDA call under a pending "auto": check the compiled kernels against the device and
    install the first backend that fits."""
    if _state["pending_auto"]:
        _state["pending_auto"] = False
        _install_override("cuda")  # our override out of the way: the probe reaches the binary
        _state["device_misfit"] = _device_misfit(torch.cuda.current_device()) or ""
        choice = auto_choice()
        if choice != "cuda":
            warnings.warn(f"anm_fast: {_state['device_misfit']}; '{choice}' serves CUDA tensors "
                          f"instead.", RuntimeWarning, stacklevel=3)
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
    ops = _OP_NAMES + ((FUSED_OP,) if _ext.has_extension() else ())
    if active == "triton":
        impls = {op: _lazy_triton(op) for op in ops}
    elif active == "pending-auto":
        # anm_mask only when the compiled kernels have it (else the API composes the three ops
        # until the choice is settled)
        ops = ops if _state["compiled_fused"] else _OP_NAMES
        impls = {op: _pending_auto_impl(op) for op in ops}
    else:
        impls = {op: getattr(reference, op) for op in ops}
    if active != "pending-auto" and FUSED_OP in impls:
        impls[FUSED_OP] = _checked_fused(impls[FUSED_OP])
    lib = torch.library.Library("anm_fast", "IMPL")
    with warnings.catch_warnings():
        # Overriding the compiled CUDA kernels is the point here, not a mistake to warn about.
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        for op in ops:
            lib.impl(op, impls[op], "CUDA")
    _state["lib"] = lib


# ------------------------------------------------------------------------------------ public API
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
    reason = None if name == "auto" else _unavailable_reason(name)
    if reason is not None:
        if not fallback:
            raise RuntimeError(reason)
        warnings.warn(f"anm_fast: {reason} Falling back to '{auto_choice()}'.", RuntimeWarning,
                      stacklevel=2)
    active = auto_choice() if name == "auto" or reason is not None else name
    # The compiled kernels chosen by "auto" are checked against the GPU on the first CUDA call
    # (asked for by name, they are used as they are).
    pending = active == "cuda" and name != "cuda" and _state["device_misfit"] is None
    _install_override("pending-auto" if pending else active)
    _state["requested"], _state["active"], _state["pending_auto"] = name, active, pending
    return active


def get_backend() -> str:
    """The backend serving CUDA tensors now ("cuda", "triton" or "reference"). Under an "auto"
    that waits for the first CUDA call (see the module docstring), the priority choice until CUDA
    is initialised, the one that fits the GPU from then on."""
    if _state["pending_auto"] and torch.cuda.is_available() and torch.cuda.is_initialized():
        return _settle_auto()
    return _state["active"]


def explain() -> str:
    """Which backend serves CUDA tensors and why each other one was not picked."""
    active = get_backend()
    lines = [f"anm_fast: CUDA tensors are served by '{active}' (requested: "
             f"'{_state['requested']}'; ANM_FAST_BACKEND or anm_fast.set_backend() pick another)",
             f"priority of 'auto': {' > '.join(PRIORITY)}"]
    for name in PRIORITY:
        reason = _unavailable_reason(name)
        if name == active:
            status = "selected"
            if _state["pending_auto"]:
                status += " (checked against the GPU's architecture on the first CUDA call)"
            if name == "triton" and _state["triton_broken"]:
                status += "; the reference serves " + ", ".join(
                    f"{op} ({why})" for op, why in _state["triton_broken"].items())
        elif reason is not None:
            status = f"not available: {reason}"
        elif PRIORITY.index(name) > PRIORITY.index(active):
            status = "available, lower in the priority"
        else:
            status = "available, not requested"
        lines.append(f"  {name}: {status}")
    cpu = "the C++ kernels (anm_fast._C)" if _ext.has_extension() else \
        f"the reference (no compiled extension: {_ext.extension_error()})"
    lines.append(f"CPU tensors are served by {cpu}")
    return "\n".join(lines)


def install() -> None:
    """Import-time choice from ANM_FAST_BACKEND: an unavailable backend falls back with a warning
    (importing anm_fast never fails over it); an unknown name is an error."""
    name = os.environ.get("ANM_FAST_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"ANM_FAST_BACKEND must be one of {BACKENDS}, got {name!r}")
    set_backend(name, fallback=True)
