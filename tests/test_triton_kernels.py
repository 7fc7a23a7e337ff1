"""The Triton launchers (anm_fast.kernels) against the pure-PyTorch reference, op by op.

Without a GPU they run on CPU tensors through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); with a GPU the same tests run on CUDA tensors. Boxes and fills must be bit-
identical, and so are energies and peaks (every backend sums the energy in one order); floats
elsewhere within the per-dtype tolerances of anm_fast.testing.TOLERANCES. Shapes are small: the
interpreter is slow.
Run exactly these with `TRITON_INTERPRET=1 pytest -m triton`.
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
from anm_fast.testing import (TOLERANCES, assert_peaks_match, relayout,  # noqa: E402
                              sample_boxes_args)

pytestmark = pytest.mark.triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
if torch.cuda.is_available() and not INTERPRETED:
    DEVICES = ["cuda"]
elif INTERPRETED:
    DEVICES = ["cpu"]
else:  # neither a GPU nor the interpreter: nothing can run the kernels
    DEVICES = [pytest.param("cuda", marks=pytest.mark.skip(reason="needs a GPU or "
                                                                  "TRITON_INTERPRET=1"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Kernels that write bfloat16: Triton's interpreter rounds float32 -> bfloat16 toward zero (GPUs
# round to nearest even, as torch does), so they are compared in bfloat16 on a GPU only.
WRITE_DTYPES = [torch.float32, torch.float16] + ([] if INTERPRETED else [torch.bfloat16])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param




def cpu(ts):
    return [t.cpu() for t in ts]


# ------------------------------------------------------------------------------ activation_peaks
PEAK_SHAPES = [  # (B, K, h, w, H, W)
    (1, 1, 1, 1, 8, 8),         # 1x1 feature map: constant resized map, batch 1
    (3, 5, 4, 4, 32, 32),       # CIFAR-like
    (2, 7, 3, 5, 17, 29),       # non-square, odd
    (2, 3, 7, 7, 5, 6),         # image smaller than the feature map
    (2, 3, 16, 12, 40, 33),     # several energy tiles and several output tiles
    (2, 2048, 2, 3, 9, 9),      # many channels
    (12, 4, 4, 4, 8, 8),        # larger batch (the interpreter runs one program per sample)
]


@pytest.mark.parametrize("shape", PEAK_SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "permuted"])
def test_activation_peaks_matches_reference(device, shape, layout):
    B, Kc, h, w, H, W = shape
    fmap = relayout(torch.randn(B, Kc, h, w, device=device), layout)
    for band in (0.0, 1.0 / 255.0, 0.3):
        pmax, pmin, energy = K.activation_peaks(fmap, H, W, band)
        rmax, rmin, renergy = R.activation_peaks(fmap.cpu(), H, W, band)
        assert energy.dtype == torch.float32 and energy.is_contiguous()
        assert pmax.dtype == torch.int64 and pmax.shape == (B, 2)
        assert_peaks_match(pmax, pmin, renergy, H, W, band)
        # The same summation order, taps and lerp as the reference: the same bits.
        assert torch.equal(energy.cpu(), renergy)
        assert torch.equal(pmax.cpu(), rmax) and torch.equal(pmin.cpu(), rmin)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_activation_peaks_dtypes(device, dtype):
    # float64 maps: energies normalised in float64 and rounded to float32 once, as the reference
    fmap = torch.randn(4, 32, 5, 6, device=device).to(dtype)
    pmax, pmin, energy = K.activation_peaks(fmap, 23, 31, 0.0)
    rmax, rmin, renergy = R.activation_peaks(fmap.cpu(), 23, 31, 0.0)
    assert_peaks_match(pmax, pmin, renergy, 23, 31)
    assert torch.equal(energy.cpu(), renergy)
    assert torch.equal(pmax.cpu(), rmax) and torch.equal(pmin.cpu(), rmin)
    if anm_fast.has_extension():
        cmax, cmin, cenergy = torch.ops.anm_fast.activation_peaks(fmap.cpu(), 23, 31, 0.0)
        assert torch.equal(energy.cpu(), cenergy)
        assert torch.equal(pmax.cpu(), cmax) and torch.equal(pmin.cpu(), cmin)


def test_activation_peaks_ties_and_zero_map(device):
    # Constant map: every pixel ties, the first pixel is both peaks.
    pmax, pmin, _ = K.activation_peaks(torch.ones(2, 3, 4, 4, device=device), 8, 8, 0.0)
    assert pmax.tolist() == [[0, 0], [0, 0]] and pmin.tolist() == [[0, 0], [0, 0]]
    fmap = torch.zeros(1, 2, 8, 8, device=device)
    fmap[0, :, 1, 2] = 3.0
    pmax, pmin, energy = K.activation_peaks(fmap, 8, 8, 0.0)
    assert pmax.tolist() == [[1, 2]] and pmin.tolist() == [[0, 0]]
    assert float(energy.norm()) == pytest.approx(1.0)
    pmax, _, energy = K.activation_peaks(torch.zeros(2, 3, 4, 4, device=device), 8, 8, 0.0)
    assert torch.equal(energy.cpu(), torch.zeros(2, 4, 4)) and pmax.tolist() == [[0, 0]] * 2


# ---------------------------------------------------------------------------------- sample_boxes
sample_args = sample_boxes_args


def assert_boxes_equal(got, want):
    for g, w, name in zip(got, want, ("box_max", "box_min", "ratio", "fill_max", "fill_min")):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g.cpu(), w.cpu()), f"{name} differs from the reference"


CONFIGS = [anm_fast.ANMConfig.cifar(), anm_fast.ANMConfig.clothing1m(),
           # huge boxes: the clamps to the image are active
           anm_fast.ANMConfig(area_lo=0.9, area_hi=1.0, aspect_lo=0.1, area_scale=3.0)]


@pytest.mark.parametrize("B,H,W,C", [(1, 32, 32, 3), (300, 32, 32, 3), (64, 5, 7, 1),
                                     (33, 224, 224, 3), (16, 9, 300, 5), (8, 8, 8, 40)])
@pytest.mark.parametrize("anchor", [True, False])
@pytest.mark.parametrize("config", CONFIGS)
def test_sample_boxes_bit_exact(device, B, H, W, C, anchor, config):
    args = sample_args(B, H, W, C, device, anchor=anchor, config=config)
    got = K.sample_boxes(*args)
    assert all(t.device.type == torch.device(device).type for t in got)
    assert_boxes_equal(got, R.sample_boxes(*cpu(args[:5]), *args[5:15], args[15].cpu()))
    box = got[0].cpu()
    assert bool((box[:, 2] >= 1).all() and (box[:, 3] >= 1).all())
    assert bool((box[:, 0] >= 0).all() and (box[:, 0] + box[:, 2] <= H).all())
    assert bool((box[:, 1] >= 0).all() and (box[:, 1] + box[:, 3] <= W).all())


def test_sample_boxes_many_draws_bit_exact(device):
    # Many streams: any float64 op-order or rounding difference shows up as a different box.
    cfg = anm_fast.ANMConfig(area_lo=0.01, area_hi=0.6, aspect_lo=0.3)
    args = sample_args(1024, 97, 61, 3, device, seed=123456789, config=cfg)
    assert_boxes_equal(K.sample_boxes(*args), R.sample_boxes(*cpu(args[:5]), *args[5:15],
                                                             args[15].cpu()))


def test_sample_boxes_matches_cpu_kernels(device):
    if not anm_fast.has_extension():
        pytest.skip("compiled extension not built")
    args = sample_args(200, 31, 45, 5, device, seed=-5)
    want = torch.ops.anm_fast.sample_boxes(*cpu(args[:5]), *args[5:15], args[15].cpu())
    assert_boxes_equal(K.sample_boxes(*args), want)


@pytest.mark.parametrize("seed", [0, 2**32 - 1, 2**32, -1, -(2**63), 2**63 - 1])
def test_sample_boxes_seeds_ids_and_constant_fill(device, seed):
    ids = torch.tensor([0, 1, 2**32, 2**32 + 1, 2**40 + 5, -3])
    for uniform in (True, False):
        args = sample_args(6, 32, 32, 3, device, seed=seed, ids=ids, uniform=uniform)
        got = K.sample_boxes(*args)
        assert_boxes_equal(got, R.sample_boxes(*cpu(args[:5]), *args[5:15], args[15].cpu()))
    # ids that differ only in the high word give different streams
    args = sample_args(6, 32, 32, 3, device, seed=seed, ids=ids)
    fills = K.sample_boxes(*args)[3]
    assert not torch.equal(fills[0], fills[2])


def test_sample_boxes_strided_and_narrow_inputs(device):
    B, H, W, C = 37, 29, 31, 3
    base = sample_args(B, H, W, C, device)
    pmax = base[0].t().contiguous().t().to(torch.int32)   # column-major int32 peaks
    pmin = torch.stack((base[1], base[1]), 2)[..., 0]      # strided view
    q = torch.stack((base[2], base[2]), 1)[:, 1]           # stride 2
    ids = base[3].to(torch.int32)
    seed = base[4].reshape(1, 1)
    args = (pmax, pmin, q, ids, seed) + base[5:]
    assert_boxes_equal(K.sample_boxes(*args),
                       R.sample_boxes(*cpu(base[:5]), *base[5:15], base[15].cpu()))


# ------------------------------------------------------------------------------ erase_and_modulate
def erase_inputs(B, C, H, W, N, dtype, layout, device, seed=3):
    x = relayout(torch.randn(B, C, H, W, device=device).to(dtype), layout)
    t = torch.softmax(torch.randn(B, N) * 3, dim=1).to(dtype).to(device)
    boxes = R.sample_boxes(*sample_args(B, H, W, C, "cpu", seed=seed))
    return x, t, tuple(b.to(device) for b in boxes)


ERASE_SHAPES = [(1, 3, 32, 32, 10), (7, 1, 5, 7, 2), (3, 3, 17, 9, 100), (2, 5, 40, 33, 3),
                (2, 2, 8, 8, 1500)]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "permuted"])
@pytest.mark.parametrize("shape", ERASE_SHAPES)
def test_erase_and_modulate_matches_reference(device, layout, shape):
    B, C, H, W, N = shape
    for dtype in WRITE_DTYPES + [torch.float64]:
        x, t, (bmax, bmin, ratio, fmax, fmin) = erase_inputs(B, C, H, W, N, dtype, layout,
                                                             device)
        ratio[0] = 5.0  # label shift clamped to t_k for sample 0
        erased, targets = K.erase_and_modulate(x, t, bmax, bmin, fmax, fmin, ratio, 1.0)
        r_erased, r_targets = R.erase_and_modulate(*cpu((x, t, bmax, bmin, fmax, fmin, ratio)),
                                                   1.0)
        assert erased.shape == (2 * B, C, H, W) and erased.dtype == dtype
        assert erased.stride() == r_erased.stride(), "output layout differs from the rule"
        assert torch.equal(erased.cpu(), r_erased)  # copies and constant fills are exact
        rtol, atol = TOLERANCES[dtype]
        assert targets.dtype == dtype and targets.is_contiguous()
        torch.testing.assert_close(targets.cpu(), r_targets, rtol=rtol, atol=atol)


def test_erase_strided_targets_boxes_and_gain(device):
    B, C, H, W, N = 5, 3, 12, 10, 7
    x, t, (bmax, bmin, ratio, fmax, fmin) = erase_inputs(B, C, H, W, N, torch.float32,
                                                         "contiguous", device)
    t_strided = t.t().contiguous().t()                      # column-major targets
    bmax32 = bmax.to(torch.int32)
    bmin_strided = torch.stack((bmin, bmin), 2)[..., 1]     # strided boxes
    full = torch.tensor([[0, 0, H, W]] * B, device=device)  # whole-image box
    for gain in (0.0, 0.5, 3.0):
        for boxes in ((bmax32, bmin_strided), (full, bmin)):
            got = K.erase_and_modulate(x, t_strided, *boxes, fmax, fmin, ratio, gain)
            want = R.erase_and_modulate(*cpu((x, t, *boxes, fmax, fmin, ratio)), gain)
            assert torch.equal(got[0].cpu(), want[0])
            torch.testing.assert_close(got[1].cpu(), want[1], rtol=1e-5, atol=1e-6)


def test_label_shift_follows_the_spec(device):
    t = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.5, 0.3, 0.2, 0.0], [0.04, 0.02, 0.9, 0.04]],
                     device=device)
    ratio = torch.tensor([0.06, 0.3, 2.0], device=device)
    box = torch.tensor([[0, 0, 1, 1]] * 3, device=device)
    fills = torch.zeros(3, 1, device=device)
    x = torch.zeros(3, 1, 2, 2, device=device)
    _, out = K.erase_and_modulate(x, t, box, box, fills, fills, ratio, 1.0)
    want = torch.tensor([[0.02, 0.94, 0.02, 0.02], [0.2, 0.4, 0.3, 0.1],
                         [0.34, 0.32, 0.0, 0.34]])
    torch.testing.assert_close(out.cpu(), want)
    tie = torch.tensor([[0.5, 0.5]], device=device)  # first occurrence gives the mass
    _, out = K.erase_and_modulate(x[:1], tie, box[:1], box[:1], fills[:1], fills[:1],
                                  ratio[:1] * 0 + 0.1, 1.0)
    torch.testing.assert_close(out.cpu(), torch.tensor([[0.4, 0.6]]))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_erase_backward_matches_reference(device, layout):
    B, C, H, W, N = 6, 3, 11, 9, 5
    for dtype in WRITE_DTYPES + [torch.float64]:
        x, t, (bmax, bmin, ratio, fmax, fmin) = erase_inputs(B, C, H, W, N, dtype, "contiguous",
                                                             device)
        ratio[0] = 5.0  # clamp active for sample 0
        g = relayout(torch.randn(2 * B, C, H, W, device=device).to(dtype), layout)
        gt = torch.randn(B, N, device=device).to(dtype)
        gx, gtt = K.erase_and_modulate_backward(g, gt, t, bmax, bmin, ratio, 1.0)
        rgx, rgtt = R.erase_and_modulate_backward(*cpu((g, gt, t, bmax, bmin, ratio)), 1.0)
        rtol, atol = TOLERANCES[dtype]
        assert gx.stride() == rgx.stride() and gx.dtype == dtype and gtt.dtype == dtype
        torch.testing.assert_close(gx.cpu(), rgx, rtol=rtol, atol=atol)
        torch.testing.assert_close(gtt.cpu(), rgtt, rtol=rtol, atol=atol)


def test_empty_batch(device):
    pmax, pmin, energy = K.activation_peaks(torch.randn(0, 4, 4, 4, device=device), 32, 32, 0.0)
    assert pmax.shape == (0, 2) and energy.shape == (0, 4, 4)
    args = sample_args(0, 32, 32, 3, device)
    assert [tuple(o.shape) for o in K.sample_boxes(*args)] == [(0, 4), (0, 4), (0,), (0, 3),
                                                              (0, 3)]
    x = torch.randn(0, 3, 8, 8, device=device)
    t = torch.zeros(0, 4, device=device)
    box = torch.zeros(0, 4, dtype=torch.int64, device=device)
    f = torch.zeros(0, 3, device=device)
    r = torch.zeros(0, device=device)
    erased, targets = K.erase_and_modulate(x, t, box, box, f, f, r, 1.0)
    assert erased.shape == (0, 3, 8, 8) and targets.shape == (0, 4)
    gx, gt = K.erase_and_modulate_backward(erased, targets, t, box, box, r, 1.0)
    assert gx.shape == (0, 3, 8, 8) and gt.shape == (0, 4)


# ------------------------------------------------------------------------------- whole pipeline
def test_pipeline_matches_reference(device):
    B, C, H, W, N = 9, 3, 32, 32, 10
    fmap = torch.randn(B, 16, 4, 4, device=device)
    x = torch.randn(B, C, H, W, device=device)
    t = torch.softmax(torch.randn(B, N, device=device), 1)
    q = torch.rand(B, device=device)
    ids = torch.arange(B, device=device) + 1000
    seed = torch.tensor(42, device=device)
    cfg = anm_fast.ANMConfig()

    def run(ops, tensors):
        fm, xx, tt, qq, ii, ss = tensors
        pmax, pmin, energy = ops.activation_peaks(fm, H, W, cfg.band)
        boxes = ops.sample_boxes(pmax, pmin, qq, ii, ss, H, W, C, cfg.area_lo, cfg.area_hi,
                                 cfg.quality_gain, cfg.aspect_lo, cfg.area_scale, True, True,
                                 torch.zeros(C, device=fm.device))
        bmax, bmin, ratio, fmax, fmin = boxes
        return (pmax, pmin) + boxes + ops.erase_and_modulate(xx, tt, bmax, bmin, fmax, fmin,
                                                             ratio, cfg.label_gain)

    got = run(K, (fmap, x, t, q, ids, seed))
    want = run(R, cpu((fmap, x, t, q, ids, seed)))
    for g, w in zip(got[:-1], want[:-1]):  # peaks (exact here), boxes, fills, erased images
        assert torch.equal(g.cpu(), w)
    torch.testing.assert_close(got[-1].cpu(), want[-1])


# -------------------------------------------------------------- registered ops on the GPU backend
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_registered_ops_use_triton_on_cuda():
    previous = anm_fast.get_backend()
    try:
        assert anm_fast.set_backend("triton") == "triton"
        ops = torch.ops.anm_fast
        fmap = torch.randn(8, 64, 7, 7, device="cuda")
        got = ops.activation_peaks(fmap, 224, 224, 0.0)
        want = R.activation_peaks(fmap.cpu(), 224, 224, 0.0)
        assert_peaks_match(got[0], got[1], want[2], 224, 224)
        args = sample_args(8, 224, 224, 3, "cuda")
        assert_boxes_equal(ops.sample_boxes(*args),
                           R.sample_boxes(*cpu(args[:5]), *args[5:15], args[15].cpu()))
    finally:
        anm_fast.set_backend(previous)


# ------------------------------------------------------------------ anm_mask: stages 1-3 fused
def anm_mask_args(B, C, H, W, Kc, h, w, N, dtype, layout, device, uniform=True, anchor=True,
                  seed=99):
    x = relayout(torch.randn(B, C, H, W, device=device).to(dtype), layout)
    fmap = relayout(torch.randn(B, Kc, h, w, device=device).to(dtype), layout)
    t = torch.softmax(torch.randn(B, N, device=device) * 3, 1).to(dtype)
    q = torch.rand(B, device=device)
    q[0] = 0.0
    ids = torch.arange(B, device=device) * 5 + 2**33
    cfg = anm_fast.ANMConfig(area_lo=0.05, area_hi=0.3)
    return (x, fmap, t, q, ids, torch.tensor(seed), 1.0 / 255, cfg.area_lo, cfg.area_hi,
            cfg.quality_gain, cfg.aspect_lo, cfg.area_scale, anchor, uniform,
            torch.linspace(-1.0, 1.0, C), 1.0, True)


ANM_MASK_CASES = [  # B, C, H, W, K, h, w, N, dtype, layout, uniform, anchor
    (5, 3, 32, 32, 8, 4, 4, 10, torch.float32, "contiguous", True, True),
    (3, 2, 17, 40, 5, 3, 5, 3, torch.float16, "channels_last", False, False),  # 2 tiles
    (1, 1, 9, 8, 2, 2, 2, 2, torch.float64, "sliced", True, False),          # batch 1
    (2, 5, 12, 10, 3, 6, 5, 1500, torch.float32, "permuted", False, True),   # many classes
]


@pytest.mark.parametrize("case", ANM_MASK_CASES)
def test_anm_mask_equals_the_three_ops_and_the_cpu_kernel(device, case):
    B, C, H, W, Kc, h, w, N, dtype, layout, uniform, anchor = case
    args = anm_mask_args(B, C, H, W, Kc, h, w, N, dtype, layout, device, uniform, anchor)
    got = K.anm_mask(*args)
    cpu_args = tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)
    want = R.anm_mask(*cpu_args)
    names = ("erased", "targets", "box_max", "box_min", "ratio", "fill_max", "fill_min",
             "peak_max", "peak_min", "energy", "seed")
    assert len(got) == len(want) == len(names)
    for name, g, r in zip(names, got, want):
        assert g.device.type == torch.device(device).type, name
        assert g.dtype == r.dtype and g.shape == r.shape, name
        assert [st for st, n in zip(g.stride(), g.shape) if n > 1] == \
            [st for st, n in zip(r.stride(), r.shape) if n > 1], f"{name}: another layout"
        if name == "targets":
            rtol, atol = TOLERANCES[dtype]
            torch.testing.assert_close(g.cpu(), r, rtol=rtol, atol=atol)
        else:  # energy, peaks, boxes, fills, erased images: the same bits
            assert torch.equal(g.cpu(), r), f"{name} differs from the reference"
    if anm_fast.has_extension():
        for name, g, c in zip(names, got, torch.ops.anm_fast.anm_mask(*cpu_args)):
            if name != "targets":
                assert torch.equal(g.cpu(), c), f"{name} differs from the C++ kernel"


def test_anm_mask_empty_batch_and_seeds(device):
    args = list(anm_mask_args(2, 3, 8, 8, 4, 2, 2, 3, torch.float32, "contiguous", device))
    for seed in (0, -1, 2**63 - 1, -(2**63), 2**32):
        args[5] = torch.tensor(seed)
        out = K.anm_mask(*args)
        assert out[-1].item() == seed and out[-1].shape == ()
        want = R.sample_boxes(out[7].cpu(), out[8].cpu(), args[3].cpu(), args[4].cpu(),
                              torch.tensor(seed), 8, 8, 3, *args[7:12], True, True, args[14])
        for g, w in zip(out[2:7], want):
            assert torch.equal(g.cpu(), w)
    empty = [a[:0] if isinstance(a, torch.Tensor) and a.dim() else a for a in args]
    out = K.anm_mask(*empty)
    assert out[0].shape == (0, 3, 8, 8) and out[9].shape == (0, 2, 2) and out[-1].item() == 2**32


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
    args[15] = before_guard_page(args[15])  # the constant fills
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
               *args[8:13], args[13], False, args[15], 1.0, False)
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
    args = sample_args(B, 8, 8, 3, device)
    pmax, pmin, energy = K.activation_peaks(fmap, 8, 8, 0.0)
    bmax, bmin, ratio, fmax, fmin = K.sample_boxes(*args)
    erased, _ = K.erase_and_modulate(x, t, bmax, bmin, fmax, fmin, ratio, 1.0)
    K.erase_and_modulate_backward(erased, t, t, bmax, bmin, ratio, 1.0)
    K.anm_mask(x, fmap, t, args[2], args[3], args[4], 0.0, *args[8:13], True, True, args[15],
               1.0, False)


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
