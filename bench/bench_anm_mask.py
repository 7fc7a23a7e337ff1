"""Whole anm_mask (peaks + boxes + erase + label shift) side by side, and the copy baseline.

Implementations:
  released       bench/released.py: per-image Python loop, host copy + resize per image
  eager          anm_fast.reference: peaks, boxes, erasing (vectorised PyTorch, eager)
  compile        torch.compile of the same reference function
  fused          anm_fast.anm_mask, the public API (argument + value checks on)
  fused-nochecks anm_fast.anm_mask with anm_fast.set_checks(False)
  fused-ops      the registered operator(s) anm_mask calls, called directly: kernel time without
                 the Python layer (CPU: the one fused op; GPU: the three ops)
  fused-triton / fused-cuda   on a GPU, anm_fast.anm_mask with that backend selected
  tv-randerase / kornia-randerase   batched random erasing into 2B copies (what a user reaches for
                 instead; no peaks, no label shift)
copy: torch.clone of a buffer sized so that the copy moves exactly `floor_bytes` (read + write).
floor_ratio: `fused` over `copy` timed in interleaved pairs (copy, then anm_mask, call after call),
  its median kept: the memory-floor goal's figure, which load on a shared machine moves far less
  than it moves two medians measured one after the other.
"""
import statistics
import time

import numpy as np
import pytest
import torch

import anm_fast
from _common import (CFG, HAS_CUDA, anm_bytes, cold_copies, compiled, device_dtype_params,
                     eager_anm, floor_bytes, fused_ops_anm, in_turn, make_inputs, optional,
                     record, rounds, shape_params, sync_wrap, use_backend, DTYPES, SMOKE)
import released

IMPLS = ["released", "eager", "compile", "fused", "fused-nochecks", "fused-ops", "fused-triton",
         "fused-cuda", "tv-randerase", "kornia-randerase"]


def _build(impl, inp, s, device):
    x, fmap, t, q = inp.x, inp.fmap, inp.targets, inp.quality
    H, W, C = s.H, s.W, s.C
    seed = torch.tensor(1, dtype=torch.int64, device=device)
    ids = torch.arange(s.B, device=device)
    if impl == "released":
        rng = np.random.default_rng(0)
        return lambda: released.released_anm(x, fmap, t, q, rng)
    if impl == "eager":
        return lambda: eager_anm(x, fmap, t, q, seed, ids, H, W, C)
    if impl == "compile":
        fn = compiled(f"anm-{device}-{x.dtype}-{s.name}", eager_anm)
        return lambda: fn(x, fmap, t, q, seed, ids, H, W, C)
    if impl in ("fused", "fused-nochecks", "fused-triton", "fused-cuda"):
        if impl in ("fused-triton", "fused-cuda"):
            if device != "cuda":
                pytest.skip("GPU backends run on CUDA tensors only")
            use_backend(device, impl)
        elif device == "cuda":
            use_backend(device, "auto")
        return lambda: anm_fast.anm_mask(x, fmap, t, q, seed=1)
    if impl == "fused-ops":
        fill = torch.zeros(C, device=device)
        return lambda: fused_ops_anm(x, fmap, t, q, seed, ids, H, W, C, fill)
    if impl == "tv-randerase":
        v2 = optional("torchvision.transforms.v2")
        if v2 is None:
            pytest.skip("torchvision not installed")
        tf = v2.RandomErasing(p=1.0, scale=(0.02, 0.1), ratio=(0.8, 1.25), value=0.0)
        return lambda: torch.cat((tf(x), tf(x)), dim=0)
    if impl == "kornia-randerase":
        K = optional("kornia.augmentation")
        if K is None:
            pytest.skip("kornia not installed")
        if x.dtype == torch.bfloat16:
            pytest.skip("kornia RandomErasing: fp32 only here")
        tf = K.RandomErasing(p=1.0, scale=(0.02, 0.1), ratio=(0.8, 1.25), value=0.0)
        return lambda: tf(torch.cat((x, x), dim=0))
    raise AssertionError(impl)


def _cold_impl(impl, shape, device, dtype):
    """`impl` on cold inputs: one copy of the inputs per call in turn (bench/_common.py)."""
    inputs = cold_copies(lambda: make_inputs(shape, device, dtype), anm_bytes(shape, dtype))
    return sync_wrap(in_turn([_build(impl, inp, shape, device) for inp in inputs]), device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("device,dtype_name", device_dtype_params())
def test_anm_mask(benchmark, device, dtype_name, shape, impl):
    if impl in ("fused-triton", "fused-cuda") and device != "cuda":
        pytest.skip("GPU backends run on CUDA tensors only")
    dtype = DTYPES[dtype_name]
    fn = _cold_impl(impl, shape, device, dtype)
    record(benchmark, op="anm_mask", impl=impl, dtype=dtype_name, device=device,
           bytes=anm_bytes(shape, dtype), floor_bytes=floor_bytes(shape, dtype),
           resizer=released.RESIZER if impl == "released" else None, **shape.info())
    try:
        if impl == "released" and not SMOKE:
            benchmark.pedantic(fn, rounds=rounds(7 if shape.family == "imagenet" else 15),
                               warmup_rounds=1)
        elif impl == "compile":
            fn()  # compile outside the timing
            benchmark.pedantic(fn, rounds=rounds(30 if shape.family == "cifar" else 7),
                               warmup_rounds=2)
        else:
            benchmark(fn)
    finally:
        if device == "cuda":
            anm_fast.set_backend("auto")


@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("device,dtype_name", device_dtype_params())
def test_copy(benchmark, device, dtype_name, shape):
    """The machine's copy bandwidth on the same bytes: clone of floor_bytes / 2 bytes, so the copy
    reads + writes exactly the memory floor (fmap once + both erased copies); like anm_mask's
    inputs, the sources are cycled through so that none is in the cache when it is copied."""
    dtype = DTYPES[dtype_name]
    nbytes = floor_bytes(shape, dtype)
    fn = _cold_copy(shape, device, dtype)
    record(benchmark, op="copy", impl="clone", dtype=dtype_name, device=device, bytes=nbytes,
           floor_bytes=nbytes, **shape.info())
    benchmark(fn)


def _cold_copy(shape, device, dtype):
    """A clone of floor_bytes / 2 bytes (it reads + writes exactly the memory floor), its sources
    cycled through like anm_mask's inputs."""
    nbytes = floor_bytes(shape, dtype)
    sources = cold_copies(
        lambda: torch.empty(nbytes // 2 // 4, dtype=torch.float32, device=device).uniform_(),
        nbytes)
    return sync_wrap(in_turn([src.clone for src in sources]), device)


@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("device,dtype_name", device_dtype_params())
def test_floor_ratio(benchmark, device, dtype_name, shape):
    dtype = DTYPES[dtype_name]
    fused = _cold_impl("fused", shape, device, dtype)
    copy = _cold_copy(shape, device, dtype)
    ratios = []

    def pair():
        t0 = time.perf_counter()
        copy()
        t1 = time.perf_counter()
        fused()
        ratios.append((time.perf_counter() - t1) / (t1 - t0))

    benchmark.pedantic(pair, rounds=rounds(200 if shape.family == "cifar" else 30),
                       warmup_rounds=2)
    record(benchmark, op="floor_ratio", impl="fused", dtype=dtype_name, device=device,
           bytes=floor_bytes(shape, dtype), ratio=statistics.median(ratios), **shape.info())
