"""The GPU backends (the compiled CUDA kernels of csrc/cuda and the Triton kernels) on CUDA tensors.

Without a GPU (CI): whenever the extension was built with its CUDA sources, every op must have a
compiled CUDA kernel registered, and a CUDA toolkit at build time must have led to such a build.
On a GPU: each GPU backend ("cuda" and "triton", through the registered ops, the API and autograd)
against the reference (on CUDA tensors) and against the C++ CPU kernels: boxes and fills bit for
bit, erased images exactly, peaks up to rounding near-ties, targets within the dtype's tolerance;
gradcheck in float64; CUDA-graph capture of anm_mask.

ANM_FAST_CUDA_TEST_DEVICE=cpu runs the GPU tests on CPU tensors (against the C++ kernels): it
checks the tests themselves on a machine without a GPU.
"""
import ctypes
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

import anm_fast
from anm_fast import reference
from anm_fast._ops import OP_NAMES

DEVICE = os.environ.get("ANM_FAST_CUDA_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE == "cuda"
gpu = pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA GPU")
cuda_only = pytest.mark.skipif(not (ON_CUDA and torch.cuda.is_available()),
                               reason="needs a CUDA GPU")
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
    if not ON_CUDA:  # the CPU self-check of these tests: once, against the C++ kernels
        if name != "cuda":
            pytest.skip("ANM_FAST_CUDA_TEST_DEVICE=cpu runs each test once")
        yield name
        return
    if name == "cuda" and (not built_with_cuda()
                           or not anm_fast.backend._compiled_cuda_available()):
        pytest.skip("anm_fast was built without CUDA kernels")
    if name == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    previous = anm_fast.get_backend()
    assert anm_fast.set_backend(name) == name
    yield name
    anm_fast.set_backend(previous)


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as t (4-D) in another memory layout."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "sliced":  # every other column of a wider tensor
        B, C, H, W = t.shape
        big = torch.zeros(B, C, H, 2 * W + 1, dtype=t.dtype, device=t.device)
        big[..., 1::2] = t
        return big[..., 1::2]
    if kind == "batch_sliced":  # every other sample of a larger batch
        big = torch.zeros((2 * t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
        big[1::2] = t
        return big[1::2]
    if kind == "offset":  # dense, but one element past an aligned address: no vector loads
        flat = torch.zeros(t.numel() + 1, dtype=t.dtype, device=t.device)
        view = flat[1:].view(t.shape)
        view.copy_(t)
        return view
    raise ValueError(kind)


def check_peak(U: torch.Tensor, band: float, peak: torch.Tensor, kind: str, tol_rel: float):
    """`peak` (B, 2) is a valid `kind` peak of the maps U (B, H, W) up to rounding: its value is in
    the band, and no earlier pixel (row-major) is inside the band by more than the tolerance."""
    B, H, W = U.shape
    flat = U.reshape(B, H * W).double()
    hi, lo = flat.amax(1), flat.amin(1)
    spread = (hi - lo) * band
    tol = tol_rel * torch.maximum(hi.abs(), lo.abs()) + 1e-30
    idx = (peak[:, 0] * W + peak[:, 1]).long().cpu()
    assert ((peak[:, 0] >= 0) & (peak[:, 0] < H) & (peak[:, 1] >= 0) & (peak[:, 1] < W)).all()
    flat, hi, lo, spread, tol = (t.cpu() for t in (flat, hi, lo, spread, tol))
    for b in range(B):
        i = int(idx[b])
        if kind == "max":
            thr = hi[b] - spread[b]
            assert flat[b, i] >= thr - tol[b], (b, i, float(flat[b, i]), float(thr))
            assert not (flat[b, :i] >= thr + tol[b]).any(), (b, i)
        else:
            thr = lo[b] + spread[b]
            assert flat[b, i] <= thr + tol[b], (b, i, float(flat[b, i]), float(thr))
            assert not (flat[b, :i] <= thr - tol[b]).any(), (b, i)


def resized_reference(energy: torch.Tensor, H: int, W: int) -> torch.Tensor:
    return F.interpolate(energy.double()[:, None], size=(H, W), mode="bilinear",
                         align_corners=False)[:, 0]


# ---------------------------------------------------------------------------- activation_peaks
PEAK_SHAPES = [  # B, K, h, w, H, W
    (3, 5, 4, 4, 32, 32),
    (1, 512, 4, 4, 32, 32),
    (1024, 512, 4, 4, 32, 32),
    (4, 2048, 7, 7, 224, 224),
    (3, 9, 5, 3, 17, 29),       # odd, downsampling in width
    (2, 64, 56, 56, 224, 224),  # many positions
    (2, 3, 8, 8, 512, 512),     # large image
    (1, 4, 100, 120, 1000, 1100),  # energy map too big for shared memory (global scratch)
    (2, 3, 9, 7, 2000, 1500),   # tap tables too big for shared memory (computed on the fly)
    (2, 1, 6, 6, 6, 6),         # one channel, same size
]


@gpu
@pytest.mark.parametrize("shape", PEAK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced"])
def test_activation_peaks_vs_reference(cuda_backend, shape, dtype, kind):
    B, K, h, w, H, W = shape
    if B * K * h * w > 2_000_000 and kind != "contiguous":
        pytest.skip("large shape: contiguous only")
    fmap = layout(torch.randn(B, K, h, w, device=DEVICE).to(dtype), kind)
    for band in (0.0, 1.0 / 255, 0.1):
        pmax, pmin, energy = ops.activation_peaks(fmap, H, W, band)
        assert pmax.shape == (B, 2) and pmin.shape == (B, 2) and energy.shape == (B, h, w)
        assert pmax.dtype == torch.int64 and energy.dtype == torch.float32
        e_ref = reference.energy_map(fmap)
        torch.testing.assert_close(energy, e_ref, rtol=2e-5, atol=1e-7)
        U = resized_reference(e_ref, H, W)
        check_peak(U, band, pmax, "max", 2e-5)
        check_peak(U, band, pmin, "min", 2e-5)


@gpu
@pytest.mark.parametrize("shape", [(3, 7, 4, 4, 32, 32), (2, 300, 7, 5, 60, 41)])
def test_activation_peaks_float64(cuda_backend, shape):
    B, K, h, w, H, W = shape
    fmap = torch.randn(B, K, h, w, device=DEVICE, dtype=torch.float64)
    pmax, pmin, energy = ops.activation_peaks(fmap, H, W, 0.0)
    e_ref = reference.energy_map(fmap)
    torch.testing.assert_close(energy, e_ref, rtol=1e-6, atol=0)
    U = resized_reference(e_ref, H, W)
    check_peak(U, 0.0, pmax, "max", 1e-6)
    check_peak(U, 0.0, pmin, "min", 1e-6)


@gpu
def test_activation_peaks_plateau_ties_first_occurrence(cuda_backend):
    # Constant energy: every resized pixel is the same value, so both peaks are pixel (0, 0).
    fmap = torch.ones(4, 3, 4, 4, device=DEVICE)
    pmax, pmin, energy = ops.activation_peaks(fmap, 32, 32, 0.0)
    assert (pmax == 0).all() and (pmin == 0).all()
    assert torch.allclose(energy, torch.full_like(energy, 0.25))
    # A single hot position of a 4x4 map: the max is the first pixel of its clamped plateau.
    fmap = torch.zeros(1, 2, 4, 4, device=DEVICE)
    fmap[0, :, 3, 3] = 1.0
    pmax, pmin, _ = ops.activation_peaks(fmap, 32, 32, 0.0)
    ref_max, ref_min, _ = reference.activation_peaks(fmap.cpu(), 32, 32, 0.0)
    assert pmax.cpu().tolist() == ref_max.tolist() and pmin.cpu().tolist() == ref_min.tolist()


@gpu
@pytest.mark.parametrize("band", [0.0, 1.0 / 255])
def test_activation_peaks_vs_cpu_kernel(cuda_backend, band):
    fmap = torch.randn(64, 32, 4, 4, device=DEVICE)
    pmax, pmin, energy = ops.activation_peaks(fmap, 32, 32, band)
    cmax, cmin, cenergy = ops.activation_peaks(fmap.cpu(), 32, 32, band)
    torch.testing.assert_close(energy.cpu(), cenergy, rtol=2e-5, atol=1e-7)
    U = resized_reference(cenergy, 32, 32)
    check_peak(U, band, pmax.cpu(), "max", 2e-5)
    check_peak(U, band, pmin.cpu(), "min", 2e-5)
    # Peaks differ from the CPU's only at rounding near-ties: nearly always identical.
    same = ((pmax.cpu() == cmax).all(1) & (pmin.cpu() == cmin).all(1)).float().mean()
    assert same >= 0.9


# -------------------------------------------------------------------------------- sample_boxes
def _sample_inputs(B, H, W, device, gen):
    pmax = torch.stack((torch.randint(0, H, (B,), generator=gen),
                        torch.randint(0, W, (B,), generator=gen)), 1)
    pmin = torch.stack((torch.randint(0, H, (B,), generator=gen),
                        torch.randint(0, W, (B,), generator=gen)), 1)
    q = torch.rand(B, generator=gen)
    ids = torch.randint(-2**62, 2**62, (B,), generator=gen)
    return pmax.to(device), pmin.to(device), q.to(device), ids.to(device)


CONFIGS = [
    # area_lo, area_hi, quality_gain, aspect_lo, area_scale, center_anchor, uniform_fill, fill
    (0.02, 0.07, 0.03, 0.8, 0.5, True, True, None),
    (0.06, 0.13, 0.2, 0.5, 1.0, False, True, None),
    (0.02, 0.07, 0.03, 0.8, 0.5, True, False, "zero"),
    (0.3, 0.9, 0.5, 0.3, 1.0, False, False, "mean"),  # large boxes: clamped to the image
]


@gpu
@pytest.mark.parametrize("B", [1, 7, 1024])
@pytest.mark.parametrize("HWC", [(32, 32, 3), (224, 224, 3), (17, 9, 5), (8, 8, 1)])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
@pytest.mark.parametrize("seed_on", ["device", "cpu"])  # where the seed and fills live
def test_sample_boxes_bit_identical(cuda_backend, B, HWC, cfg, seed_on):
    H, W, C = HWC
    gen = torch.Generator().manual_seed(B * 1000 + H + cfg)
    pmax, pmin, q, ids = _sample_inputs(B, H, W, DEVICE, gen)
    a_lo, a_hi, qg, asp, ascale, center, uniform, fill = CONFIGS[cfg]
    if fill == "zero":
        fv = torch.zeros(C)
    elif fill == "mean":
        fv = torch.linspace(-0.5, 0.7, C)
    else:
        fv = torch.zeros(0)
    for seed_value in (0, 12345, -7, 2**63 - 1):
        seed = torch.tensor(seed_value, dtype=torch.int64)
        args = (H, W, C, a_lo, a_hi, qg, asp, ascale, center, uniform)
        # "cpu": the seed and the constant fills come as CPU tensors (read on the host, no copy)
        dev_seed = seed.to(DEVICE) if seed_on == "device" else seed
        dev_fv = fv.to(DEVICE) if seed_on == "device" else fv
        got = ops.sample_boxes(pmax, pmin, q, ids, dev_seed, *args, dev_fv)
        cpu = ops.sample_boxes(pmax.cpu(), pmin.cpu(), q.cpu(), ids.cpu(), seed, *args, fv)
        ref = reference.sample_boxes(pmax, pmin, q, ids, seed.to(DEVICE), *args, fv.to(DEVICE))
        names = ("box_max", "box_min", "ratio", "fill_max", "fill_min")
        for name, g, c, r in zip(names, got, cpu, ref):
            assert g.device.type == torch.device(DEVICE).type
            assert g.dtype == c.dtype and g.shape == c.shape, name
            assert torch.equal(g.cpu(), c), f"{name} differs from the CPU kernel"
            assert torch.equal(g.cpu(), r.cpu()), f"{name} differs from the reference"


@gpu
def test_sample_boxes_other_input_dtypes(cuda_backend):
    gen = torch.Generator().manual_seed(3)
    pmax, pmin, q, ids = _sample_inputs(33, 32, 32, DEVICE, gen)
    seed = torch.tensor(99, dtype=torch.int32, device=DEVICE)
    args = (32, 32, 3, 0.02, 0.07, 0.03, 0.8, 0.5, True, True, torch.zeros(0, device=DEVICE))
    got = ops.sample_boxes(pmax.int(), pmin.short(), q.double(), ids.int(), seed, *args)
    want = ops.sample_boxes(pmax, pmin, q, ids.int().long(), seed.long(), *args)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


# -------------------------------------------------------------------------- erase_and_modulate
def _boxes(B, C, H, W, seed=5):
    gen = torch.Generator().manual_seed(seed)
    pmax, pmin, q, ids = _sample_inputs(B, H, W, "cpu", gen)
    out = ops.sample_boxes(pmax, pmin, q, ids, torch.tensor(seed), H, W, C, 0.02, 0.3, 0.2, 0.5,
                           1.0, True, True, torch.zeros(0))
    return [t.to(DEVICE) for t in out]


def _targets(B, N, dtype, gen):
    t = torch.softmax(torch.randn(B, N, generator=gen) * 3, dim=1)
    t[::3] = F.one_hot(torch.randint(0, N, (t[::3].shape[0],), generator=gen), N).float()
    return t.to(DEVICE, dtype)


ERASE_SHAPES = [(1, 3, 32, 32), (1024, 3, 32, 32), (3, 5, 17, 13), (2, 3, 224, 224),
                (4, 8, 16, 16), (2, 1, 9, 8)]


@gpu
@pytest.mark.parametrize("shape", ERASE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced", "batch_sliced",
                                  "offset"])
def test_erase_and_modulate_vs_reference(cuda_backend, shape, dtype, kind):
    B, C, H, W = shape
    gen = torch.Generator().manual_seed(B + C + H + W)
    x = layout(torch.randn(B, C, H, W, generator=gen).to(DEVICE, dtype), kind)
    box_max, box_min, ratio, fill_max, fill_min = _boxes(B, C, H, W)
    N = 10
    for t_dtype, gain in ((torch.float32, 1.0), (dtype, 4.0)):
        t = _targets(B, N, t_dtype, gen)
        erased, t_out = ops.erase_and_modulate(x, t, box_max, box_min, fill_max, fill_min,
                                               ratio, gain)
        r_erased, r_t = reference.erase_and_modulate(x, t, box_max, box_min, fill_max, fill_min,
                                                     ratio, gain)
        assert erased.shape == (2 * B, C, H, W) and erased.dtype == dtype
        assert erased.stride() == r_erased.stride(), "output memory format differs"
        assert torch.equal(erased, r_erased)
        assert t_out.dtype == t.dtype and t_out.shape == t.shape
        torch.testing.assert_close(t_out, r_t)
        c_erased, c_t = ops.erase_and_modulate(x.cpu(), t.cpu(), box_max.cpu(), box_min.cpu(),
                                               fill_max.cpu(), fill_min.cpu(), ratio.cpu(), gain)
        assert torch.equal(erased.cpu(), c_erased)
        torch.testing.assert_close(t_out.cpu(), c_t)


@gpu
@pytest.mark.parametrize("shape", ERASE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced", "offset"])
def test_erase_and_modulate_backward_vs_reference(cuda_backend, shape, dtype, kind):
    B, C, H, W = shape
    gen = torch.Generator().manual_seed(7 * B + H)
    g = layout(torch.randn(2 * B, C, H, W, generator=gen).to(DEVICE, dtype), kind)
    box_max, box_min, ratio, _, _ = _boxes(B, C, H, W, seed=11)
    N = 6
    t = _targets(B, N, dtype, gen)
    gt = torch.randn(B, N, generator=gen).to(DEVICE, dtype)
    for gain in (1.0, 5.0):
        gx, gtt = ops.erase_and_modulate_backward(g, gt, t, box_max, box_min, ratio, gain)
        rx, rt = reference.erase_and_modulate_backward(g, gt, t, box_max, box_min, ratio, gain)
        assert gx.shape == (B, C, H, W) and gx.dtype == dtype
        assert gx.stride() == rx.stride(), "grad_x memory format differs"
        torch.testing.assert_close(gx, rx)
        torch.testing.assert_close(gtt, rt)
        cx, ct = ops.erase_and_modulate_backward(g.cpu(), gt.cpu(), t.cpu(), box_max.cpu(),
                                                 box_min.cpu(), ratio.cpu(), gain)
        torch.testing.assert_close(gx.cpu(), cx)
        torch.testing.assert_close(gtt.cpu(), ct)


@gpu
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_erase_and_modulate_gradcheck_float64(cuda_backend, kind):
    B, C, H, W = 2, 3, 8, 9
    x = layout(torch.randn(B, C, H, W, dtype=torch.float64, device=DEVICE), kind)
    x.requires_grad_(True)
    # sample 0: shift 0.05 < t_k = 0.6 (pass-through); sample 1: shift 0.9 > t_k = 0.3 (clamped)
    t = torch.tensor([[0.6, 0.1, 0.1, 0.1, 0.1], [0.3, 0.2, 0.2, 0.2, 0.1]], dtype=torch.float64,
                     device=DEVICE, requires_grad=True)
    ratio = torch.tensor([0.05, 0.9], device=DEVICE)
    box_max = torch.tensor([[1, 2, 3, 4], [0, 0, 8, 2]], device=DEVICE)
    box_min = torch.tensor([[5, 5, 3, 4], [2, 3, 1, 1]], device=DEVICE)
    fills = torch.rand(B, C, device=DEVICE)

    def f(x, t):
        return anm_fast.erase_and_modulate(x, t, box_max, box_min, fills, fills, ratio)

    assert torch.autograd.gradcheck(f, (x, t))


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
    args = (32, 32, 3, 0.02, 0.07, 0.03, 0.8, 0.5, True, False, torch.tensor([0.1, 0.2, 0.3]))
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
def test_reference_is_the_same_bits_on_cuda_and_cpu():
    # The oracle itself must not depend on the device: ATen divides by a Python number as a
    # multiply by its reciprocal on CUDA, so every division in the reference is by a tensor.
    for n_in in range(1, 40):
        for n_out in (1, 3, 7, 13, 31, 32, 49, 224, 225, 1000):
            for a, b in zip(reference.linear_taps(n_in, n_out, "cuda"),
                            reference.linear_taps(n_in, n_out, "cpu")):
                assert torch.equal(a.cpu(), b), (n_in, n_out)
    gen = torch.Generator().manual_seed(4)
    for N in (2, 3, 7, 10, 100, 1000):
        t = torch.softmax(torch.randn(64, N, generator=gen) * 3, 1)
        ratio = torch.rand(64, generator=gen)
        g = torch.randn(64, N, generator=gen)
        assert torch.equal(reference.modulate_targets(t.cuda(), ratio.cuda(), 1.5).cpu(),
                           reference.modulate_targets(t, ratio, 1.5))
        box = torch.zeros(64, 4, dtype=torch.int64)
        x = torch.zeros(64, 1, 2, 2)
        cpu = reference.erase_and_modulate_backward(x.repeat(2, 1, 1, 1), g, t, box, box,
                                                    ratio, 1.5)
        gpu = reference.erase_and_modulate_backward(x.repeat(2, 1, 1, 1).cuda(), g.cuda(),
                                                    t.cuda(), box.cuda(), box.cuda(),
                                                    ratio.cuda(), 1.5)
        torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-6, atol=1e-7)  # sums' order
    fmap = torch.randn(16, 64, 7, 7, generator=gen)
    for a, b in zip(reference.activation_peaks(fmap.cuda(), 224, 224, 1.0 / 255),
                    reference.activation_peaks(fmap, 224, 224, 1.0 / 255)):
        assert torch.equal(a.cpu(), b)


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
                               torch.arange(B, device="cuda"), torch.tensor(B), 32, 32, 3, 0.02,
                               0.07, 0.03, 0.8, 0.5, True, True, torch.zeros(0))
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
            torch.tensor(5, device=dev), 13, 9, 3, 0.02, 0.07, 0.03, 0.8, 0.5, True, True,
            torch.zeros(0, device=dev))
    torch.library.opcheck(ops.sample_boxes.default, args)
    bmax, bmin, ratio, fmax, fmin = ops.sample_boxes(*args)
    for kind in ("contiguous", "channels_last"):
        x = layout(torch.randn(3, 3, 13, 9, device=dev), kind).requires_grad_(True)
        t = torch.softmax(torch.randn(3, 4, device=dev), 1).requires_grad_(True)
        torch.library.opcheck(ops.erase_and_modulate.default,
                              (x, t, bmax, bmin, fmax, fmin, ratio, 1.0))
        g = layout(torch.randn(6, 3, 13, 9, device=dev), kind)
        torch.library.opcheck(ops.erase_and_modulate_backward.default,
                              (g, torch.randn(3, 4, device=dev), t.detach(), bmax, bmin, ratio,
                               1.0))
