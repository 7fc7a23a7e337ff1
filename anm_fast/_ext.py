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
_DIRECT_ANM_MASK = None


def _load() -> None:
    global _LOADED, _ERROR, _DIRECT_ANM_MASK
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
    _DIRECT_ANM_MASK = getattr(_C, "anm_mask", None)


def has_extension() -> bool:
    """True when the C++ (and possibly CUDA) kernels are loaded."""
    return _LOADED


def direct_anm_mask():
    """anm_fast._C.anm_mask: the fused op through the dispatcher's typed interface, without
    torch.ops' Python route (csrc/python_entry.cpp); None without the extension."""
    return _DIRECT_ANM_MASK


def extension_error() -> str | None:
    return _ERROR


def built_with_cuda() -> bool:
    """True when the loaded extension was compiled with its CUDA sources (csrc/cuda)."""
    return _LOADED and bool(torch.ops.anm_fast._built_with_cuda())


def built_cuda_archs():
    """The GPU architectures the compiled CUDA kernels carry ("sm_90", "compute_90", ...), as the
    extension reports them (`anm_fast._C.cuda_archs()`), or None when it does not say."""
    if not built_with_cuda():
        return None
    from . import _C

    report = getattr(_C, "cuda_archs", None)
    if report is None:
        return None
    archs = report() if callable(report) else report
    if isinstance(archs, str):
        archs = archs.replace(",", ";").split(";")
    return [a.strip() for a in archs if a.strip()] or None


def has_cuda_kernels() -> bool:
    """True when the compiled extension carries CUDA kernels for every op. Asked of the build
    itself, not of the dispatcher, whose CUDA key a Python backend override may also fill."""
    return built_with_cuda()


_load()
