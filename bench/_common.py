"""Shared pieces of the benchmarks: shapes, inputs, implementations, bytes accounting.

Every benchmark names its shape, dtype, device and implementation in its id and stores in
`benchmark.extra_info`:
  op          what is timed ("anm_mask", "erase_fwd", "erase_bwd", "copy", "train_step")
  impl        which implementation ("released", "eager", "compile", "fused", ...)
  shape       the shape's name ("cifar-B512", ...), plus B, K, h, w, C, H, W, N
  dtype, device
  bytes       bytes that must move for the op (reads + writes of the big tensors), so that
              GB/s = bytes / median
  floor_bytes for anm_mask: the memory floor of docs/PERFORMANCE_GOALS.md (read the feature
              map once + write the two erased copies); the copy benchmark of the same shape
              moves exactly these bytes.

Every timed call reads data that is not in the caches: a benchmark makes as many copies of its
inputs as fill COLD_BYTES and calls them in turn (`cold_copies`, `in_turn`), so a shape whose
bytes fit the last-level cache (CIFAR B=512 moves about 30 MB; a 32 MB L3 or a GPU's 50 MB L2
holds that) is timed at memory speed like every other, the copy baseline included.

ANM_BENCH_SMOKE=1 replaces every shape by a tiny one and keeps rounds low (CI smoke runs).
Nothing here asserts on timing.
"""
from __future__ import annotations

import importlib
import itertools
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import pytest
import torch

import anm_fast
from anm_fast import reference as R

SMOKE = os.environ.get("ANM_BENCH_SMOKE", "0").strip().lower() not in ("", "0", "false", "no")
HAS_CUDA = torch.cuda.is_available()


@dataclass(frozen=True)
class Shape:
    family: str
    B: int
    K: int
    h: int
    w: int
    C: int
    H: int
    W: int
    N: int

    @property
    def name(self) -> str:
        return f"{self.family}-B{self.B}"

    def info(self) -> Dict[str, object]:
        return dict(shape=self.name, B=self.B, K=self.K, h=self.h, w=self.w, C=self.C, H=self.H,
                    W=self.W, N=self.N)


if SMOKE:
    SHAPES: List[Shape] = [Shape("cifar", 8, 64, 4, 4, 3, 32, 32, 10),
                           Shape("imagenet", 2, 64, 7, 7, 3, 64, 64, 14)]
else:
    SHAPES = [Shape("cifar", 128, 512, 4, 4, 3, 32, 32, 10),
              Shape("cifar", 512, 512, 4, 4, 3, 32, 32, 10),
              Shape("imagenet", 64, 2048, 7, 7, 3, 224, 224, 1000),
              Shape("imagenet", 256, 2048, 7, 7, 3, 224, 224, 1000)]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def device_dtype_params():
    """(device, dtype) pairs: fp32 on CPU; fp32 and bf16 on CUDA (skipped without a GPU)."""
    cuda_skip = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
    return [pytest.param("cpu", "fp32", id="cpu-fp32"),
            pytest.param("cuda", "fp32", id="cuda-fp32", marks=cuda_skip),
            pytest.param("cuda", "bf16", id="cuda-bf16", marks=cuda_skip)]


def shape_params():
    return [pytest.param(s, id=s.name) for s in SHAPES]


def elem_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def x_bytes(s: Shape, dtype) -> int:
    return s.B * s.C * s.H * s.W * elem_size(dtype)


def fmap_bytes(s: Shape, dtype) -> int:
    return s.B * s.K * s.h * s.w * elem_size(dtype)


def anm_bytes(s: Shape, dtype) -> int:
    """Minimum traffic of anm_mask: read fmap, read x, write the two erased copies."""
    return fmap_bytes(s, dtype) + 3 * x_bytes(s, dtype)


def floor_bytes(s: Shape, dtype) -> int:
    """The memory floor: read the feature map once + write the two erased copies."""
    return fmap_bytes(s, dtype) + 2 * x_bytes(s, dtype)


# ---------------------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    x: torch.Tensor
    fmap: torch.Tensor
    targets: torch.Tensor   # (B, N) one-hot float32
    labels: torch.Tensor    # (B,) int64
    quality: torch.Tensor   # (B,) float32


def make_inputs(s: Shape, device: str, dtype: torch.dtype) -> Inputs:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(s.B, s.C, s.H, s.W, generator=g).to(device=device, dtype=dtype)
    fmap = torch.randn(s.B, s.K, s.h, s.w, generator=g).relu_().to(device=device, dtype=dtype)
    labels = torch.randint(0, s.N, (s.B,), generator=g).to(device)
    targets = torch.nn.functional.one_hot(labels, s.N).to(torch.float32)
    quality = torch.rand(s.B, generator=g).to(device)
    return Inputs(x, fmap, targets, labels, quality)


# Bytes of distinct data the timed calls cycle through: more than any CPU's last-level cache or
# GPU's L2 of today (the same amount triton.testing.do_bench writes to flush the L2).
COLD_BYTES = 256 << 20


def cold_copies(make: Callable, bytes_per_copy: int) -> list:
    """`make()` called as many times as `bytes_per_copy` goes into COLD_BYTES (at least once; twice
    in smoke runs, which only check that the benchmarks run)."""
    n = 2 if SMOKE else max(1, -(-COLD_BYTES // max(bytes_per_copy, 1)))
    return [make() for _ in range(n)]


def in_turn(fns: List[Callable]) -> Callable:
    """One callable that calls fns[0], fns[1], ... in turn, one per call."""
    if len(fns) == 1:
        return fns[0]
    it = itertools.cycle(fns)
    return lambda: next(it)()


def sync_wrap(fn: Callable, device: str) -> Callable:
    """pytest-benchmark does not synchronise CUDA: every timed call ends with a synchronize."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def rounds(full: int) -> int:
    return 2 if SMOKE else full


# --------------------------------------------------------------------------- implementations
CFG = anm_fast.ANMConfig()


def eager_anm(x, fmap, targets, quality, seed, sample_ids, H: int, W: int, C: int):
    """The eager vectorised reference (peaks, boxes, erasing) with the default (cifar) config."""
    pmax, pmin, _ = R.activation_peaks(fmap, H, W, CFG.band)
    bmax, bmin, ratio, fmax, fmin = R.sample_boxes(
        pmax, pmin, quality, sample_ids, seed, H, W, C, CFG.box_params(),
        torch.zeros(C, device=x.device))
    return R.erase_and_modulate(x, targets, bmax, bmin, fmax, fmin, ratio, CFG.label_gain)


def fused_ops_anm(x, fmap, targets, quality, seed, sample_ids, H: int, W: int, C: int,
                  fill_value):
    """The registered operators anm_fast.anm_mask calls, called directly (no Python argument
    layer): kernel time. On the CPU that is the single fused op; on a GPU the three ops."""
    ops = torch.ops.anm_fast
    if x.device.type == "cpu" and anm_fast.has_extension():
        return ops.anm_mask(x, fmap, targets, quality, sample_ids, seed, CFG.band,
                            CFG.box_params(), fill_value, CFG.label_gain, True)
    pmax, pmin, _ = ops.activation_peaks(fmap, H, W, CFG.band)
    bmax, bmin, ratio, fmax, fmin = ops.sample_boxes(
        pmax, pmin, quality, sample_ids, seed, H, W, C, CFG.box_params(), fill_value)
    return ops.erase_and_modulate(x, targets, bmax, bmin, fmax, fmin, ratio, CFG.label_gain)


_COMPILED: Dict[str, Callable] = {}


def compiled(name: str, fn: Callable) -> Callable:
    """torch.compile of a reference function, cached per name (shapes are static per call site)."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


GPU_BACKENDS = ("triton", "cuda")


def use_backend(device: str, impl: str):
    """Select the GPU backend for `impl`, or skip when this build/GPU lacks it."""
    if device != "cuda":
        return
    name = impl.split("-")[-1]
    try:
        anm_fast.set_backend(name)
    except Exception as exc:  # backend missing in this build
        pytest.skip(f"backend {name!r} unavailable: {exc}")


def optional(module: str):
    try:
        return importlib.import_module(module)
    except Exception:
        return None


def record(benchmark, **info):
    benchmark.extra_info.update(info)
    benchmark.extra_info.setdefault("torch", torch.__version__)
    benchmark.extra_info.setdefault("threads", torch.get_num_threads())
    benchmark.extra_info.setdefault("smoke", SMOKE)
    # Other processes on the machine skew timings: keep the 1-minute load with every figure.
    benchmark.extra_info.setdefault("loadavg_1m", os.getloadavg()[0])
    if info.get("device") == "cuda":  # the GPU model, for the run's Triton / CUDA comparison
        benchmark.extra_info.setdefault("gpu", torch.cuda.get_device_name())
