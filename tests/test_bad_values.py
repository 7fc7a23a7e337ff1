"""Bad values into the library (ops, ANMConfig, masked_forward, nn.ANM, label quality): each must
give a ValueError / TypeError naming the argument and what was expected, or the correct result,
never NaN, Inf or negative results. docs/BAD_INPUTS.md lists each case with its actual message
(tests/render_bad_inputs.py writes those tables from VALUE_CASES and CONFIG_CASES)."""
import math

import numpy as np
import pytest
import torch

import anm_fast
from anm_fast import ANMConfig, masked_forward, models
from anm_fast.nn import ANM
from anm_fast.quality import gmm_clean_posterior, per_sample_losses

B, C, N = 8, 3, 10


def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, 32, 32, generator=g)
    fmap = torch.randn(B, 16, 4, 4, generator=g)
    t = torch.softmax(torch.randn(B, N, generator=g), 1)
    q = torch.rand(B, generator=g)
    return x, fmap, t, q


def _rows(t, row, values):
    t = t.clone()
    t[row] = torch.as_tensor(values, dtype=t.dtype)
    return t


def _erase(t=None, ratio=None, fill=None, label_gain=1.0):
    x, _, t0, q = batch()
    box = torch.tensor([[0, 0, 4, 4]] * B)
    fill = torch.zeros(B, C) if fill is None else fill
    return anm_fast.erase_and_modulate(x, t0 if t is None else t, box, box, fill,
                                       torch.zeros(B, C), q if ratio is None else ratio,
                                       label_gain=label_gain)


def _small_model():
    torch.manual_seed(0)
    return models.SmallCNN(num_classes=N, in_channels=3, width=8)


def _masked(targets=None, x=None):
    x0, _, t, q = batch()
    return masked_forward(_small_model(), x0 if x is None else x, t if targets is None else targets,
                          q, feature_layer="features", seed=0)


def _losses(y):
    x, _, _, _ = batch()
    return per_sample_losses(_small_model(), [(x, y)])


T = batch()[2]
SOFT_BAD = {
    "NaN": _rows(T, 2, [float("nan")] + [0.1] * (N - 1)),
    "Inf": _rows(T, 2, [float("inf")] + [0.0] * (N - 1)),
    "negative": _rows(T, 2, [-0.5, 1.5] + [0.0] * (N - 2)),
    "row sum 50": _rows(T, 2, [5.0] * N),
    "row sum 0": _rows(T, 2, [0.0] * N),
}

# (description, call, exception, message fragment). Every call must raise exactly that.
VALUE_CASES = [
    ("anm_mask fmap x1e18 (float32)", lambda: anm_fast.anm_mask(
        batch()[0], batch()[1] * 1e18, T, batch()[3], seed=0), ValueError, "too large"),
    ("anm_mask fmap x1e100 (float64)", lambda: anm_fast.anm_mask(
        batch()[0].double(), batch()[1].double() * 1e100, T, batch()[3], seed=0), ValueError,
     "fmap"),
    ("activation_peaks fmap x1e9 (float32)", lambda: anm_fast.activation_peaks(
        batch()[1] * 1e9, 32), ValueError, "too large"),
    *[(f"anm_mask soft targets {k}", lambda t=t: anm_fast.anm_mask(
        batch()[0], batch()[1], t, batch()[3], seed=0), ValueError, "targets")
      for k, t in SOFT_BAD.items()],
    *[(f"anm_mask soft targets {k} (autograd path)", lambda t=t: anm_fast.anm_mask(
        batch()[0].requires_grad_(), batch()[1], t, batch()[3], seed=0), ValueError, "targets")
      for k, t in SOFT_BAD.items() if k in ("NaN", "row sum 50")],
    *[(f"masked_forward soft targets {k}", lambda t=t: _masked(t), ValueError, "targets")
      for k, t in SOFT_BAD.items()],
    *[(f"per_sample_losses soft targets {k}", lambda t=t: _losses(t), ValueError, "targets")
      for k, t in SOFT_BAD.items()],
    ("per_sample_losses label 10 of 10", lambda: _losses(torch.full((B,), N)), ValueError,
     "outside [0, 10)"),
    ("erase_and_modulate soft targets row sum 50", lambda: _erase(t=SOFT_BAD["row sum 50"]),
     ValueError, "targets row 2 sums to 50"),
    ("erase_and_modulate label_gain=nan", lambda: _erase(label_gain=float("nan")), ValueError,
     "label_gain must be a finite number"),
    ("erase_and_modulate label_gain=inf", lambda: _erase(label_gain=float("inf")), ValueError,
     "label_gain"),
    ("erase_and_modulate ratio NaN", lambda: _erase(ratio=torch.full((B,), float("nan"))),
     ValueError, "ratio"),
    ("erase_and_modulate ratio negative", lambda: _erase(ratio=torch.full((B,), -0.5)),
     ValueError, "ratio"),
    ("erase_and_modulate fill NaN", lambda: _erase(fill=torch.full((B, C), float("nan"))),
     ValueError, "fill_max"),
    ("masked_forward batch of 0", lambda: _masked(T[:0], batch()[0][:0]), ValueError,
     "at least one image"),
    ("gmm_clean_posterior all losses inf", lambda: gmm_clean_posterior(
        torch.full((5,), math.inf)), ValueError, "all infinite"),
    ("gmm_clean_posterior inf with normalize=False", lambda: gmm_clean_posterior(
        torch.tensor([0.1, 0.2, math.inf]), normalize=False), ValueError, "infinite"),
    *[(f"gmm_clean_posterior reg_covar={v}", lambda v=v: gmm_clean_posterior(
        torch.rand(20), reg_covar=v), ValueError, "reg_covar") for v in (0.0, -1e-3, math.nan)],
    ("anm_mask x with C = 0", lambda: anm_fast.anm_mask(
        batch()[0][:, :0], batch()[1], T, batch()[3]), ValueError, "x must be"),
    ("anm_mask x with H = 0", lambda: anm_fast.anm_mask(
        batch()[0][:, :, :0], batch()[1], T, batch()[3]), ValueError, "x must be"),
    ("anm_mask x with W = 0", lambda: anm_fast.anm_mask(
        batch()[0][..., :0], batch()[1], T, batch()[3]), ValueError, "x must be"),
    ("anm_mask complex labels", lambda: anm_fast.anm_mask(
        batch()[0], batch()[1], torch.zeros(B, dtype=torch.complex64), batch()[3],
        num_classes=N), TypeError, "targets must be float soft targets"),
    ("anm_mask all tensors on meta", lambda: anm_fast.anm_mask(
        *(t.to("meta") for t in batch())), ValueError, "x is on meta"),
    ("activation_peaks fmap on meta", lambda: anm_fast.activation_peaks(
        batch()[1].to("meta"), 32), ValueError, "fmap is on meta"),
    ("masked_forward label 10 of 10", lambda: _masked(torch.full((B,), N)), ValueError,
     "outside [0, 10)"),
    ("masked_forward label -1", lambda: _masked(torch.full((B,), -1)), ValueError,
     "outside [0, 10)"),
    ("masked_forward complex labels", lambda: _masked(torch.zeros(B, dtype=torch.complex64)),
     TypeError, "targets must be float soft targets"),
    ("ANM label 10 of 10", lambda: ANM(_small_model(), N, 32, feature_layer="features")(
        batch()[0], torch.full((B,), N), batch()[3]), ValueError, "outside [0, 10)"),
    ("ANM(image_size=0)", lambda: ANM(_small_model(), N, 0), ValueError, "image_size must be"),
    ("ANM(image_size=(3, 0, 32))", lambda: ANM(_small_model(), N, (3, 0, 32)), ValueError,
     "image_size[1]"),
    ("ANM(num_classes=10.7)", lambda: ANM(_small_model(), 10.7, 32), ValueError,
     "num_classes must be a positive integer"),
]


@pytest.mark.parametrize("case", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_bad_value_is_a_clear_error(case):
    _, call, exc, fragment = case
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc
    assert fragment in str(info.value), str(info.value)


CONFIG_CASES = [
    dict(area_hi=1e39), dict(quality_gain=1e300), dict(fill=(1e39,)), dict(fill=("a",)),
    dict(fill=(True,)), dict(area_hi=1.5), dict(label_gain=1e300), dict(area_scale=1e39),
    dict(label_gain=math.nan), dict(anchor=1), dict(area_lo=True),
]


@pytest.mark.parametrize("bad", CONFIG_CASES, ids=[str(b) for b in CONFIG_CASES])
def test_config_out_of_range_rejected(bad):
    with pytest.raises(ValueError, match="ANMConfig"):
        ANMConfig(**bad)


def test_config_accepts_numpy_scalars_as_floats():
    c = ANMConfig(area_lo=np.float32(0.02), area_hi=np.float64(0.07), quality_gain=np.float32(0),
                  aspect_lo=np.float16(1.0), area_scale=np.int64(1), fill=(np.float32(0.5),),
                  label_gain=np.int32(1))
    assert c == ANMConfig(area_lo=float(np.float32(0.02)), area_hi=0.07, quality_gain=0.0,
                          aspect_lo=1.0, area_scale=1.0, fill=(0.5,), label_gain=1.0)
    assert all(type(getattr(c, k)) is float for k in ("area_lo", "area_hi", "quality_gain",
                                                      "aspect_lo", "area_scale", "label_gain"))
    assert type(c.fill[0]) is float
    x, fmap, t, q = batch()
    assert torch.isfinite(anm_fast.anm_mask(x, fmap, t, q, config=c, seed=0).targets).all()


def test_largest_config_values_give_finite_results():
    """At the edges of every range the ratio, targets and pixels stay finite and valid."""
    x, fmap, t, q = batch()
    c = ANMConfig(area_lo=1.0, area_hi=1.0, quality_gain=1.0, area_scale=100.0, label_gain=100.0,
                  fill=(float(np.finfo(np.float32).max),))
    out = anm_fast.anm_mask(x, fmap, t, q, config=c, seed=0)
    assert torch.isfinite(out.ratio).all() and torch.isfinite(out.erased).all()
    assert (out.targets >= 0).all()
    torch.testing.assert_close(out.targets.sum(1), torch.ones(B))


def test_zero_feature_map_is_fine():
    """A map of zeros (dead features) has zero energy indeed: peaks (0, 0), no error."""
    x, fmap, t, q = batch()
    fmap[3] = 0
    out = anm_fast.anm_mask(x, fmap, t, q, seed=0)
    assert out.peak_max[3].tolist() == [0, 0] and float(out.energy[3].abs().max()) == 0.0


@pytest.mark.xfail(strict=True, reason="the kernels sum the energy of large maps into overflow "
                                       "(energy 0, peaks (0, 0)); meanwhile the API refuses them")
@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e9), (torch.float32, 1e18),
                                          (torch.float64, 1e100)])
def test_peaks_do_not_depend_on_the_maps_scale(dtype, scale):
    _, fmap, _, _ = batch()
    fmap = fmap.to(dtype)
    small = anm_fast.activation_peaks(fmap, 32)
    large = anm_fast.activation_peaks(fmap * scale, 32)
    assert torch.equal(small.peak_max, large.peak_max)
    assert torch.equal(small.peak_min, large.peak_min)


def test_checks_off_skips_the_value_checks():
    """set_checks(False) skips value checks (they synchronise with a GPU); shape checks stay."""
    x, fmap, t, q = batch()
    anm_fast.set_checks(False)
    try:
        anm_fast.anm_mask(x, fmap, SOFT_BAD["row sum 50"], q, seed=0)
        with pytest.raises(ValueError, match="x must be"):
            anm_fast.anm_mask(x[:, :0], fmap, t, q)
    finally:
        anm_fast.set_checks(True)


def test_gmm_infinite_loss_ranks_beyond_every_finite_one():
    g = torch.Generator().manual_seed(1)
    losses = torch.cat((torch.rand(50, generator=g) * 0.3, 2 + torch.rand(50, generator=g)))
    with_inf = losses.clone()
    with_inf[7], with_inf[60] = math.inf, -math.inf
    clamped = losses.clone()
    clamped[7], clamped[60] = losses.max(), losses.min()
    got = gmm_clean_posterior(with_inf)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, gmm_clean_posterior(clamped), rtol=0, atol=0)
    assert got[7] < 0.5  # the infinite loss is judged noisy


def test_soft_targets_within_rounding_pass():
    """Rows that sum to 1 up to their dtype's rounding (bf16, fp16 softmax) are accepted."""
    x, fmap, t, q = batch()
    for dtype in (torch.float16, torch.bfloat16):
        out = anm_fast.anm_mask(x, fmap, t.to(dtype), q, seed=0)
        assert torch.isfinite(out.targets).all()
