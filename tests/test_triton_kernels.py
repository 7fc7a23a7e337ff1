"""What is particular to the Triton launchers (anm_fast.kernels): no read past an input's end, no
recompilation for a new batch size, the constant fills copied to the device once, and the Triton
backend behind the registered ops and the API on a GPU. Their values against the reference are
checked with every other backend's in tests/ops.

Without a GPU they run on CPU tensors through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); with a GPU on CUDA tensors. Run them all with `TRITON_INTERPRET=1 pytest -m
triton` (the marker selects the Triton cases of tests/ops too).
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

import anm_fast  # noqa: E402
from anm_fast import kernels as K  # noqa: E402
from anm_fast import reference as R  # noqa: E402
from anm_fast.testing import sample_boxes_args  # noqa: E402

pytestmark = pytest.mark.triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
if torch.cuda.is_available() and not INTERPRETED:
    DEVICES = ["cuda"]
elif INTERPRETED:
    DEVICES = ["cpu"]
else:  # neither a GPU nor the interpreter: nothing can run the kernels
    DEVICES = [pytest.param("cuda", marks=pytest.mark.skip(reason="needs a GPU or "
                                                                  "TRITON_INTERPRET=1"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


# -------------------------------------------------------------- registered ops on the GPU backend
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_registered_ops_and_the_api_use_triton_on_cuda():
    previous = anm_fast.get_backend()
    try:
        assert anm_fast.set_backend("triton") == "triton"
        ops = torch.ops.anm_fast
        fmap = torch.randn(8, 64, 7, 7, device="cuda")
        got = ops.activation_peaks(fmap, 224, 224, 0.0)
        for g, w in zip(got, R.activation_peaks(fmap.cpu(), 224, 224, 0.0)):
            assert torch.equal(g.cpu(), w)
        args = sample_boxes_args(8, 224, 224, 3, "cuda")
        want = R.sample_boxes(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
        for g, w in zip(ops.sample_boxes(*args), want):
            assert torch.equal(g.cpu(), w)
        # anm_mask through the API: the fused Triton op, differentiable in x and targets
        x = torch.randn(8, 3, 224, 224, device="cuda", requires_grad=True)
        t = torch.softmax(torch.randn(8, 10, device="cuda"), 1).requires_grad_(True)
        out = anm_fast.anm_mask(x, fmap, t, 0.5, seed=11)
        (out.erased.sum() + out.targets.square().sum()).backward()
        ref = anm_fast.anm_mask(x.detach().cpu(), fmap.cpu(), t.detach().cpu(), 0.5, seed=11)
        for name, a, b in zip(out._fields, out, ref):
            if name != "targets":
                assert torch.equal(a.detach().cpu(), b), name
        keep = (~R.box_mask(torch.cat((ref.box_max, ref.box_min)), 224, 224)).float()
        assert torch.equal(x.grad.cpu(), (keep[:8] + keep[8:]).expand(8, 3, 224, 224))
        assert t.grad is not None and t.grad.shape == t.shape
    finally:
        anm_fast.set_backend(previous)


def test_constant_fills_are_copied_to_the_device_once():
    """A CPU fill tensor is moved to the batch's device once per value list, then reused (no
    host-to-device copy per call: what CUDA-graph capture needs)."""
    from anm_fast.kernels import _common

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu_fill = torch.tensor([0.25, -1.0, 3.0])
    a = _common.fills_on(cpu_fill, torch.device(device))
    b = _common.fills_on(torch.tensor([0.25, -1.0, 3.0]), torch.device(device))
    assert torch.equal(a.cpu(), cpu_fill) and a.dtype == torch.float32
    if device == "cuda":
        assert a is b  # the cached device copy
    on_device = torch.tensor([1.0, 2.0], device=device)
    assert _common.fills_on(on_device, on_device.device).data_ptr() == on_device.data_ptr()


# ------------------------------------------------------------- no read past an input's end
GUARDED_LAUNCHES = textwrap.dedent("""
    import ctypes, mmap, sys
    import torch
    import anm_fast
    from anm_fast import kernels as K
    from anm_fast.testing import sample_boxes_args

    def before_guard_page(values):
        # values copied to the end of a page followed by an inaccessible one: a kernel reading
        # even one element past the tensor's end crashes this process
        page = mmap.PAGESIZE
        nbytes = values.numel() * values.element_size()
        pages = -(-nbytes // page) + 1
        buf = mmap.mmap(-1, pages * page)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        end = ctypes.c_void_p(addr + (pages - 1) * page)
        assert ctypes.CDLL(None).mprotect(end, page, 0) == 0
        t = torch.frombuffer(buf, dtype=values.dtype, count=values.numel(),
                             offset=(pages - 1) * page - nbytes)
        t.copy_(values.reshape(-1))
        return t.view(values.shape)

    # C = 3 (not a power of two), an image of 75 elements (a partial tile), boxes covering it
    B, C, H, W, N = 2, 3, 5, 5, 3
    cfg = anm_fast.ANMConfig(area_lo=0.9, area_hi=1.0)
    args = list(sample_boxes_args(B, H, W, C, "cpu", uniform=False, config=cfg))
    args[9] = before_guard_page(args[9])  # the constant fills
    boxes = K.sample_boxes(*args)
    x = before_guard_page(torch.randn(B, C, H, W))
    t = before_guard_page(torch.softmax(torch.randn(B, N), 1))
    bmax, bmin, ratio, fmax, fmin = (before_guard_page(b) for b in boxes)
    K.erase_and_modulate(x, t, bmax, bmin, fmax, fmin, ratio, 1.0)
    K.erase_and_modulate_backward(before_guard_page(torch.randn(2 * B, C, H, W)),
                                  before_guard_page(torch.randn(B, N)), t, bmax, bmin, ratio, 1.0)
    fmap = before_guard_page(torch.randn(B, 3, 3, 5))
    K.activation_peaks(fmap, H, W, 0.0)
    K.anm_mask(x, fmap, t, before_guard_page(args[2]), before_guard_page(args[3]), args[4], 0.0,
               args[8], args[9], 1.0, False)
    print("no read past an input")
""")


@pytest.mark.skipif(not INTERPRETED or not sys.platform.startswith("linux"),
                    reason="guard pages catch stray reads of the interpreter on Linux CPUs")
def test_kernels_read_nothing_past_their_inputs():
    # Run in a child process: a stray read is a segmentation fault, not an exception.
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", GUARDED_LAUNCHES], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"exit status {out.returncode}: {out.stderr[-2000:]}"
    assert "no read past an input" in out.stdout


# ------------------------------------------------------ no recompilation for a new batch size
def _launches(kernel, monkeypatch):
    """Records the arguments of every launch of `kernel` (a Triton JIT or interpreted function:
    both launch through their `run` method)."""
    seen = []
    original = kernel.run

    def run(*args, **kwargs):
        seen.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", run)
    return seen


def _unspecialised(kernel) -> set:
    names = getattr(kernel, "do_not_specialize", None)
    if names is None:  # the interpreter keeps the jit options in kwargs
        names = kernel.kwargs.get("do_not_specialize") or ()
    return {kernel.arg_names[n] if isinstance(n, int) else n for n in names}


def _batch_calls(B, device):
    fmap = torch.randn(B, 3, 4, 4, device=device)
    x = torch.randn(B, 3, 8, 8, device=device)
    t = torch.softmax(torch.randn(B, 4, device=device), 1)
    args = sample_boxes_args(B, 8, 8, 3, device)
    pmax, pmin, energy = K.activation_peaks(fmap, 8, 8, 0.0)
    bmax, bmin, ratio, fmax, fmin = K.sample_boxes(*args)
    erased, _ = K.erase_and_modulate(x, t, bmax, bmin, fmax, fmin, ratio, 1.0)
    K.erase_and_modulate_backward(erased, t, t, bmax, bmin, ratio, 1.0)
    K.anm_mask(x, fmap, t, args[2], args[3], args[4], 0.0, args[8], args[9], 1.0, False)


def test_a_new_batch_size_does_not_recompile(device, monkeypatch):
    """Triton compiles a kernel per value of every specialised argument (an int equal to 1, or
    divisible by 16, and every constexpr): whatever follows the batch size must be neither, or a
    last partial batch recompiles every kernel."""
    import importlib

    ap, sb, erase, fused = (importlib.import_module(f"anm_fast.kernels.{m}") for m in
                            ("activation_peaks", "sample_boxes", "erase", "anm_mask"))
    kernels = [ap._activation_peaks_kernel, sb._sample_boxes_kernel, erase._erase_kernel,
               erase._erase_backward_kernel, fused._mask_params_kernel]
    seen = {k: _launches(k, monkeypatch) for k in kernels}
    for B in (32, 7, 1):
        _batch_calls(B, device)
    for kernel, launches in seen.items():
        assert launches and len(launches) % 3 == 0, kernel.__name__
        per_batch = len(launches) // 3  # the erase kernel serves two launchers
        for i in range(per_batch):
            _assert_same_specialisation(kernel, launches[i::per_batch])


def _assert_same_specialisation(kernel, launches):
    """The launches (one per batch size) compile to the same kernel: equal constexprs, and every
    int argument that differs is one Triton does not specialise on."""
    for _, kwargs in launches:
        kwargs.pop("grid", None)
        kwargs.pop("warmup", None)
    assert all(kw == launches[0][1] for _, kw in launches), (
        f"{kernel.__name__}: a constexpr follows the batch size")
    values = list(zip(*(args for args, _ in launches)))
    varying = {kernel.arg_names[i] for i, vals in enumerate(values)
               if isinstance(vals[0], int) and len(set(vals)) > 1}
    assert varying <= _unspecialised(kernel), (
        f"{kernel.__name__}: {sorted(varying - _unspecialised(kernel))} follow the batch size "
        f"and are specialised")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_last_partial_batch_does_not_recompile_triton():
    pytest.importorskip("triton")
    import importlib

    from anm_fast import kernels as K

    mods = [importlib.import_module(f"anm_fast.kernels.{m}")
            for m in ("activation_peaks", "sample_boxes", "erase")]
    kernels = [mods[0]._activation_peaks_kernel, mods[1]._sample_boxes_kernel,
               mods[2]._erase_kernel]

    def compiled():
        return sum(len(cache) for k in kernels for cache, *_ in k.device_caches.values())

    def batch(B):
        fmap = torch.randn(B, 16, 4, 4, device="cuda")
        x = torch.randn(B, 3, 32, 32, device="cuda")
        t = torch.softmax(torch.randn(B, 10, device="cuda"), 1)
        pmax, pmin, _ = K.activation_peaks(fmap, 32, 32, 0.0)
        boxes = K.sample_boxes(pmax, pmin, torch.rand(B, device="cuda"),
                               torch.arange(B, device="cuda"), torch.tensor(B), 32, 32, 3,
                               anm_fast.ANMConfig().box_params(), torch.zeros(0))
        K.erase_and_modulate(x, t, boxes[0], boxes[1], boxes[3], boxes[4], boxes[2], 1.0)
        torch.cuda.synchronize()

    batch(512)
    before = compiled()
    for B in (512, 37, 1, 511):
        batch(B)
    assert compiled() == before
