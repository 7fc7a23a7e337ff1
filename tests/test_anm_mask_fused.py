"""The fused CPU op (torch.ops.anm_fast.anm_mask, csrc/cpu/anm_mask_cpu.cpp) against the three ops
it fuses and against the reference: bit-identical outputs on every dtype mix, layout, odd shape,
batch 1 and large, fill mode and anchor; the value checks of the Python API; opcheck; and when
anm_fast.anm_mask takes it (also when x or targets need a gradient) or not."""
import itertools

import pytest
import torch

import anm_fast
from anm_fast import api, reference as R
from anm_fast.config import ANMConfig, BoxParams
from anm_fast.testing import anm_mask_args, assert_peaks_match, relayout

pytestmark = pytest.mark.skipif(not anm_fast.has_extension(),
                                reason="the fused op is a C++ kernel (extension not built)")
ops = torch.ops.anm_fast
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _args(x, fmap, t, q, ids, seed, config, check=True):
    return anm_mask_args(x, fmap, t, q, ids, seed, config, check)


def _three_ops(x, fmap, t, q, ids, seed, config):
    H, W, C = x.shape[2], x.shape[3], x.shape[1]
    a = _args(x, fmap, t, q, ids, seed, config)
    pmax, pmin, energy = ops.activation_peaks(fmap, H, W, a[6])
    boxes = ops.sample_boxes(pmax, pmin, q, ids, a[5], H, W, C, *a[7:9])
    erased, t_out = ops.erase_and_modulate(x, t, boxes[0], boxes[1], boxes[3], boxes[4],
                                           boxes[2], a[9])
    return (erased, t_out, *boxes, pmax, pmin, energy)


def _inputs(B, C, H, W, K, h, w, dtype=torch.float32, fdtype=None, tdtype=None, N=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g).to(dtype)
    fmap = torch.randn(B, K, h, w, generator=g).relu().to(fdtype or dtype)
    t = torch.softmax(torch.randn(B, N, generator=g) * 3, 1).to(tdtype or dtype)
    q = torch.rand(B, generator=g)
    q[: B // 4] = 0.0
    q[B // 4: B // 2] = 1.0
    ids = torch.randperm(10 * B + 3, generator=g)[:B]
    return x, fmap, t, q, ids


def _assert_identical(got, want):
    names = ("erased", "targets", "box_max", "box_min", "ratio", "fill_max", "fill_min",
             "peak_max", "peak_min", "energy")
    assert len(got) == len(want) == len(names)
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.stride() == b.stride(), name  # same memory layout as the separate ops
        assert torch.equal(a, b), name


CONFIGS = {
    "cifar": ANMConfig(),
    "constant fill, corner anchor, band": ANMConfig(fill=(-0.5,), anchor="corner",
                                                    band=1 / 255),
    "big boxes": ANMConfig(area_lo=0.3, area_hi=0.6, quality_gain=0.3, label_gain=2.0),
}


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("shape", [
    (1, 3, 32, 32, 16, 4, 4),      # batch 1
    (5, 1, 7, 9, 3, 1, 1),         # 1x1 feature map, odd image
    (6, 4, 5, 3, 8, 7, 6),         # feature map larger than the image
    (9, 3, 31, 17, 33, 5, 3),
], ids=["B1", "fmap1x1", "fmap>image", "odd"])
def test_fused_equals_three_ops(config, shape):
    B, C, H, W, K, h, w = shape
    x, fmap, t, q, ids = _inputs(B, C, H, W, K, h, w)
    cfg = CONFIGS[config]
    _assert_identical(ops.anm_mask(*_args(x, fmap, t, q, ids, 11, cfg)),
                      _three_ops(x, fmap, t, q, ids, 11, cfg))


@pytest.mark.parametrize("xdt,fdt,tdt", list(itertools.product(DTYPES, DTYPES, DTYPES[:2]))[::3])
def test_fused_dtype_mixes(xdt, fdt, tdt):
    x, fmap, t, q, ids = _inputs(7, 3, 12, 10, 6, 3, 3, xdt, fdt, tdt)
    cfg = ANMConfig()
    _assert_identical(ops.anm_mask(*_args(x, fmap, t, q, ids, 3, cfg)),
                      _three_ops(x, fmap, t, q, ids, 3, cfg))


@pytest.mark.parametrize("x_layout,f_layout", [
    ("channels_last", "channels_last"), ("sliced", "contiguous"), ("permuted", "sliced"),
    ("contiguous", "permuted"), ("transposed", "channels_last")])
def test_fused_layouts(x_layout, f_layout):
    x, fmap, t, q, ids = _inputs(6, 3, 11, 13, 10, 4, 5)
    xl, fl = relayout(x, x_layout), relayout(fmap, f_layout)
    tl = t.t().contiguous().t()  # column-major targets
    cfg = CONFIGS["constant fill, corner anchor, band"]
    got = ops.anm_mask(*_args(xl, fl, tl, q, ids, 9, cfg))
    _assert_identical(got, _three_ops(xl, fl, tl, q, ids, 9, cfg))
    # and the same values as on contiguous inputs
    _assert_identical(tuple(v.contiguous() for v in got),
                      tuple(v.contiguous() for v in _three_ops(x, fmap, t, q, ids, 9, cfg)))


def test_fused_large_batch_against_the_reference():
    B, C, H, W = 1024, 3, 32, 32
    x, fmap, t, q, ids = _inputs(B, C, H, W, 64, 4, 4)
    cfg = ANMConfig()
    got = ops.anm_mask(*_args(x, fmap, t, q, ids, 2024, cfg))
    pmax, pmin, energy = R.activation_peaks(fmap, H, W, cfg.band)
    assert_peaks_match(got[7], got[8], energy, H, W, cfg.band)
    torch.testing.assert_close(got[9], energy, rtol=1e-5, atol=1e-6)
    # boxes exact given the peaks, erased images and targets exact given the boxes
    a = _args(x, fmap, t, q, ids, 2024, cfg)
    boxes = R.sample_boxes(got[7], got[8], q, ids, a[5], H, W, C, *a[7:9])
    for g, r in zip(got[2:7], boxes):
        assert torch.equal(g, r)
    erased, t_out = R.erase_and_modulate(x, t, *boxes[:2], boxes[3], boxes[4], boxes[2],
                                         cfg.label_gain)
    assert torch.equal(got[0], erased)
    torch.testing.assert_close(got[1], t_out, rtol=1e-6, atol=1e-7)


def test_empty_batch():
    x, fmap, t, q, ids = _inputs(0, 3, 8, 8, 4, 2, 2)
    out = ops.anm_mask(*_args(x, fmap, t, q, ids, 1, ANMConfig()))
    assert len(out) == 10 and out[0].shape == (0, 3, 8, 8) and out[9].shape == (0, 2, 2)


def test_seed_of_one_element_and_no_sample_ids():
    x, fmap, t, q, _ = _inputs(3, 3, 8, 8, 4, 2, 2)
    a = list(_args(x, fmap, t, q, torch.arange(3), 2**62, ANMConfig()))
    want = ops.anm_mask(*a)
    a[5] = torch.tensor([2**62], dtype=torch.int64)  # one element, 1-D
    a[4] = None  # the batch positions
    _assert_identical(ops.anm_mask(*a), want)


def test_opcheck_fused():
    for x_layout in ("contiguous", "channels_last"):
        x, fmap, t, q, ids = _inputs(4, 3, 9, 7, 5, 3, 2)
        for cfg in CONFIGS.values():
            torch.library.opcheck(ops.anm_mask.default,
                                  _args(relayout(x, x_layout), fmap, t, q, ids, 5, cfg))


@pytest.mark.parametrize("bad,message", [
    (float("nan"), "quality contains NaN"),
    (1.5, r"quality must lie in \[0, 1\], got values in \[0(\.0)?, 1\.5\]"),
    (-0.25, r"quality must lie in \[0, 1\], got values in \[-0\.25, 1(\.0)?\]"),
])
def test_quality_errors_match_the_python_layer(bad, message):
    x, fmap, t, q, _ = _inputs(4, 3, 8, 8, 4, 2, 2)
    q = torch.tensor([0.0, 0.5, 1.0, bad])
    for fused in (True, False):
        with pytest.raises(ValueError, match=message):
            _call_api(fused, x, fmap, t, q)


def test_non_finite_fmap_is_a_value_error_unless_checks_are_off():
    x, fmap, t, q, _ = _inputs(4, 3, 8, 8, 4, 2, 2)
    fmap[2, 1, 0, 1] = float("inf")
    for fused in (True, False):
        with pytest.raises(ValueError, match="fmap contains non-finite values"):
            _call_api(fused, x, fmap, t, q)
    anm_fast.set_checks(False)
    try:
        out = _call_api(True, x, fmap, t, q)  # no error, no crash: the caller opted out
        assert out.erased.shape == (8, 3, 8, 8)
    finally:
        anm_fast.set_checks(True)


def _call_api(fused, *args, **kwargs):
    orig = api._use_fused_op
    api._use_fused_op = (lambda x: True) if fused else (lambda x: False)
    try:
        return anm_fast.anm_mask(*args, **kwargs)
    finally:
        api._use_fused_op = orig


def test_api_takes_the_fused_op_also_with_gradients(monkeypatch):
    x, fmap, t, q, _ = _inputs(5, 3, 10, 10, 4, 3, 3)
    calls = []

    class Spy:
        def __getattr__(self, name):
            if name == "anm_mask":
                calls.append(1)
            return getattr(torch.ops.anm_fast, name)

    monkeypatch.setattr(api, "ops", Spy())
    plain = anm_fast.anm_mask(x, fmap, t, q, seed=4)
    assert calls == [1]
    xg = x.clone().requires_grad_(True)
    tg = t.clone().requires_grad_(True)
    graded = anm_fast.anm_mask(xg, fmap, tg, q, seed=4)
    assert calls == [1, 1]  # x needs a gradient: the fused op, differentiable
    g_e, g_t = torch.randn_like(graded.erased), torch.randn_like(graded.targets)
    torch.autograd.backward((graded.erased, graded.targets), (g_e, g_t))
    # the gradient of the three differentiable ops, bit for bit
    xr, tr = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    three = _call_api(False, xr, fmap, tr, q, seed=4)
    torch.autograd.backward((three.erased, three.targets), (g_e, g_t))
    assert torch.equal(xg.grad, xr.grad) and torch.equal(tg.grad, tr.grad)
    with torch.no_grad():
        anm_fast.anm_mask(xg, fmap, t, q, seed=4)
    assert calls == [1, 1, 1]  # no gradient can flow: the fused op as well
    for a, b in zip(plain, graded):
        assert torch.equal(a, b.detach())


def test_class_index_targets_take_the_fused_path_and_are_range_checked():
    x, fmap, _, q, _ = _inputs(4, 3, 8, 8, 4, 2, 2)
    labels = torch.tensor([0, 3, 9, 2])
    a = _call_api(True, x, fmap, labels, q, seed=1, num_classes=10)
    b = _call_api(False, x, fmap, labels, q, seed=1, num_classes=10)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    with pytest.raises(ValueError, match="class indices outside"):
        _call_api(True, x, fmap, torch.tensor([0, 3, 10, 2]), q, seed=1, num_classes=10)


# --------------------------------------------------------------------------------- op arguments
def test_op_argument_and_value_errors():
    x, fmap, t, q, ids = _inputs(3, 3, 8, 8, 4, 2, 2)
    a = list(_args(x, fmap, t, q, ids, 1, ANMConfig()))
    bad = list(a)
    bad[7] = a[7][:-1]  # a list packed for another layout: the op names the layout
    with pytest.raises(ValueError, match=f"box_params must hold {len(BoxParams._fields)} values"):
        ops.anm_mask(*bad)
    bad = list(a)
    bad[3] = torch.full_like(q, 2.0)
    with pytest.raises(ValueError, match=r"quality must lie in \[0, 1\]"):
        ops.anm_mask(*bad)
    bad = list(a)
    bad[2] = t * 2  # rows summing to 2
    with pytest.raises(ValueError, match="targets row 0 sums to 2; soft targets must be rows"):
        ops.anm_mask(*bad)
    bad[-1] = False  # value checks off: no error
    ops.anm_mask(*bad)
    bad = list(a)
    bad[1] = fmap[:2]
    with pytest.raises(RuntimeError, match="fmap has batch size"):
        ops.anm_mask(*bad)


def test_api_cpu_calls_are_seen_by_the_profiler_and_dispatch_modes():
    # The API calls the op through the dispatcher: profilers and dispatch modes see it.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Names(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    x, fmap, t, q, ids = _inputs(4, 3, 8, 8, 4, 2, 2)
    with Names() as mode:
        out = anm_fast.anm_mask(x, fmap, t, q, seed=3)
    assert any("anm_fast.anm_mask" in n for n in mode.names), mode.names
    assert torch.equal(out.erased, anm_fast.anm_mask(x, fmap, t, q, seed=3).erased)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        anm_fast.anm_mask(x, fmap, t, q, seed=3)
    assert any(e.name == "anm_fast::anm_mask" for e in prof.events())
