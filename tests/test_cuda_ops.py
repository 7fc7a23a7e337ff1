"""The GPU backends (the compiled CUDA kernels of csrc/cuda and the Triton kernels) on CUDA tensors:
what only a GPU shows. The per-op checks against the reference live in tests/ops (every backend).

Without a GPU (CI): whenever the extension was built with its CUDA sources, every op must have a
compiled CUDA kernel registered, and a CUDA toolkit at build time must have led to such a build.
On a GPU, for each GPU backend ("cuda" and "triton", through the registered ops, the API and
autograd): gradcheck in float64, CUDA-graph capture of anm_mask with int and device seeds, no
copy or sync for a CPU seed, the current stream and device, opcheck; the reference gives the same
bits on CUDA as on the CPU; a last partial batch does not recompile the Triton kernels.
"""
import ctypes
import importlib.util
import os

import pytest
import torch

import anm_fast
from anm_fast import reference
from anm_fast.config import ANMConfig
from anm_fast.testing import relayout
from anm_fast._ops import OP_NAMES

DEVICE = "cuda"
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ops = torch.ops.anm_fast


# ---------------------------------------------------------------------------------- build checks
def _extension_path():
    import anm_fast._C as ext
    return ext.__file__


def built_with_cuda() -> bool:
    """True when the loaded extension compiled csrc/cuda (it then exports this marker)."""
    if not anm_fast.has_extension():
        return False
    lib = ctypes.CDLL(_extension_path())
    try:
        ctypes.c_char.in_dll(lib, "anm_fast_cuda_build")
    except ValueError:
        return False
    return True


def test_build_flag_agrees_with_marker():
    flag = getattr(torch.ops.anm_fast, "_built_with_cuda", None)
    if not anm_fast.has_extension() or flag is None:
        pytest.skip("no compiled extension, or one without the _built_with_cuda op")
    assert bool(flag()) == built_with_cuda()


def compiled_cuda_kernel(op: str) -> bool:
    """A C++ kernel from csrc/cuda is registered for the op's CUDA key (active, or shadowed by a
    Python backend override)."""
    dump = torch._C._dispatch_dump(f"anm_fast::{op}")
    return any(line.startswith("CUDA") and "csrc/cuda/" in line for line in dump.splitlines())


def test_cuda_build_registers_every_op():
    if not anm_fast.has_extension():
        pytest.skip("the compiled extension is not loaded")
    if not built_with_cuda():
        pytest.skip("the extension was built without its CUDA sources")
    missing = [op for op in OP_NAMES if not compiled_cuda_kernel(op)]
    assert not missing, f"CUDA build without CUDA kernels for: {missing}"
    for op in OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"anm_fast::{op}", "CUDA")
    assert anm_fast.backend._compiled_cuda_available()
    assert "cuda" in anm_fast.backend.available_backends()


def _nvcc():
    from torch.utils import cpp_extension
    for home in (cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def test_cuda_toolkit_present_means_cuda_build():
    if not anm_fast.has_extension():
        pytest.skip("the compiled extension is not loaded")
    if os.environ.get("ANM_FAST_SKIP_CUDA", "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.skip("ANM_FAST_SKIP_CUDA is set")
    if torch.version.cuda is None:
        pytest.skip("this torch has no CUDA support")
    if _nvcc() is None:
        pytest.skip("no CUDA toolkit (nvcc) found")
    assert built_with_cuda(), (
        "a CUDA toolkit is present but the loaded anm_fast._C has no CUDA kernels: rebuild with "
        "`CUDA_HOME=/usr/local/cuda pip install --no-build-isolation -e .`")


# --------------------------------------------------------------------------------------- helpers
@pytest.fixture(params=["cuda", "triton"])
def cuda_backend(request):
    """Each GPU backend in turn serves the CUDA dispatch key (the ops, the API and autograd)."""
    name = request.param
    if name == "cuda" and (not built_with_cuda()
                           or not anm_fast.backend._compiled_cuda_available()):
        pytest.skip("anm_fast was built without CUDA kernels")
    if name == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    previous = anm_fast.get_backend()
    assert anm_fast.set_backend(name) == name
    yield name
    anm_fast.set_backend(previous)


def _sample_inputs(B, H, W, device, gen):
    pmax = torch.stack((torch.randint(0, H, (B,), generator=gen),
                        torch.randint(0, W, (B,), generator=gen)), 1)
    pmin = torch.stack((torch.randint(0, H, (B,), generator=gen),
                        torch.randint(0, W, (B,), generator=gen)), 1)
    q = torch.rand(B, generator=gen)
    ids = torch.randint(-2**62, 2**62, (B,), generator=gen)
    return pmax.to(device), pmin.to(device), q.to(device), ids.to(device)


# ------------------------------------------------------------------------------- CUDA graphs
@cuda_only
@pytest.mark.parametrize("seed_kind", ["device", "int"])
def test_anm_mask_cuda_graph_capture_replays(cuda_backend, seed_kind):
    # A device seed is read in the kernels (replays follow its new value); an int seed is read on
    # the host when the graph is captured (no host-to-device copy, which capture forbids).
    B, C, H, W, K, h, w, N = 64, 3, 32, 32, 128, 4, 4, 10
    dev = torch.device("cuda")
    x = torch.randn(B, C, H, W, device=dev)
    fmap = torch.randn(B, K, h, w, device=dev)
    t = torch.softmax(torch.randn(B, N, device=dev), 1)
    q = torch.rand(B, device=dev)
    seed = torch.tensor(1234, dtype=torch.int64, device=dev) if seed_kind == "device" else 1234
    anm_fast.set_checks(False)
    try:
        def step():
            return anm_fast.anm_mask(x, fmap, t, q, seed=seed)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        for new_inputs in (False, True):
            if new_inputs:
                x.copy_(torch.randn_like(x))
                fmap.copy_(torch.randn_like(fmap))
                q.copy_(torch.rand_like(q))
                if seed_kind == "device":
                    seed.fill_(987654321)
            graph.replay()
            torch.cuda.synchronize()
            eager = step()
            for name, a, b in zip(eager._fields, captured, eager):
                if name == "seed" and seed_kind == "int":
                    continue  # the API's own CPU copy of the int
                assert torch.equal(a, b), f"{name} differs between graph replay and eager"
        # No host synchronisation on the whole path (value checks off).
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        anm_fast.set_checks(True)


@cuda_only
def test_a_cpu_seed_and_cpu_fills_cost_no_copy_or_sync(cuda_backend):
    # How the API passes an int seed and constant fills: as CPU tensors, read on the host.
    gen = torch.Generator().manual_seed(1)
    pmax, pmin, q, ids = _sample_inputs(16, 32, 32, DEVICE, gen)
    args = (32, 32, 3, ANMConfig(fill=(0.1, 0.2, 0.3)).box_params(), torch.tensor([0.1, 0.2, 0.3]))
    ops.sample_boxes(pmax, pmin, q, ids, torch.tensor(5), *args)  # first call may cache fills
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for seed in (5, -7, 2**40 + 3):
            got = ops.sample_boxes(pmax, pmin, q, ids, torch.tensor(seed), *args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = reference.sample_boxes(pmax, pmin, q, ids, torch.tensor(2**40 + 3, device=DEVICE),
                                  *args[:-1], args[-1].to(DEVICE))
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@cuda_only
def test_kernels_follow_current_stream_and_device(cuda_backend):
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(8, 3, 32, 32, generator=gen).cuda()
    fmap0 = torch.randn(8, 16, 4, 4, generator=gen).cuda()
    t = torch.softmax(torch.randn(8, 5, generator=gen), 1).cuda()
    anm_fast.set_checks(False)  # a value check's host read would order the streams for us
    try:
        want = anm_fast.anm_mask(x0, fmap0, t, 0.5, seed=3)
        torch.cuda.synchronize()
        x, fmap = torch.zeros_like(x0), torch.zeros_like(fmap0)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            # The inputs are written on `s` only after a long sleep: a kernel launched on any
            # other stream runs during the sleep and reads zeros.
            torch.cuda._sleep(200_000_000)
            x.copy_(x0)
            fmap.copy_(fmap0)
            got = anm_fast.anm_mask(x, fmap, t, 0.5, seed=3)
            erased = anm_fast.anm_mask(x.requires_grad_(True), fmap, t, 0.5, seed=3).erased
            erased.backward(torch.ones_like(erased))
        torch.cuda.synchronize()
    finally:
        anm_fast.set_checks(True)
    for name, a, b in zip(want._fields, got, want):
        assert torch.equal(a, b), f"{name}: a kernel ran outside the current stream"
    keep = (~reference.box_mask(torch.cat((got.box_max, got.box_min)), 32, 32)).to(x.dtype)
    assert torch.equal(x.grad, keep[:8].expand_as(x) + keep[8:].expand_as(x))
    if torch.cuda.device_count() > 1:  # tensors on the second GPU while the first is current
        with torch.cuda.device(0):
            got1 = anm_fast.anm_mask(x0.to("cuda:1"), fmap0.to("cuda:1"), t.to("cuda:1"), 0.5,
                                     seed=3)
        for name, a, b in zip(want._fields, got1, want):
            assert a.device.index == 1 and torch.equal(a.cpu(), b.cpu()), name


@cuda_only
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
                               ANMConfig().box_params(), torch.zeros(0))
        K.erase_and_modulate(x, t, boxes[0], boxes[1], boxes[3], boxes[4], boxes[2], 1.0)
        torch.cuda.synchronize()

    batch(512)
    before = compiled()
    for B in (512, 37, 1, 511):
        batch(B)
    assert compiled() == before


@cuda_only
def test_opcheck_on_cuda(cuda_backend):
    dev = "cuda"
    fmap = torch.randn(3, 8, 4, 4, device=dev).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(ops.activation_peaks.default, (fmap, 13, 9, 1.0 / 255))
    pmax, pmin, _ = ops.activation_peaks(fmap, 13, 9, 0.0)
    args = (pmax, pmin, torch.rand(3, device=dev), torch.arange(3, device=dev),
            torch.tensor(5, device=dev), 13, 9, 3, ANMConfig().box_params(),
            torch.zeros(0, device=dev))
    torch.library.opcheck(ops.sample_boxes.default, args)
    bmax, bmin, ratio, fmax, fmin = ops.sample_boxes(*args)
    for kind in ("contiguous", "channels_last"):
        x = relayout(torch.randn(3, 3, 13, 9, device=dev), kind).requires_grad_(True)
        t = torch.softmax(torch.randn(3, 4, device=dev), 1).requires_grad_(True)
        torch.library.opcheck(ops.erase_and_modulate.default,
                              (x, t, bmax, bmin, fmax, fmin, ratio, 1.0))
        g = relayout(torch.randn(6, 3, 13, 9, device=dev), kind)
        torch.library.opcheck(ops.erase_and_modulate_backward.default,
                              (g, torch.randn(3, 4, device=dev), t.detach(), bmax, bmin, ratio,
                               1.0))
