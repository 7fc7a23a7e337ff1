"""activation_peaks on every backend against the reference: the same bits.

Every backend sums the energy in one order (csrc/anm_common.h, "energy summation order") and
resizes with the same taps and lerp, so energies and peaks equal the reference's exactly, for
every dtype and layout; the peaks also satisfy the band rule on the reference's resized map.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anm_fast import reference as R
from anm_fast.testing import assert_peaks_match, relayout

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["contiguous", "channels_last", "sliced", "permuted"]

SHAPES = [  # (B, K, h, w, H, W)
    (1, 1, 1, 1, 32, 32),        # 1x1 feature map: constant resized map, batch 1
    (3, 5, 4, 4, 32, 32),        # CIFAR-like
    (2, 7, 3, 5, 17, 29),        # non-square, odd
    (4, 3, 7, 7, 5, 6),          # image smaller than 8x8 and than the feature map
    (2, 4, 9, 11, 9, 11),        # same size: identity resize
    (2, 3, 16, 12, 40, 33),      # several energy tiles and several output tiles
    (2, 2048, 2, 3, 9, 9),       # many channels
    (2, 300, 2, 3, 7, 9),        # more channels than threads per block
    (2, 3, 30, 40, 40, 31),      # energy map larger than a block
    (1024, 8, 4, 4, 32, 32),     # large batch
    (4, 2048, 7, 7, 224, 224),   # ImageNet
    (2, 64, 56, 56, 224, 224),   # many positions
    (1, 4, 100, 120, 1000, 1100),  # energy map too big for shared memory
    (2, 3, 9, 7, 2000, 1500),    # tap tables too big for shared memory
    (2, 3, 8, 8, 512, 512),      # large image
    (1, 512, 4, 4, 32, 32),
    (1024, 512, 4, 4, 32, 32),
    (2, 1, 6, 6, 6, 6),          # one channel, same size
]


def assert_same_as_reference(got, fmap, H, W, band):
    pmax, pmin, energy = got
    rmax, rmin, renergy = R.activation_peaks(fmap, H, W, band)
    B, _, h, w = fmap.shape
    assert pmax.dtype == torch.int64 and pmax.shape == (B, 2) and pmin.shape == (B, 2)
    assert energy.dtype == torch.float32 and energy.shape == (B, h, w)
    assert energy.is_contiguous()
    assert_peaks_match(pmax, pmin, renergy, H, W, band)
    assert torch.equal(energy, renergy), "energy differs from the reference"
    assert torch.equal(pmax, rmax) and torch.equal(pmin, rmin), "peaks differ from the reference"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(backend, shape, layout, dtype):
    B, K, h, w, H, W = shape
    # the interpreter takes every shape in float32, the small ones in every dtype
    backend.skip_large((B * K * h * w + B * H * W) * (1 if dtype == torch.float32 else 8),
                       limit=60_000)
    if B * K * h * w > 2_000_000 and layout != "contiguous":
        pytest.skip("large shape: contiguous only")
    fmap = relayout(torch.randn(B, K, h, w).to(dtype), layout)
    for band in (0.0, 1.0 / 255.0, 0.3):
        assert_same_as_reference(backend("activation_peaks", fmap, H, W, band), fmap, H, W, band)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dtypes(backend, dtype, layout):
    # float64 maps: normalised in float64, rounded to float32 once
    fmap = relayout(torch.randn(16, 32, 5, 6).to(dtype), layout)
    assert_same_as_reference(backend("activation_peaks", fmap, 23, 31, 0.0), fmap, 23, 31, 0.0)


def test_exact_ties_take_first_occurrence(backend):
    # A constant map: every pixel ties, the first pixel (0, 0) is both peaks.
    pmax, pmin, energy = backend("activation_peaks", torch.ones(4, 3, 4, 4), 32, 32, 0.0)
    assert pmax.tolist() == [[0, 0]] * 4 and pmin.tolist() == [[0, 0]] * 4
    assert torch.allclose(energy, torch.full_like(energy, 0.25))
    # One hot spot at fmap position (1, 2) in an 8x8 map resized to itself.
    fmap = torch.zeros(1, 2, 8, 8)
    fmap[0, :, 1, 2] = 3.0
    pmax, pmin, energy = backend("activation_peaks", fmap, 8, 8, 0.0)
    assert pmax.tolist() == [[1, 2]] and pmin.tolist() == [[0, 0]]
    assert float(energy.norm()) == pytest.approx(1.0)
    # A single hot position of a 4x4 map: the max is the first pixel of its clamped plateau.
    fmap = torch.zeros(1, 2, 4, 4)
    fmap[0, :, 3, 3] = 1.0
    got = backend("activation_peaks", fmap, 32, 32, 0.0)
    assert_same_as_reference(got, fmap, 32, 32, 0.0)


def test_energy_of_zero_map_is_zero_not_nan(backend):
    pmax, pmin, energy = backend("activation_peaks", torch.zeros(2, 3, 4, 4), 8, 8, 0.0)
    assert torch.equal(energy, torch.zeros(2, 4, 4))
    assert pmax.tolist() == [[0, 0], [0, 0]] and pmin.tolist() == [[0, 0], [0, 0]]


def test_empty_batch(backend):
    pmax, pmin, energy = backend("activation_peaks", torch.randn(0, 4, 4, 4), 32, 32, 0.0)
    assert pmax.shape == (0, 2) and pmin.shape == (0, 2) and energy.shape == (0, 4, 4)


@st.composite
def feature_maps(draw):
    """A batch of random maps: any small shape, dtype and layout, values from several scales
    (and exact ties from small integers) so that near-ties and plateaus are common."""
    B = draw(st.integers(1, 48))
    K = draw(st.integers(1, 9))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    H, W = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    if draw(st.booleans()):
        values = torch.randint(-2, 3, (B, K, h, w), generator=gen).float()  # ties
    else:
        values = torch.randn(B, K, h, w, generator=gen) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
    band = draw(st.sampled_from([0.0, 1.0 / 255.0, 0.25]))
    return relayout(values.to(dtype), layout), H, W, band


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=feature_maps())
def test_bit_identical_on_random_maps(backend, case):
    # ~60 batches of up to 48 maps: over a thousand random maps per backend and run
    fmap, H, W, band = case
    assert_same_as_reference(backend("activation_peaks", fmap, H, W, band), fmap, H, W, band)


def test_maps_and_taps_past_shared_memory(backend):
    # A 110 x 100 float64 map (88 KB) and a 4000-pixel-wide image: neither the map nor the tap
    # table fits a CUDA block's shared memory, so both paths outside it run.
    backend.skip_large(2 * 3 * 110 * 100 + 2 * 5 * 4000)
    fmap = torch.randn(2, 3, 110, 100, dtype=torch.float64)
    assert_same_as_reference(backend("activation_peaks", fmap, 5, 4000, 0.1), fmap, 5, 4000, 0.1)


def test_bit_identical_on_thousands_of_maps(backend):
    """2048 random maps (64 batches of 32): every layout, the three half and single precision
    dtypes, random sizes, maps with many exact and near ties (few distinct values)."""
    if backend.interpreted:
        pytest.skip("the interpreter takes the hypothesis maps (test_bit_identical_on_random_maps)")
    gen = torch.Generator().manual_seed(5)
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    for i in range(64):
        K = int(torch.randint(1, 70, (1,), generator=gen))
        h, w = (int(v) for v in torch.randint(1, 9, (2,), generator=gen))
        H, W = (int(v) for v in torch.randint(3, 40, (2,), generator=gen))
        f = torch.randn(32, K, h, w, generator=gen)
        if i % 3 == 0:
            f = torch.round(f * 2) / 2
        fmap = relayout(f.to(dtypes[i % 3]), LAYOUTS[i % 4])
        band = (0.0, 1.0 / 255.0, 0.3)[i % 3]
        assert_same_as_reference(backend("activation_peaks", fmap, H, W, band), fmap, H, W, band)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_reference_is_the_same_bits_on_cuda_and_cpu():
    # The oracle itself must not depend on the device: ATen divides by a Python number as a
    # multiply by its reciprocal on CUDA, so every division in the reference is by a tensor.
    for n_in in range(1, 40):
        for n_out in (1, 3, 7, 13, 31, 32, 49, 224, 225, 1000):
            for a, b in zip(R.linear_taps(n_in, n_out, "cuda"), R.linear_taps(n_in, n_out, "cpu")):
                assert torch.equal(a.cpu(), b), (n_in, n_out)
    fmap = torch.randn(16, 64, 7, 7, generator=torch.Generator().manual_seed(4))
    for a, b in zip(R.activation_peaks(fmap.cuda(), 224, 224, 1.0 / 255),
                    R.activation_peaks(fmap, 224, 224, 1.0 / 255)):
        assert torch.equal(a.cpu(), b)
