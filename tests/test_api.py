"""The public API: results, determinism, batch-split invariance, hard labels, bad input."""
import math

import pytest
import torch

import anm_fast
from anm_fast import ANMConfig


def batch(B=8, C=3, H=32, W=32, K=16, h=4, w=4, N=10):
    x = torch.randn(B, C, H, W)
    fmap = torch.randn(B, K, h, w)
    t = torch.softmax(torch.randn(B, N) * 2, 1)
    q = torch.rand(B)
    return x, fmap, t, q


def test_anm_mask_fields_and_shapes():
    x, fmap, t, q = batch()
    m = anm_fast.anm_mask(x, fmap, t, q, seed=1)
    assert m.erased.shape == (16, 3, 32, 32) and m.targets.shape == (8, 10)
    assert m.box_max.shape == (8, 4) and m.box_max.dtype == torch.int64
    assert m.peak_max.shape == (8, 2) and m.energy.shape == (8, 4, 4)
    assert m.ratio.shape == (8,) and m.fill_max.shape == (8, 3)
    assert int(m.seed) == 1
    # the first B images are max-erased, the next B min-erased; outside the boxes x is unchanged
    from anm_fast.reference import box_mask
    keep_max = ~box_mask(m.box_max, 32, 32)
    keep_min = ~box_mask(m.box_min, 32, 32)
    assert torch.equal(m.erased[:8][keep_max.expand(-1, 3, -1, -1)],
                       x[keep_max.expand(-1, 3, -1, -1)])
    assert torch.equal(m.erased[8:][keep_min.expand(-1, 3, -1, -1)],
                       x[keep_min.expand(-1, 3, -1, -1)])
    # the max box sits on the peak of the activation map (centre anchor, shifted to fit)
    peaks = anm_fast.activation_peaks(fmap, 32)
    assert torch.equal(peaks.peak_max, m.peak_max)


def test_same_seed_same_result_and_manual_seed_repeats():
    x, fmap, t, q = batch()
    a = anm_fast.anm_mask(x, fmap, t, q, seed=42)
    b = anm_fast.anm_mask(x, fmap, t, q, seed=42)
    c = anm_fast.anm_mask(x, fmap, t, q, seed=43)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a.fill_max, c.fill_max)
    torch.manual_seed(5)
    d = anm_fast.anm_mask(x, fmap, t, q)
    torch.manual_seed(5)
    e = anm_fast.anm_mask(x, fmap, t, q)
    assert torch.equal(d.erased, e.erased) and torch.equal(d.seed, e.seed)


def test_batch_split_with_sample_ids_gives_the_same_boxes():
    x, fmap, t, q = batch(B=12)
    ids = torch.arange(100, 112)
    whole = anm_fast.anm_mask(x, fmap, t, q, seed=9, sample_ids=ids)
    first = anm_fast.anm_mask(x[:5], fmap[:5], t[:5], q[:5], seed=9, sample_ids=ids[:5])
    second = anm_fast.anm_mask(x[5:], fmap[5:], t[5:], q[5:], seed=9, sample_ids=ids[5:])
    for name in ("box_max", "box_min", "ratio", "fill_max", "fill_min", "targets"):
        joined = torch.cat((getattr(first, name), getattr(second, name)))
        assert torch.equal(joined, getattr(whole, name)), name
    # and a permuted batch gives each sample the same box
    perm = torch.randperm(12)
    shuffled = anm_fast.anm_mask(x[perm], fmap[perm], t[perm], q[perm], seed=9,
                                 sample_ids=ids[perm])
    assert torch.equal(shuffled.box_min, whole.box_min[perm])


def test_hard_labels_become_one_hot():
    x, fmap, _, q = batch()
    y = torch.randint(0, 10, (8,))
    m = anm_fast.anm_mask(x, fmap, y, q, num_classes=10, seed=0)
    soft = anm_fast.anm_mask(x, fmap, torch.nn.functional.one_hot(y, 10).float(), q, seed=0)
    assert torch.equal(m.targets, soft.targets)
    assert torch.equal(m.targets.argmax(1), y)
    torch.testing.assert_close(m.targets.sum(1), torch.ones(8))


def test_quality_drives_box_size_and_label_softening():
    B = 400
    x, fmap, t, _ = batch(B=B)
    y = torch.randint(0, 10, (B,))
    clean = anm_fast.anm_mask(x, fmap, y, torch.ones(B), num_classes=10, seed=3)
    noisy = anm_fast.anm_mask(x, fmap, y, torch.zeros(B), num_classes=10, seed=3)
    # same draws, the quality term adds exactly quality_gain to s
    torch.testing.assert_close(noisy.ratio - clean.ratio, torch.full((B,), 0.03))
    area = lambda m: (m.box_max[:, 2] * m.box_max[:, 3]).float()  # noqa: E731
    assert bool((area(noisy) >= area(clean)).all()) and area(noisy).mean() > area(clean).mean()
    top = lambda m: m.targets.gather(1, y[:, None])[:, 0]  # noqa: E731
    torch.testing.assert_close(top(clean), 1 - clean.ratio)
    torch.testing.assert_close(top(noisy), 1 - noisy.ratio)


def test_fill_modes():
    x, fmap, t, q = batch()
    zero = anm_fast.anm_mask(x, fmap, t, q, seed=0, config=ANMConfig(fill="zero"))
    assert torch.equal(zero.fill_max, torch.zeros(8, 3))
    mean = anm_fast.anm_mask(x, fmap, t, q, seed=0, config=ANMConfig(fill=(0.1, 0.2, 0.3)))
    assert torch.equal(mean.fill_min, torch.tensor([[0.1, 0.2, 0.3]]).expand(8, 3))
    one = anm_fast.anm_mask(x, fmap, t, q, seed=0, config=ANMConfig(fill=(0.5,)))
    assert torch.equal(one.fill_min, torch.full((8, 3), 0.5))
    with pytest.raises(ValueError, match="fill"):
        anm_fast.anm_mask(x, fmap, t, q, seed=0, config=ANMConfig(fill=(0.1, 0.2)))


def test_corner_anchor_places_the_peak_at_the_top_left():
    B = 50
    x, fmap, t, q = batch(B=B)
    m = anm_fast.anm_mask(x, fmap, t, q, seed=0, config=ANMConfig.sanm_official())
    y0, x0, bh, bw = m.box_max.unbind(1)
    r, c = m.peak_max.unbind(1)
    assert torch.equal(y0, torch.minimum(r, 32 - bh))
    assert torch.equal(x0, torch.minimum(c, 32 - bw))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_double_precision(dtype):
    x, fmap, t, q = batch()
    m = anm_fast.anm_mask(x.to(dtype), fmap.to(dtype), t.to(dtype), q, seed=0)
    assert m.erased.dtype == dtype and m.targets.dtype == dtype


def test_channels_last_kept():
    x, fmap, t, q = batch()
    m = anm_fast.anm_mask(x.contiguous(memory_format=torch.channels_last),
                          fmap.contiguous(memory_format=torch.channels_last), t, q, seed=0)
    assert m.erased.is_contiguous(memory_format=torch.channels_last)
    ref = anm_fast.anm_mask(x, fmap, t, q, seed=0)
    assert torch.equal(m.erased, ref.erased)


def test_checks_can_be_turned_off():
    x, fmap, t, q = batch()
    anm_fast.set_checks(False)
    try:
        anm_fast.anm_mask(x, fmap, t, q + 5, seed=0)  # not checked: caller's responsibility
    finally:
        anm_fast.set_checks(True)
    with pytest.raises(ValueError, match="quality"):
        anm_fast.anm_mask(x, fmap, t, q + 5, seed=0)


# --------------------------------------------------------------------------------- bad input
BAD_INPUTS = [
    # (description, call, exception, message fragment)
    ("x wrong rank", lambda x, f, t, q: anm_fast.anm_mask(x[0], f, t, q), ValueError, "x must be"),
    ("fmap wrong rank", lambda x, f, t, q: anm_fast.anm_mask(x, f[:, 0], t, q), ValueError, "fmap"),
    ("batch mismatch fmap", lambda x, f, t, q: anm_fast.anm_mask(x, f[:3], t, q), ValueError,
     "fmap has batch size 3"),
    ("batch mismatch targets", lambda x, f, t, q: anm_fast.anm_mask(x, f, t[:3], q), ValueError,
     "targets has batch size 3"),
    ("batch mismatch quality", lambda x, f, t, q: anm_fast.anm_mask(x, f, t, q[:3]), ValueError,
     "quality must have shape"),
    ("quality above 1", lambda x, f, t, q: anm_fast.anm_mask(x, f, t, q + 1.5), ValueError,
     "quality must lie in"),
    ("quality NaN", lambda x, f, t, q: anm_fast.anm_mask(x, f, t, q * float("nan")), ValueError,
     "NaN"),
    ("integer quality", lambda x, f, t, q: anm_fast.anm_mask(x, f, t, (q > 2).long()), TypeError,
     "quality"),
    ("one class", lambda x, f, t, q: anm_fast.anm_mask(x, f, t[:, :1], q), ValueError,
     "at least 2 classes"),
    ("integer images", lambda x, f, t, q: anm_fast.anm_mask((x * 10).to(torch.uint8), f, t, q),
     TypeError, "x must be a floating"),
    ("hard labels without num_classes", lambda x, f, t, q: anm_fast.anm_mask(
        x, f, t.argmax(1), q), ValueError, "num_classes"),
    ("labels out of range", lambda x, f, t, q: anm_fast.anm_mask(
        x, f, t.argmax(1) + 20, q, num_classes=10), ValueError, "outside"),
    ("non-finite fmap", lambda x, f, t, q: anm_fast.anm_mask(
        x, f.index_fill(2, torch.tensor([1]), float("inf")), t, q), ValueError, "non-finite"),
    ("NaN fmap", lambda x, f, t, q: anm_fast.anm_mask(x, f * float("nan"), t, q), ValueError,
     "non-finite"),
    ("numpy images", lambda x, f, t, q: anm_fast.anm_mask(x.numpy(), f, t, q), TypeError,
     "x must be a torch.Tensor"),
    ("bad seed", lambda x, f, t, q: anm_fast.anm_mask(x, f, t, q, seed=1.5), TypeError, "seed"),
    ("bad config", lambda x, f, t, q: anm_fast.anm_mask(x, f, t, q, config={"band": 0}),
     TypeError, "config"),
    ("sample_ids wrong shape", lambda x, f, t, q: anm_fast.anm_mask(
        x, f, t, q, sample_ids=torch.arange(3)), ValueError, "sample_ids"),
    ("float sample_ids", lambda x, f, t, q: anm_fast.anm_mask(
        x, f, t, q, sample_ids=torch.arange(8.0)), TypeError, "sample_ids"),
    ("empty fmap", lambda x, f, t, q: anm_fast.activation_peaks(f[:, :0], 32), ValueError,
     "non-empty"),
    ("bad image size", lambda x, f, t, q: anm_fast.activation_peaks(f, (0, 4)), ValueError,
     "image_size"),
    ("bad band", lambda x, f, t, q: anm_fast.activation_peaks(f, 32, band=1.0), ValueError,
     "band"),
    ("peaks outside", lambda x, f, t, q: anm_fast.sample_boxes(
        torch.full((8, 2), 40), torch.zeros(8, 2, dtype=torch.long), q, 32, 3, seed=0),
     ValueError, "outside"),
    ("float peaks", lambda x, f, t, q: anm_fast.sample_boxes(
        torch.zeros(8, 2), torch.zeros(8, 2), q, 32, 3, seed=0), TypeError, "integer"),
    ("bad channels", lambda x, f, t, q: anm_fast.sample_boxes(
        torch.zeros(8, 2, dtype=torch.long), torch.zeros(8, 2, dtype=torch.long), q, 32, 0,
        seed=0), ValueError, "channels"),
    ("box shape", lambda x, f, t, q: anm_fast.erase_and_modulate(
        x, t, torch.zeros(8, 3, dtype=torch.long), torch.zeros(8, 4, dtype=torch.long),
        torch.zeros(8, 3), torch.zeros(8, 3), q), ValueError, "box_max"),
    ("fill shape", lambda x, f, t, q: anm_fast.erase_and_modulate(
        x, t, torch.zeros(8, 4, dtype=torch.long), torch.zeros(8, 4, dtype=torch.long),
        torch.zeros(8, 2), torch.zeros(8, 3), q), ValueError, "fill_max"),
    ("negative label gain", lambda x, f, t, q: anm_fast.erase_and_modulate(
        x, t, torch.zeros(8, 4, dtype=torch.long), torch.zeros(8, 4, dtype=torch.long),
        torch.zeros(8, 3), torch.zeros(8, 3), q, label_gain=-1), ValueError, "label_gain"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_clear_error(case):
    _, call, exc, fragment = case
    x, fmap, t, q = batch()
    with pytest.raises(exc, match=fragment):
        call(x, fmap, t, q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_mismatch():
    x, fmap, t, q = batch()
    with pytest.raises(ValueError, match="device"):
        anm_fast.anm_mask(x, fmap.cuda(), t, q)


def test_device_mismatch_meta():
    # Without a GPU, the meta device stands in for a second device.
    x, fmap, t, q = batch()
    with pytest.raises(ValueError, match="fmap is on meta"):
        anm_fast.anm_mask(x, fmap.to("meta"), t, q)
    with pytest.raises(ValueError, match="quality is on meta"):
        anm_fast.anm_mask(x, fmap, t, q.to("meta"))


BAD_CONFIGS = [
    dict(area_lo=0.1, area_hi=0.05), dict(area_lo=-0.1), dict(aspect_lo=0.0),
    dict(aspect_lo=1.5), dict(anchor="middle"), dict(band=1.0), dict(band=-0.1),
    dict(fill="noise"), dict(fill=()), dict(area_scale=0), dict(quality_gain=-1),
    dict(label_gain=-1), dict(area_hi=math.inf), dict(area_lo="0.1"), dict(fill=(math.nan,)),
]


@pytest.mark.parametrize("bad", BAD_CONFIGS, ids=[str(b) for b in BAD_CONFIGS])
def test_impossible_configs_rejected(bad):
    with pytest.raises(ValueError, match="ANMConfig"):
        ANMConfig(**bad)


def test_presets():
    assert ANMConfig.cifar() == ANMConfig()
    c = ANMConfig.clothing1m()
    assert (c.area_lo, c.area_hi, c.area_scale) == (0.06, 0.13, 1.0)
    s = ANMConfig.sanm_official()
    assert s.anchor == "corner" and s.band == pytest.approx(1 / 255)
    assert ANMConfig.cifar(band=0.1).band == 0.1
