"""Statistics of the box sampler (fixed seeds, so these tests are deterministic)."""
import numpy as np
import pytest
import torch
from scipy import stats

import anm_fast
from anm_fast import ANMConfig


def draw(B, quality, config=None, H=32, W=32, seed=2024, C=3):
    peaks = torch.zeros(B, 2, dtype=torch.long)
    q = torch.full((B,), float(quality))
    return anm_fast.sample_boxes(peaks, peaks, q, (H, W), C, config=config or ANMConfig(),
                                 seed=seed)


def test_mask_ratio_is_uniform_plus_quality_term():
    B = 4000
    for quality, shift in ((1.0, 0.0), (0.0, 0.03), (0.5, 0.015)):
        s = draw(B, quality).ratio.double().numpy() - shift
        ks = stats.kstest(s, stats.uniform(loc=0.02, scale=0.05).cdf)
        assert ks.pvalue > 1e-3, (quality, ks)


def test_aspect_is_uniform_between_aspect_lo_and_its_inverse():
    # Big images so that rounding the box sides barely perturbs their ratio.
    B = 3000
    cfg = ANMConfig(area_lo=0.2, area_hi=0.3, area_scale=1.0)
    box = draw(B, 1.0, cfg, H=4096, W=4096).box_max.double()
    rho = (box[:, 2] / box[:, 3]).numpy()
    ks = stats.kstest(rho, stats.uniform(loc=0.8, scale=1 / 0.8 - 0.8).cdf)
    assert ks.pvalue > 1e-3, ks


def test_box_area_follows_the_ratio_and_area_scale():
    B = 3000
    H = W = 1024
    for cfg in (ANMConfig(), ANMConfig.clothing1m()):
        out = draw(B, 1.0, cfg, H=H, W=W)
        area = (out.box_max[:, 2] * out.box_max[:, 3]).double()
        expected = cfg.area_scale * out.ratio.double() * H * W
        rel = (area / expected - 1).abs()
        assert float(rel.max()) < 0.02
        assert torch.equal(out.box_max[:, 2:], out.box_min[:, 2:])  # shared bh, bw


def test_mean_area_grows_as_quality_falls():
    means = []
    for quality in (1.0, 0.75, 0.5, 0.25, 0.0):
        box = draw(2000, quality).box_max
        means.append(float((box[:, 2] * box[:, 3]).double().mean()))
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_uniform_fills_are_uniform_and_independent_per_box():
    out = draw(3000, 1.0, C=3)
    for fill in (out.fill_max, out.fill_min):
        ks = stats.kstest(fill.flatten().double().numpy(), "uniform")
        assert ks.pvalue > 1e-3
    corr = np.corrcoef(out.fill_max[:, 0].numpy(), out.fill_min[:, 0].numpy())[0, 1]
    assert abs(corr) < 0.06


def test_boxes_hit_every_position_when_peaks_vary():
    # Chi-square: centre-anchored boxes at uniformly random peaks, small boxes: the box centre
    # row is uniform over the rows that need no shifting.
    B, H = 6000, 64
    g = torch.Generator().manual_seed(0)
    peaks = torch.randint(8, H - 8, (B, 2), generator=g)
    out = anm_fast.sample_boxes(peaks, peaks, torch.ones(B), H, 3, seed=1)
    centre = out.box_max[:, 0] + out.box_max[:, 2] // 2
    assert torch.equal(centre, peaks[:, 0])
    counts = np.bincount(centre.numpy() - 8, minlength=H - 16)
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2**40])
def test_different_samples_get_different_streams(seed):
    out = draw(500, 0.5, seed=seed)
    assert len(set(out.fill_max[:, 0].tolist())) == 500
