"""The C++ CPU kernels against the pure-PyTorch reference, op by op.

Boxes and fills must be bit-identical; peaks equal up to float near-ties (anm_fast.testing);
floats within the per-dtype tolerances of anm_fast.testing.TOLERANCES.
"""
import pytest
import torch

import anm_fast
from anm_fast import reference as R
from anm_fast.testing import TOLERANCES, assert_peaks_match, relayout, sample_boxes_args

ops = torch.ops.anm_fast
pytestmark = pytest.mark.skipif(not anm_fast.has_extension(),
                                reason="compiled extension not built: "
                                       f"{anm_fast.extension_error()}")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]




# ------------------------------------------------------------------------------ activation_peaks
SHAPES = [  # (B, K, h, w, H, W)
    (1, 1, 1, 1, 32, 32),       # 1x1 feature map: constant resized map
    (3, 5, 4, 4, 32, 32),       # CIFAR-like
    (2, 7, 3, 5, 17, 29),       # non-square, odd
    (4, 3, 7, 7, 5, 6),         # image smaller than 8x8 and than the feature map
    (2, 4, 9, 11, 9, 11),       # same size: identity resize
    (1024, 8, 4, 4, 32, 32),    # large batch
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "permuted"])
@pytest.mark.parametrize("band", [0.0, 1.0 / 255.0, 0.3])
def test_activation_peaks_matches_reference(shape, layout, band):
    B, K, h, w, H, W = shape
    fmap = relayout(torch.randn(B, K, h, w), layout)
    pmax, pmin, energy = ops.activation_peaks(fmap, H, W, band)
    rmax, rmin, renergy = R.activation_peaks(fmap, H, W, band)
    torch.testing.assert_close(energy, renergy, rtol=1e-5, atol=1e-6)
    assert energy.dtype == torch.float32 and energy.is_contiguous()
    assert_peaks_match(pmax, pmin, renergy, H, W, band)
    # Plateaus hold exactly equal values (lerp form), so only near-ties between distinct energy
    # values (summation order) can differ: practically every peak is exactly the reference's.
    same = ((pmax == rmax).all(1) & (pmin == rmin).all(1)).float().mean()
    assert same >= 0.99


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_peaks_dtypes(dtype):
    fmap = torch.randn(16, 32, 5, 6).to(dtype)
    pmax, pmin, energy = ops.activation_peaks(fmap, 23, 31, 0.0)
    rmax, rmin, renergy = R.activation_peaks(fmap, 23, 31, 0.0)
    torch.testing.assert_close(energy, renergy, rtol=1e-5, atol=1e-6)
    assert_peaks_match(pmax, pmin, renergy, 23, 31)


def test_activation_peaks_exact_ties_take_first_occurrence():
    # A constant map: every pixel ties, the first pixel (0, 0) is both peaks.
    fmap = torch.ones(2, 3, 4, 4)
    pmax, pmin, _ = ops.activation_peaks(fmap, 8, 8, 0.0)
    assert pmax.tolist() == [[0, 0], [0, 0]] and pmin.tolist() == [[0, 0], [0, 0]]
    # One hot spot at fmap position (1, 2) in an 8x8 map resized to itself.
    fmap = torch.zeros(1, 2, 8, 8)
    fmap[0, :, 1, 2] = 3.0
    pmax, pmin, energy = ops.activation_peaks(fmap, 8, 8, 0.0)
    assert pmax.tolist() == [[1, 2]] and pmin.tolist() == [[0, 0]]
    assert float(energy.norm()) == pytest.approx(1.0)


def test_energy_of_zero_map_is_zero_not_nan():
    pmax, pmin, energy = ops.activation_peaks(torch.zeros(2, 3, 4, 4), 8, 8, 0.0)
    assert torch.equal(energy, torch.zeros(2, 4, 4))
    assert pmax.tolist() == [[0, 0], [0, 0]]


# ---------------------------------------------------------------------------------- sample_boxes
def sample_args(B, H, W, C, **kwargs):
    return sample_boxes_args(B, H, W, C, fill_value=0.25, **kwargs)


@pytest.mark.parametrize("B,H,W,C", [(1, 32, 32, 3), (257, 32, 32, 3), (64, 5, 7, 1),
                                     (33, 224, 224, 3), (16, 9, 300, 5), (1024, 32, 32, 3)])
@pytest.mark.parametrize("anchor", [True, False])
@pytest.mark.parametrize("config", [anm_fast.ANMConfig.cifar(), anm_fast.ANMConfig.clothing1m(),
                                    anm_fast.ANMConfig(area_lo=0.9, area_hi=1.0, aspect_lo=0.1,
                                                       area_scale=3.0)])
def test_sample_boxes_bit_exact(B, H, W, C, anchor, config):
    args = sample_args(B, H, W, C, anchor=anchor, config=config)
    got = ops.sample_boxes(*args)
    want = R.sample_boxes(*args)
    for g, w, name in zip(got, want, ("box_max", "box_min", "ratio", "fill_max", "fill_min")):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g, w), f"{name} differs from the reference"
    box = got[0]
    assert bool((box[:, 2] >= 1).all() and (box[:, 3] >= 1).all())
    assert bool((box[:, 0] >= 0).all() and (box[:, 0] + box[:, 2] <= H).all())
    assert bool((box[:, 1] >= 0).all() and (box[:, 1] + box[:, 3] <= W).all())


def test_sample_boxes_constant_fill_and_large_seeds():
    args = list(sample_args(40, 32, 32, 3, uniform=False))
    got = ops.sample_boxes(*args)
    assert torch.equal(got[3], torch.full((40, 3), 0.25))
    for seed in (0, 2**32 - 1, 2**32, -1, -(2**63), 2**63 - 1):
        args = sample_args(40, 32, 32, 3, seed=seed)
        for g, w in zip(ops.sample_boxes(*args), R.sample_boxes(*args)):
            assert torch.equal(g, w)


def test_sample_ids_beyond_32_bits():
    ids = torch.tensor([0, 1, 2**32, 2**32 + 1, 2**40 + 5, -3])
    args = sample_args(6, 32, 32, 3, ids=ids)
    for g, w in zip(ops.sample_boxes(*args), R.sample_boxes(*args)):
        assert torch.equal(g, w)
    # ids that differ only in the high word must give different streams
    assert not torch.equal(ops.sample_boxes(*args)[3][0], ops.sample_boxes(*args)[3][2])


# ------------------------------------------------------------------------------ erase_and_modulate
def erase_inputs(B, C, H, W, N, dtype, layout, seed=3):
    x = relayout(torch.randn(B, C, H, W).to(dtype), layout)
    t = torch.softmax(torch.randn(B, N) * 3, dim=1).to(dtype)
    boxes = ops.sample_boxes(*sample_args(B, H, W, C, seed=seed))
    return x, t, boxes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "permuted"])
@pytest.mark.parametrize("shape", [(1, 3, 32, 32, 10), (7, 1, 5, 7, 2), (64, 3, 17, 9, 100),
                                   (4, 5, 40, 33, 3), (1024, 3, 8, 8, 10)])
def test_erase_and_modulate_matches_reference(dtype, layout, shape):
    B, C, H, W, N = shape
    x, t, (bmax, bmin, ratio, fmax, fmin) = erase_inputs(B, C, H, W, N, dtype, layout)
    erased, targets = ops.erase_and_modulate(x, t, bmax, bmin, fmax, fmin, ratio, 1.0)
    r_erased, r_targets = R.erase_and_modulate(x, t, bmax, bmin, fmax, fmin, ratio, 1.0)
    assert erased.shape == (2 * B, C, H, W) and erased.dtype == dtype
    assert erased.stride() == r_erased.stride(), "output layout differs from the reference rule"
    # Copies and constant fills are exact in every dtype.
    assert torch.equal(erased, r_erased)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(targets, r_targets, rtol=rtol, atol=atol)
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(targets.sum(1), torch.ones(B, dtype=dtype), rtol=0, atol=1e-6)


def test_erase_layout_rule():
    x = torch.randn(2, 3, 8, 8)
    t = torch.eye(4)[:2]
    boxes = ops.sample_boxes(*sample_args(2, 8, 8, 3))
    bmax, bmin, ratio, fmax, fmin = boxes
    out = ops.erase_and_modulate(x.contiguous(memory_format=torch.channels_last), t, bmax, bmin,
                                 fmax, fmin, ratio, 1.0)[0]
    assert out.is_contiguous(memory_format=torch.channels_last)
    out = ops.erase_and_modulate(x[:, :, ::1, :], t, bmax, bmin, fmax, fmin, ratio, 1.0)[0]
    assert out.is_contiguous()


def test_label_shift_follows_the_spec():
    t = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.5, 0.3, 0.2, 0.0], [0.04, 0.02, 0.9, 0.04]])
    ratio = torch.tensor([0.06, 0.3, 2.0])
    box = torch.tensor([[0, 0, 1, 1]] * 3)
    fills = torch.zeros(3, 1)
    _, out = ops.erase_and_modulate(torch.zeros(3, 1, 2, 2), t, box, box, fills, fills, ratio, 1.0)
    want = torch.tensor([[0.02, 0.94, 0.02, 0.02],          # d = s = 0.06
                         [0.2, 0.4, 0.3, 0.1],               # d = s = 0.3
                         [0.34, 0.32, 0.0, 0.34]])           # d clamped to t_k = 0.9
    torch.testing.assert_close(out, want)
    _, out = ops.erase_and_modulate(torch.zeros(3, 1, 2, 2), t, box, box, fills, fills, ratio, 0.5)
    torch.testing.assert_close(out[0], torch.tensor([0.01, 0.97, 0.01, 0.01]))
    # ties in the top class: the first occurrence gives the mass
    tie = torch.tensor([[0.5, 0.5]])
    _, out = ops.erase_and_modulate(torch.zeros(1, 1, 2, 2), tie, box[:1], box[:1], fills[:1],
                                    fills[:1], torch.tensor([0.1]), 1.0)
    torch.testing.assert_close(out, torch.tensor([[0.4, 0.6]]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_erase_backward_matches_reference(dtype, layout):
    B, C, H, W, N = 6, 3, 11, 9, 5
    x, t, (bmax, bmin, ratio, fmax, fmin) = erase_inputs(B, C, H, W, N, dtype, "contiguous")
    ratio = ratio.clone()
    ratio[0] = 5.0  # clamp active for sample 0
    g = relayout(torch.randn(2 * B, C, H, W).to(dtype), layout)
    gt = torch.randn(B, N).to(dtype)
    gx, gtt = ops.erase_and_modulate_backward(g, gt, t, bmax, bmin, ratio, 1.0)
    rgx, rgtt = R.erase_and_modulate_backward(g, gt, t, bmax, bmin, ratio, 1.0)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(gx, rgx, rtol=rtol, atol=atol)
    torch.testing.assert_close(gtt, rgtt, rtol=rtol, atol=atol)
    assert gx.stride() == rgx.stride()


def test_empty_batch():
    fmap = torch.randn(0, 4, 4, 4)
    pmax, pmin, energy = ops.activation_peaks(fmap, 32, 32, 0.0)
    assert pmax.shape == (0, 2) and energy.shape == (0, 4, 4)
