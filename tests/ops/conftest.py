"""The backends every per-op suite of tests/ops runs on, with the reference as the oracle.

`backend` is parametrised over every implementation of the ops that this machine can run:
  cpu            the C++ CPU kernels (torch.ops.anm_fast on CPU tensors)
  triton         the Triton launchers (anm_fast.kernels): on CPU tensors through Triton's
                 interpreter without a GPU (tests/conftest.py sets TRITON_INTERPRET=1), on CUDA
                 tensors with one; marker `triton`
  cuda_emulated  the CUDA kernels compiled for the CUDA emulation (torch.ops.anm_fast_emulated on
                 CPU tensors); marker `cuda_emulated`. Each test runs under one of the
                 emulation's thread schedules (SCHEDULES), picked from its test id, so the suite
                 runs every kernel under all of them and a failure reproduces by its id alone
  cuda           the compiled CUDA kernels on a GPU
Each test builds its inputs on the CPU, runs `backend(op, *args)` (inputs moved to the backend's
device, outputs brought back) and compares with anm_fast.reference on the CPU.
"""
from __future__ import annotations

import importlib.util
import os
import zlib

import pytest
import torch

import anm_fast

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The emulation's schedules, (order, seed): 0 lowest thread / block index first, 1 highest first,
# 2 a seeded random order. A missing barrier or a race changes a result under some of them.
SCHEDULES = {"lowest": (0, 0), "highest": (1, 0), "random1": (2, 1), "random2": (2, 2)}


def schedule_for(test_id: str) -> str:
    return list(SCHEDULES)[zlib.crc32(test_id.encode()) % len(SCHEDULES)]


class Backend:
    def __init__(self, name: str, device: str, ops):
        self.name, self.device, self._ops = name, device, ops
        self.schedule = None  # the emulation's thread schedule (cuda_emulated)
        # The interpreter runs one Python program per sample: large cases are for compiled code.
        self.interpreted = name == "triton" and device == "cpu"
        # Triton's interpreter rounds float32 -> bfloat16 toward zero (GPUs round to nearest, as
        # torch does): kernels that write bfloat16 are compared on a GPU only.
        self.writes_bf16 = not self.interpreted

    def __call__(self, op: str, *args):
        moved = [a.to(self.device) if isinstance(a, torch.Tensor) and op_moves(op, i) else a
                 for i, a in enumerate(args)]
        out = getattr(self._ops, op)(*moved)
        return tuple(o.cpu() for o in out)

    def __repr__(self):
        return self.name if self.schedule is None else f"{self.name}[{self.schedule}]"

    def has(self, op: str) -> bool:
        try:
            getattr(self._ops, op)
        except (AttributeError, RuntimeError):
            return False
        return True

    def skip_large(self, size: int, limit: int = 200_000):
        """Skips this case on the interpreter when `size` (elements, or samples) passes `limit`:
        every case runs on the compiled backends; the interpreter keeps the small ones."""
        if self.interpreted and size > limit:
            pytest.skip("too large for the Triton interpreter (run on a GPU)")


def op_moves(op: str, index: int) -> bool:
    """Constant fills and seeds stay on the CPU, where the API keeps them (read on the host)."""
    if op == "sample_boxes":
        return index not in (4, 9)
    if op == "anm_mask":
        return index not in (5, 8)
    return True


def _emulated_ops():
    try:
        import anm_fast._C_emulated  # noqa: F401  (registers torch.ops.anm_fast_emulated)
    except ImportError:
        return None
    return torch.ops.anm_fast_emulated


@pytest.fixture
def emulated_ops():
    """torch.ops.anm_fast_emulated, for the tests of what only the CUDA kernels do (launch counts,
    their own limits)."""
    ops = _emulated_ops()
    if ops is None:
        pytest.skip("anm_fast._C_emulated is not built")
    return ops


class _Launchers:
    """anm_fast.kernels under the names of the ops."""

    def __getattr__(self, op):
        from anm_fast import kernels

        if op not in kernels.LAUNCHERS:
            raise AttributeError(op)
        return kernels.LAUNCHERS[op]


def _params():
    gpu = torch.cuda.is_available()
    has_triton = importlib.util.find_spec("triton") is not None
    no_ext = pytest.mark.skipif(not anm_fast.has_extension(),
                                reason=f"compiled extension not built: "
                                       f"{anm_fast.extension_error()}")
    return [
        pytest.param("cpu", marks=no_ext),
        pytest.param("triton", marks=[pytest.mark.triton, pytest.mark.skipif(
            not has_triton or not (gpu or INTERPRETED),
            reason="needs triton, and a GPU or TRITON_INTERPRET=1")]),
        pytest.param("cuda_emulated", marks=[pytest.mark.cuda_emulated, no_ext]),
        pytest.param("cuda", marks=pytest.mark.skipif(not gpu, reason="needs a CUDA GPU")),
    ]


@pytest.fixture(params=_params())
def backend(request):
    name = request.param
    if name == "cpu":
        yield Backend("cpu", "cpu", torch.ops.anm_fast)
    elif name == "triton":
        yield Backend("triton", "cuda" if torch.cuda.is_available() and not INTERPRETED
                      else "cpu", _Launchers())
    elif name == "cuda_emulated":
        ops = _emulated_ops()
        if ops is None:
            pytest.skip("anm_fast._C_emulated is not built")
        b = Backend("cuda_emulated", "cpu", ops)
        b.schedule = schedule_for(request.node.nodeid)
        ops.set_schedule(*SCHEDULES[b.schedule])
        yield b
        ops.set_schedule(0, 0)
    else:
        if not anm_fast.has_cuda_kernels():
            pytest.skip("anm_fast was built without CUDA kernels")
        previous = anm_fast.get_backend()
        anm_fast.set_backend("cuda")
        yield Backend("cuda", "cuda", torch.ops.anm_fast)
        anm_fast.set_backend(previous)
