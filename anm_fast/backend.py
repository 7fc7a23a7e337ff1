"""Which implementation serves CUDA tensors: the one place that decides.

Backends: "cuda" (the compiled CUDA kernels of csrc/cuda), "triton" (kernels/), "reference"
(pure PyTorch), or "auto" (the default; picks the fastest available). Chosen by the environment
variable ANM_FAST_BACKEND at import, or at run time with `anm_fast.set_backend(name)`.
CPU tensors are always served by the C++ kernels (or the reference when the extension is missing).
"""
from __future__ import annotations

import os

import torch

from . import _ext, reference

BACKENDS = ("auto", "cuda", "triton", "reference")
_OP_NAMES = ("activation_peaks", "sample_boxes", "erase_and_modulate",
             "erase_and_modulate_backward")

_state = {"requested": "auto", "active": None, "lib": None}


def _compiled_cuda_available() -> bool:
    return _ext.has_cuda_kernels()


def _resolve(name: str) -> str:
    if name == "auto":
        return "cuda" if _compiled_cuda_available() else "reference"
    if name == "cuda" and not _compiled_cuda_available():
        raise RuntimeError("backend 'cuda' needs the compiled CUDA kernels, which this build of "
                           "anm_fast does not have (rebuild with a CUDA toolkit present)")
    if name == "triton":
        raise RuntimeError("backend 'triton' is not available in this build")
    return name


def set_backend(name: str) -> str:
    """Select the implementation for CUDA tensors; returns the backend now active."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    active = _resolve(name)
    if _state["lib"] is not None:
        _state["lib"]._destroy()  # drop the previous Python override of the CUDA key
        _state["lib"] = None
    if active != "cuda":
        lib = torch.library.Library("anm_fast", "IMPL")
        for op in _OP_NAMES:
            lib.impl(op, getattr(reference, op), "CUDA")
        _state["lib"] = lib
    _state["requested"], _state["active"] = name, active
    return active


def get_backend() -> str:
    """The backend serving CUDA tensors now."""
    return _state["active"]


def install() -> None:
    name = os.environ.get("ANM_FAST_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"ANM_FAST_BACKEND must be one of {BACKENDS}, got {name!r}")
    set_backend(name)
