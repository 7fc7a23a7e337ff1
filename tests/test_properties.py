"""Property-based tests (hypothesis): every public op against the reference over random shapes,
dtypes, memory layouts, configs and seeds. Thousands of cases in CI time."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anm_fast
from anm_fast import ANMConfig
from anm_fast import reference as R
from anm_fast.testing import TOLERANCES, assert_peaks_match, relayout

ops = torch.ops.anm_fast
FAST = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64])
layouts = st.sampled_from(["contiguous", "channels_last", "sliced", "permuted", "transposed"])




configs = st.builds(
    ANMConfig,
    area_lo=st.floats(0.0, 0.5), area_hi=st.just(0.6),
    quality_gain=st.floats(0.0, 0.5), aspect_lo=st.floats(0.05, 1.0),
    area_scale=st.floats(0.05, 3.0), anchor=st.sampled_from(["center", "corner"]),
    band=st.floats(0.0, 0.9), fill=st.sampled_from(["uniform", "zero", (0.5,)]),
    label_gain=st.floats(0.0, 5.0))


@FAST
@given(B=st.integers(1, 9), K=st.integers(1, 9), h=st.integers(1, 9), w=st.integers(1, 9),
       H=st.integers(1, 40), W=st.integers(1, 40), band=st.floats(0.0, 0.99), dtype=dtypes,
       layout=layouts, seed=st.integers(0, 2**31))
def test_activation_peaks_property(B, K, h, w, H, W, band, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    fmap = relayout(torch.randn(B, K, h, w, generator=g).to(dtype), layout)
    pmax, pmin, energy = anm_fast.activation_peaks(fmap, (H, W), band=band)
    rmax, rmin, renergy = R.activation_peaks(fmap, H, W, band)
    torch.testing.assert_close(energy, renergy, rtol=1e-5, atol=1e-6)
    assert_peaks_match(pmax, pmin, renergy, H, W, band)


@FAST
@given(B=st.integers(1, 20), H=st.integers(1, 300), W=st.integers(1, 300), C=st.integers(1, 5),
       config=configs, seed=st.integers(-2**63, 2**63 - 1), id0=st.integers(0, 2**50),
       qseed=st.integers(0, 2**31))
def test_sample_boxes_property(B, H, W, C, config, seed, id0, qseed):
    g = torch.Generator().manual_seed(qseed)
    peaks = torch.stack((torch.randint(0, H, (B,), generator=g),
                         torch.randint(0, W, (B,), generator=g)), 1)
    q = torch.rand(B, generator=g)
    ids = torch.arange(id0, id0 + B)
    got = anm_fast.sample_boxes(peaks, peaks.flip(0), q, (H, W), C, config=config, seed=seed,
                                sample_ids=ids)
    _, values = config.fill_values(C)
    want = R.sample_boxes(peaks, peaks.flip(0), q, ids, torch.tensor(seed), H, W, C,
                          config.box_params(), torch.tensor(values))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    box = got.box_max
    assert bool(((box[:, 0] >= 0) & (box[:, 0] + box[:, 2] <= H) & (box[:, 2] >= 1)).all())
    assert bool(((box[:, 1] >= 0) & (box[:, 1] + box[:, 3] <= W) & (box[:, 3] >= 1)).all())


@FAST
@given(B=st.integers(1, 6), C=st.integers(1, 4), H=st.integers(1, 24), W=st.integers(1, 24),
       N=st.integers(2, 12), dtype=dtypes, layout=layouts, gain=st.floats(0.0, 20.0),
       seed=st.integers(0, 2**31), hard=st.booleans())
def test_erase_and_modulate_property(B, C, H, W, N, dtype, layout, gain, seed, hard):
    g = torch.Generator().manual_seed(seed)
    x = relayout(torch.randn(B, C, H, W, generator=g).to(dtype), layout)
    if hard:
        t = torch.nn.functional.one_hot(torch.randint(0, N, (B,), generator=g), N).to(dtype)
    else:
        t = torch.softmax(torch.randn(B, N, generator=g) * 3, 1).to(dtype)
    peaks = torch.stack((torch.randint(0, H, (B,), generator=g),
                         torch.randint(0, W, (B,), generator=g)), 1)
    boxes = anm_fast.sample_boxes(peaks, peaks.flip(0), torch.rand(B, generator=g), (H, W), C,
                                  seed=seed)
    args = (boxes.box_max, boxes.box_min, boxes.fill_max, boxes.fill_min, boxes.ratio)
    out = anm_fast.erase_and_modulate(x, t, *args, label_gain=gain)
    ref = R.erase_and_modulate(x, t, *args, gain)
    assert torch.equal(out.erased, ref[0])
    assert out.erased.stride() == ref[0].stride()
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(out.targets, ref[1], rtol=rtol, atol=atol)
    # the modulated targets stay a distribution (no negative mass)
    assert bool((out.targets.float() >= -atol).all())
    g_e = relayout(torch.randn(2 * B, C, H, W, generator=g).to(dtype), layout)
    g_t = torch.randn(B, N, generator=g).to(dtype)
    bwd = ops.erase_and_modulate_backward(g_e, g_t, t, boxes.box_max, boxes.box_min, boxes.ratio,
                                          gain)
    rbwd = R.erase_and_modulate_backward(g_e, g_t, t, boxes.box_max, boxes.box_min, boxes.ratio,
                                         gain)
    torch.testing.assert_close(bwd[0], rbwd[0], rtol=rtol, atol=atol)
    torch.testing.assert_close(bwd[1], rbwd[1], rtol=rtol, atol=4 * atol)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(B=st.integers(1, 8), seed=st.integers(0, 2**62), split=st.integers(1, 7))
def test_batch_split_invariance_property(B, seed, split):
    split = min(split, B)
    g = torch.Generator().manual_seed(seed % 2**31)
    x = torch.randn(B, 3, 16, 16, generator=g)
    fmap = torch.randn(B, 4, 4, 4, generator=g)
    q = torch.rand(B, generator=g)
    y = torch.randint(0, 5, (B,), generator=g)
    ids = torch.randperm(1000, generator=g)[:B]
    whole = anm_fast.anm_mask(x, fmap, y, q, seed=seed, sample_ids=ids, num_classes=5)
    a = anm_fast.anm_mask(x[:split], fmap[:split], y[:split], q[:split], seed=seed,
                          sample_ids=ids[:split], num_classes=5)
    assert torch.equal(a.box_max, whole.box_max[:split])
    assert torch.equal(a.fill_min, whole.fill_min[:split])
    assert torch.equal(a.erased[:split], whole.erased[:split])
