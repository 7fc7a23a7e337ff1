"""sample_boxes on every backend against the reference: boxes, ratios and fills bit for bit."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anm_fast
from anm_fast import reference as R
from anm_fast.config import BoxParams
from anm_fast.testing import sample_boxes_args

NAMES = ("box_max", "box_min", "ratio", "fill_max", "fill_min")
CONFIGS = [anm_fast.ANMConfig.cifar(), anm_fast.ANMConfig.clothing1m(),
           # huge boxes: the clamps to the image are active
           anm_fast.ANMConfig(area_lo=0.9, area_hi=1.0, aspect_lo=0.1, area_scale=3.0)]


def assert_boxes_equal(got, want):
    for g, w, name in zip(got, want, NAMES):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g, w), f"{name} differs from the reference"


def assert_inside(box, H, W):
    assert bool((box[:, 2] >= 1).all() and (box[:, 3] >= 1).all())
    assert bool((box[:, 0] >= 0).all() and (box[:, 0] + box[:, 2] <= H).all())
    assert bool((box[:, 1] >= 0).all() and (box[:, 1] + box[:, 3] <= W).all())


@pytest.mark.parametrize("B,H,W,C", [(1, 32, 32, 3), (257, 32, 32, 3), (64, 5, 7, 1),
                                     (33, 224, 224, 3), (16, 9, 300, 5), (8, 8, 8, 40),
                                     (1024, 32, 32, 3)])
@pytest.mark.parametrize("anchor", [True, False])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("uniform", [True, False])
def test_bit_exact(backend, B, H, W, C, anchor, config, uniform):
    args = sample_boxes_args(B, H, W, C, anchor=anchor, config=config, uniform=uniform)
    got = backend("sample_boxes", *args)
    assert_boxes_equal(got, R.sample_boxes(*args))
    assert_inside(got[0], H, W)
    assert_inside(got[1], H, W)
    if not uniform:
        assert torch.equal(got[3], args[-1].expand(B, C)) and torch.equal(got[4], got[3])


GRID_CONFIGS = [
    # area_lo, area_hi, quality_gain, aspect_lo, area_scale, center_anchor, uniform_fill, fill
    (0.02, 0.07, 0.03, 0.8, 0.5, True, True, None),
    (0.06, 0.13, 0.2, 0.5, 1.0, False, True, None),
    (0.02, 0.07, 0.03, 0.8, 0.5, True, False, "zero"),
    (0.3, 0.9, 0.5, 0.3, 1.0, False, False, "mean"),  # large boxes: clamped to the image
]


@pytest.mark.parametrize("B", [1, 7, 1024])
@pytest.mark.parametrize("HWC", [(32, 32, 3), (224, 224, 3), (17, 9, 5), (8, 8, 1)])
@pytest.mark.parametrize("cfg", range(len(GRID_CONFIGS)))
def test_bit_exact_grid(backend, B, HWC, cfg):
    # ids anywhere in +-2**62, seeds of both signs, the seed on the CPU and on the device
    H, W, C = HWC
    backend.skip_large(B, limit=64)  # the interpreter takes the large batch elsewhere
    gen = torch.Generator().manual_seed(B * 1000 + H + cfg)
    pmax = torch.stack((torch.randint(0, H, (B,), generator=gen),
                        torch.randint(0, W, (B,), generator=gen)), 1)
    pmin = torch.stack((torch.randint(0, H, (B,), generator=gen),
                        torch.randint(0, W, (B,), generator=gen)), 1)
    q = torch.rand(B, generator=gen)
    ids = torch.randint(-2**62, 2**62, (B,), generator=gen)
    a_lo, a_hi, qg, asp, ascale, center, uniform, fill = GRID_CONFIGS[cfg]
    fv = {"zero": torch.zeros(C), "mean": torch.linspace(-0.5, 0.7, C)}.get(fill, torch.zeros(0))
    for seed_value in (0, 12345, -7, 2**63 - 1):
        seed = torch.tensor(seed_value, dtype=torch.int64)
        box_params = BoxParams(a_lo, a_hi, qg, asp, ascale, center, uniform).pack()
        args = (pmax, pmin, q, ids, seed, H, W, C, box_params, fv)
        want = R.sample_boxes(*args)
        assert_boxes_equal(backend("sample_boxes", *args), want)
        on_device = args[:4] + (seed.to(backend.device),) + args[5:]
        assert_boxes_equal(backend("sample_boxes", *on_device), want)


def test_many_draws_bit_exact(backend):
    # Many streams: any float64 op-order or rounding difference shows up as a different box.
    cfg = anm_fast.ANMConfig(area_lo=0.01, area_hi=0.6, aspect_lo=0.3)
    args = sample_boxes_args(4096, 97, 61, 3, seed=123456789, config=cfg)
    assert_boxes_equal(backend("sample_boxes", *args), R.sample_boxes(*args))


@pytest.mark.parametrize("seed", [0, 2**32 - 1, 2**32, -1, -(2**63), 2**63 - 1])
def test_seeds_ids_and_constant_fill(backend, seed):
    ids = torch.tensor([0, 1, 2**32, 2**32 + 1, 2**40 + 5, -3])
    for uniform in (True, False):
        args = sample_boxes_args(6, 32, 32, 3, seed=seed, ids=ids, uniform=uniform)
        assert_boxes_equal(backend("sample_boxes", *args), R.sample_boxes(*args))
    # ids that differ only in the high word give different streams
    fills = backend("sample_boxes", *sample_boxes_args(6, 32, 32, 3, seed=seed, ids=ids))[3]
    assert not torch.equal(fills[0], fills[2])


def test_seed_on_the_batch_device(backend):
    # A seed tensor on the batch's device is read inside the kernels (CUDA-graph replays follow
    # it); on the CPU (how the API passes an int) it is read on the host.
    args = list(sample_boxes_args(50, 31, 45, 5, seed=-5))
    want = R.sample_boxes(*args)
    args[4] = args[4].to(backend.device)
    assert_boxes_equal(backend("sample_boxes", *args), want)


def test_strided_and_narrow_inputs(backend):
    B, H, W, C = 37, 29, 31, 3
    base = sample_boxes_args(B, H, W, C)
    pmax = base[0].t().contiguous().t().to(torch.int32)   # column-major int32 peaks
    pmin = torch.stack((base[1], base[1]), 2)[..., 0].short()  # strided int16 view
    q = torch.stack((base[2], base[2]), 1)[:, 1].double()  # stride 2, float64
    ids = base[3].to(torch.int32)
    seed = base[4].reshape(1, 1).to(torch.int32)
    args = (pmax, pmin, q, ids, seed) + base[5:]
    assert_boxes_equal(backend("sample_boxes", *args), R.sample_boxes(*base))


def test_box_params_of_another_layout_are_a_clear_error(backend):
    args = list(sample_boxes_args(3, 8, 8, 3))
    for bad, message in ((args[8][:-1], f"box_params must hold {len(BoxParams._fields)} values"),
                         (args[8] + [0.0], f"box_params must hold {len(BoxParams._fields)} values"),
                         (args[8][:5] + [0.5, 1.0], "center_anchor.* must be 0 or 1")):
        with pytest.raises(ValueError, match=message):
            backend("sample_boxes", *args[:8], bad, args[9])


@pytest.mark.parametrize("C", [16, 17, 512, 513])
def test_constant_fills_any_channel_count(backend, C):
    # The CUDA kernels take up to 512 constant fills given on the CPU in their argument (no
    # host-to-device copy), more through device memory.
    args = sample_boxes_args(40, 32, 32, C, uniform=False)
    got = backend("sample_boxes", *args)
    assert torch.equal(got[3], args[-1].expand(40, C)) and torch.equal(got[4], got[3])
    assert_boxes_equal(got, R.sample_boxes(*args))


def test_empty_batch(backend):
    out = backend("sample_boxes", *sample_boxes_args(0, 32, 32, 3))
    assert [tuple(o.shape) for o in out] == [(0, 4), (0, 4), (0,), (0, 3), (0, 3)]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(B=st.integers(1, 300), H=st.integers(1, 300), W=st.integers(1, 300), C=st.integers(1, 9),
       seed=st.integers(-2**63, 2**63 - 1), area=st.tuples(st.floats(0.0, 1.0),
                                                           st.floats(0.0, 1.0)),
       aspect=st.floats(0.05, 1.0), scale=st.floats(0.01, 4.0), anchor=st.booleans(),
       uniform=st.booleans())
def test_bit_identical_on_random_configs(backend, B, H, W, C, seed, area, aspect, scale, anchor,
                                         uniform):
    cfg = anm_fast.ANMConfig(area_lo=min(area), area_hi=max(area), aspect_lo=aspect,
                             area_scale=scale)
    args = sample_boxes_args(B, H, W, C, seed=seed, anchor=anchor, uniform=uniform, config=cfg)
    got = backend("sample_boxes", *args)
    assert_boxes_equal(got, R.sample_boxes(*args))
    assert_inside(got[0], H, W)


# ------------------------------------------------------------ what only a GPU shows
def test_a_cpu_seed_and_cpu_fills_cost_no_copy_or_sync(gpu_backend):
    # How the API passes an int seed and constant fills: as CPU tensors, read on the host.
    gen = torch.Generator().manual_seed(1)
    pmax = torch.randint(0, 32, (16, 2), generator=gen).cuda()
    pmin = torch.randint(0, 32, (16, 2), generator=gen).cuda()
    q = torch.rand(16, generator=gen).cuda()
    ids = torch.randint(-2**62, 2**62, (16,), generator=gen).cuda()
    fills = torch.tensor([0.1, 0.2, 0.3])
    args = (32, 32, 3, anm_fast.ANMConfig(fill=(0.1, 0.2, 0.3)).box_params(), fills)
    op = torch.ops.anm_fast.sample_boxes
    op(pmax, pmin, q, ids, torch.tensor(5), *args)  # the first call may cache the fills
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for seed in (5, -7, 2**40 + 3):
            got = op(pmax, pmin, q, ids, torch.tensor(seed), *args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = R.sample_boxes(pmax, pmin, q, ids, torch.tensor(2**40 + 3, device="cuda"),
                          *args[:-1], fills.cuda())
    for g, w in zip(got, want):
        assert torch.equal(g, w)
