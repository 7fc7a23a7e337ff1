"""Forward and backward of erase_and_modulate (erasing and labels) side by side.

Implementations: eager (anm_fast.reference), compile (torch.compile of the reference),
fused (the registered operator on CPU tensors: the C++ kernel; on CUDA, the backend selected by
"auto"), fused-triton / fused-cuda (GPU only, via anm_fast.set_backend).
Bytes: forward reads x and writes the (2B, C, H, W) erased batch (3 |x|); backward reads the
(2B, ...) gradient and writes grad_x (3 |x|). Targets are (B, N) and counted too.
"""
import pytest
import torch

import anm_fast
from anm_fast import reference as R
from _common import (CFG, DTYPES, cold_copies, compiled, device_dtype_params, in_turn,
                     make_inputs, record, rounds, shape_params, sync_wrap, use_backend, x_bytes)

IMPLS = ["eager", "compile", "fused", "fused-triton", "fused-cuda"]


def _boxes(inp, s, device):
    ops = torch.ops.anm_fast
    ids = torch.arange(s.B, device=device)
    seed = torch.tensor(7, dtype=torch.int64, device=device)
    pmax, pmin, _ = R.activation_peaks(inp.fmap.float(), s.H, s.W, 0.0)
    return R.sample_boxes(pmax, pmin, inp.quality, ids, seed, s.H, s.W, s.C, CFG.box_params(),
                          torch.zeros(s.C, device=device))


def _select(impl, device):
    if impl in ("fused-triton", "fused-cuda"):
        if device != "cuda":
            pytest.skip("GPU backends run on CUDA tensors only")
        use_backend(device, impl)
    elif device == "cuda" and impl == "fused":
        use_backend(device, "auto")


def _run(benchmark, fn, impl, device):
    """Time fn; a compiled function is called once first so compilation is not timed."""
    try:
        if impl == "compile":
            fn()
            benchmark.pedantic(fn, rounds=rounds(20), warmup_rounds=2)
        else:
            benchmark(fn)
    finally:
        if device == "cuda":
            anm_fast.set_backend("auto")


def _callable(impl, device, compile_key, reference_fn, op_name, arg_sets):
    """What `impl` times: the eager reference, its torch.compile, or the registered op (on the
    backend `impl` names), called on each set of arguments in turn (bench/_common.py: cold
    inputs)."""
    _select(impl, device)
    if impl == "eager":
        fn = reference_fn
    elif impl == "compile":
        fn = compiled(compile_key, reference_fn)
    else:
        fn = getattr(torch.ops.anm_fast, op_name)
    return sync_wrap(in_turn([lambda args=args: fn(*args) for args in arg_sets]), device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("device,dtype_name", device_dtype_params())
def test_erase_fwd(benchmark, device, dtype_name, shape, impl):
    if impl in ("fused-triton", "fused-cuda") and device != "cuda":
        pytest.skip("GPU backends run on CUDA tensors only")
    dtype = DTYPES[dtype_name]
    inp = make_inputs(shape, device, dtype)
    bmax, bmin, ratio, fmax, fmin = _boxes(inp, shape, device)
    arg_sets = cold_copies(lambda: (inp.x.clone(), inp.targets, bmax, bmin, fmax, fmin, ratio,
                                    CFG.label_gain), 3 * x_bytes(shape, dtype))
    fn = _callable(impl, device, f"erase-{device}-{dtype}-{shape.name}", R.erase_and_modulate,
                   "erase_and_modulate", arg_sets)
    record(benchmark, op="erase_fwd", impl=impl, dtype=dtype_name, device=device,
           bytes=3 * x_bytes(shape, dtype) + 2 * inp.targets.numel() * 4, **shape.info())
    _run(benchmark, fn, impl, device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", shape_params())
@pytest.mark.parametrize("device,dtype_name", device_dtype_params())
def test_erase_bwd(benchmark, device, dtype_name, shape, impl):
    if impl in ("fused-triton", "fused-cuda") and device != "cuda":
        pytest.skip("GPU backends run on CUDA tensors only")
    dtype = DTYPES[dtype_name]
    inp = make_inputs(shape, device, dtype)
    bmax, bmin, ratio, _, _ = _boxes(inp, shape, device)
    g = torch.randn(2 * shape.B, shape.C, shape.H, shape.W, device=device).to(dtype)
    gt = torch.randn_like(inp.targets)
    arg_sets = cold_copies(lambda: (g.clone(), gt, inp.targets, bmax, bmin, ratio,
                                    CFG.label_gain), 3 * x_bytes(shape, dtype))
    fn = _callable(impl, device, f"erase-bwd-{device}-{dtype}-{shape.name}",
                   R.erase_and_modulate_backward, "erase_and_modulate_backward", arg_sets)
    record(benchmark, op="erase_bwd", impl=impl, dtype=dtype_name, device=device,
           bytes=3 * x_bytes(shape, dtype) + 3 * inp.targets.numel() * 4, **shape.info())
    _run(benchmark, fn, impl, device)
