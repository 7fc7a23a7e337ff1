"""Loads the compiled extension `anm_fast._C` if it is there and usable.

Import of anm_fast never fails because the extension did not build: the ops then fall back to
the pure-PyTorch reference (anm_fast/reference.py) and a warning says so, once.
"""
from __future__ import annotations

import os
import warnings

import torch

_LOADED = False
_ERROR: str | None = None


def _load() -> None:
    global _LOADED, _ERROR
    if os.environ.get("ANM_FAST_DISABLE_EXTENSION", "") == "1":
        _ERROR = "disabled by ANM_FAST_DISABLE_EXTENSION=1"
        return
    try:
        from . import _C  # noqa: F401  (registers the ops with the dispatcher)
    except ImportError as exc:
        msg = str(exc)
        if "undefined symbol" in msg or "version" in msg.lower():
            msg = (f"{msg}\nThe compiled extension does not match the installed torch "
                   f"{torch.__version__}: it was built against another version. Rebuild it with "
                   f"`pip install --no-build-isolation -e .`.")
        _ERROR = msg
        warnings.warn(
            f"anm_fast: the compiled extension could not be loaded, so the slower pure-PyTorch "
            f"reference serves every op. Reason: {msg}", RuntimeWarning, stacklevel=3)
        return
    _LOADED = True


def has_extension() -> bool:
    """True when the C++ (and possibly CUDA) kernels are loaded."""
    return _LOADED


def extension_error() -> str | None:
    return _ERROR


def built_with_cuda() -> bool:
    """True when the loaded extension was compiled with its CUDA sources (csrc/cuda)."""
    return _LOADED and bool(torch.ops.anm_fast._built_with_cuda())


def built_cuda_archs():
    """The GPU architectures the compiled CUDA kernels carry machine code for ("sm_80", "sm_90"),
    from the extension's `_cuda_archs()` (nvcc's __CUDA_ARCH_LIST__, "800,900"), or None when it
    does not say. Whether PTX is embedded is not in that list: `cuda_runs_on` asks the driver."""
    if not built_with_cuda() or not hasattr(torch.ops.anm_fast, "_cuda_archs"):
        return None
    archs = [a.strip() for a in torch.ops.anm_fast._cuda_archs().split(",") if a.strip().isdigit()]
    return [f"sm_{int(a) // 100}{int(a) % 100 // 10}" for a in archs] or None


def cuda_runs_on(device_index: int):
    """Whether the CUDA driver finds code for this device in the binary (its own machine code or
    PTX it compiles), or None when the extension cannot say."""
    if not built_with_cuda() or not hasattr(torch.ops.anm_fast, "_cuda_runs_on"):
        return None
    return bool(torch.ops.anm_fast._cuda_runs_on(device_index))


def has_cuda_kernels() -> bool:
    """True when the compiled extension carries CUDA kernels for every op. Asked of the build
    itself, not of the dispatcher, whose CUDA key a Python backend override may also fill."""
    return built_with_cuda()


_load()
