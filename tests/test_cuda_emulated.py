"""The CUDA kernels of csrc/cuda, run without a GPU on the CUDA emulation (csrc/emulation).

anm_fast._C_emulated is csrc/cuda/*.cu compiled by the host compiler against an emulation of
CUDA's execution model (threads of a block as fibers, __syncthreads and warp shuffles as real
barriers, dynamic shared memory poisoned per block). Its ops, torch.ops.anm_fast_emulated.*, take
CPU tensors. Every kernel runs here under several thread schedules (lowest index first, highest
first, seeded random), so a missing barrier or a race shows as a wrong or schedule-dependent
result. Boxes, fills, peaks, energies and erased images must equal the C++ CPU kernels' bit for
bit (they follow the same order of operations) and the reference's (energies within rounding);
targets within the per-dtype tolerance.
"""
import pytest
import torch

import anm_fast
from anm_fast import reference as R
from anm_fast.testing import (TOLERANCES, anm_mask_args, assert_peaks_match, relayout,
                              sample_boxes_args)

try:
    import anm_fast._C_emulated  # noqa: F401  (registers torch.ops.anm_fast_emulated)
    EMULATION_ERROR = None
except ModuleNotFoundError as exc:  # built with ANM_FAST_SKIP_EMULATION=1, or not built
    EMULATION_ERROR = exc
# Any other import error (a module that exists but does not load) fails the collection.

pytestmark = [
    pytest.mark.cuda_emulated,
    pytest.mark.skipif(EMULATION_ERROR is not None or not anm_fast.has_extension(),
                       reason=f"anm_fast._C_emulated not built: {EMULATION_ERROR}"),
]

ops = torch.ops.anm_fast
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# (order, seed): 0 lowest thread / block index first, 1 highest first, 2 random.
SCHEDULES = {"lowest": (0, 0), "highest": (1, 0), "random1": (2, 1), "random2": (2, 2)}


def emu():
    return torch.ops.anm_fast_emulated


@pytest.fixture(params=list(SCHEDULES), ids=list(SCHEDULES))
def schedule(request):
    emu().set_schedule(*SCHEDULES[request.param])
    yield request.param
    emu().set_schedule(0, 0)


def assert_equal_outputs(got, want, names):
    for g, w, name in zip(got, want, names):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g, w), f"{name} differs"


# ---------------------------------------------------------------------------------- sample_boxes
@pytest.mark.parametrize("B,H,W,C", [(1, 32, 32, 3), (130, 32, 32, 3), (33, 224, 224, 3),
                                     (16, 9, 300, 5)])
@pytest.mark.parametrize("anchor", [True, False])
@pytest.mark.parametrize("uniform", [True, False])
def test_sample_boxes_emulated(schedule, B, H, W, C, anchor, uniform):
    args = sample_boxes_args(B, H, W, C, anchor=anchor, uniform=uniform,
                             config=anm_fast.ANMConfig.clothing1m())
    names = ("box_max", "box_min", "ratio", "fill_max", "fill_min")
    got = emu().sample_boxes(*args)
    assert_equal_outputs(got, R.sample_boxes(*args), names)
    assert_equal_outputs(got, ops.sample_boxes(*args), names)


@pytest.mark.parametrize("C", [16, 17, 512, 513])
def test_sample_boxes_emulated_constant_fills_any_channel_count(C):
    # Up to 512 channels the fills travel in the kernel argument (no host-to-device copy).
    args = sample_boxes_args(40, 32, 32, C, uniform=False)
    got = emu().sample_boxes(*args)
    assert torch.equal(got[3], args[-1].expand(40, C))
    assert torch.equal(got[4], args[-1].expand(40, C))
    assert_equal_outputs(got, R.sample_boxes(*args), ("box_max", "box_min", "ratio"))


def test_sample_boxes_emulated_seeds_and_ids():
    for seed in (0, 2**32 - 1, 2**32, -1, -(2**63), 2**63 - 1):
        ids = torch.tensor([0, 1, 2**32, 2**32 + 1, 2**40 + 5, -3])
        args = sample_boxes_args(6, 32, 32, 3, seed=seed, ids=ids)
        assert_equal_outputs(emu().sample_boxes(*args), R.sample_boxes(*args), range(5))


# ------------------------------------------------------------------------------------- anm_mask
FUSED_NAMES = ("erased", "targets", "box_max", "box_min", "ratio", "fill_max", "fill_min",
               "peak_max", "peak_min", "energy", "seed_out")


def fused_inputs(B, C, H, W, K, h, w, dtype, fdtype, tdtype, layout, N=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = relayout(torch.randn(B, C, H, W, generator=g).to(dtype), layout)
    fmap = relayout(torch.randn(B, K, h, w, generator=g).relu().to(fdtype), layout)
    t = torch.softmax(torch.randn(B, N, generator=g) * 3, 1).to(tdtype)
    q = torch.rand(B, generator=g)
    q[: B // 4] = 0.0
    q[B // 4: B // 2] = 1.0
    ids = torch.randperm(10 * B + 3, generator=g)[:B]
    return x, fmap, t, q, ids


def assert_fused_identical(got, want):
    assert len(got) == len(want) == len(FUSED_NAMES)
    for name, a, b in zip(FUSED_NAMES, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.stride() == b.stride(), name
        assert torch.equal(a, b), f"{name} differs from the CPU fused op"


FUSED_CASES = [  # (B, C, H, W, K, h, w, N)
    (1, 3, 32, 32, 8, 4, 4, 10),     # batch 1, CIFAR-like
    (5, 3, 17, 29, 6, 3, 5, 7),      # odd sizes
    (3, 1, 5, 6, 4, 7, 7, 2),        # image smaller than the feature map, one channel
    (9, 4, 12, 12, 300, 2, 2, 40),   # more channels than threads
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("config", ["cifar", "clothing1m", "constant"])
def test_anm_mask_emulated(schedule, case, layout, config):
    B, C, H, W, K, h, w, N = case
    cfg = {"cifar": anm_fast.ANMConfig.cifar(), "clothing1m": anm_fast.ANMConfig.clothing1m(),
           "constant": anm_fast.ANMConfig(fill=(0.5,), anchor="corner")}[config]
    x, fmap, t, q, ids = fused_inputs(B, C, H, W, K, h, w, torch.float32, torch.float32,
                                      torch.float32, layout, N)
    args = anm_mask_args(x, fmap, t, q, ids, torch.tensor(1234), cfg)
    assert_fused_identical(emu().anm_mask(*args), ops.anm_mask(*args))


@pytest.mark.parametrize("dtypes", [(torch.float16, torch.float32, torch.float32),
                                    (torch.bfloat16, torch.bfloat16, torch.float16),
                                    (torch.float64, torch.float64, torch.float64),
                                    (torch.float32, torch.float16, torch.bfloat16)],
                         ids=lambda d: "-".join(str(t).split(".")[1] for t in d))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_anm_mask_emulated_dtypes(schedule, dtypes, layout):
    x_dtype, f_dtype, t_dtype = dtypes
    x, fmap, t, q, ids = fused_inputs(6, 3, 19, 13, 16, 4, 3, x_dtype, f_dtype, t_dtype, layout)
    args = anm_mask_args(x, fmap, t, q, ids, torch.tensor(-5), anm_fast.ANMConfig.cifar())
    assert_fused_identical(emu().anm_mask(*args), ops.anm_mask(*args))


def test_anm_mask_emulated_host_seed_and_many_constant_fills():
    # A seed may stay on the host while the tensors are on the device; here both are the CPU, so
    # the kernel's seed read is what runs. 600 constant fills: more than the kernel argument holds.
    cfg = anm_fast.ANMConfig(fill=(0.25,))
    x, fmap, t, q, ids = fused_inputs(3, 600, 6, 5, 4, 2, 2, torch.float32, torch.float32,
                                      torch.float32, "contiguous")
    args = anm_mask_args(x, fmap, t, q, ids, torch.tensor(2**40 + 3), cfg)
    assert_fused_identical(emu().anm_mask(*args), ops.anm_mask(*args))


def test_anm_mask_emulated_value_checks():
    x, fmap, t, q, ids = fused_inputs(4, 3, 8, 8, 4, 2, 2, torch.float32, torch.float32,
                                      torch.float32, "contiguous")
    cfg = anm_fast.ANMConfig.cifar()
    bad_q = q.clone()
    bad_q[1] = 1.5
    for quality, message in ((bad_q, "quality must lie in"),
                             (torch.full_like(q, float("nan")), "quality contains NaN")):
        args = anm_mask_args(x, fmap, t, quality, ids, torch.tensor(0), cfg)
        for op in (emu().anm_mask, ops.anm_mask):
            with pytest.raises(ValueError, match=message):
                op(*args)
        emu().anm_mask(*anm_mask_args(x, fmap, t, quality, ids, torch.tensor(0), cfg, False))
    nan_map = fmap.clone()
    nan_map[2, 0, 0, 0] = float("inf")
    args = anm_mask_args(x, nan_map, t, q, ids, torch.tensor(0), cfg)
    with pytest.raises(ValueError, match="non-finite"):
        emu().anm_mask(*args)


def test_anm_mask_emulated_is_one_launch():
    x, fmap, t, q, ids = fused_inputs(4, 3, 8, 8, 4, 2, 2, torch.float32, torch.float32,
                                      torch.float32, "contiguous")
    args = anm_mask_args(x, fmap, t, q, ids, torch.tensor(0), anm_fast.ANMConfig.cifar(), False)
    before = emu().launch_count()
    emu().anm_mask(*args)
    assert emu().launch_count() - before == 1


def test_anm_mask_emulated_bit_identical_on_thousands_of_samples():
    """Energy, peaks, boxes, fills and erased images the same bits as the CPU fused op on 2048
    random samples over layouts, dtypes, sizes and configs."""
    gen = torch.Generator().manual_seed(9)
    emu().set_schedule(2, 21)
    layouts = ["contiguous", "channels_last", "sliced", "permuted"]
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    configs = [anm_fast.ANMConfig.cifar(), anm_fast.ANMConfig.clothing1m()]
    n = 0
    for i in range(64):
        C = int(torch.randint(1, 5, (1,), generator=gen))
        H, W = (int(v) for v in torch.randint(2, 24, (2,), generator=gen))
        K = int(torch.randint(1, 40, (1,), generator=gen))
        h, w = (int(v) for v in torch.randint(1, 7, (2,), generator=gen))
        x, fmap, t, q, ids = fused_inputs(32, C, H, W, K, h, w, dtypes[i % 3], dtypes[(i + 1) % 3],
                                          torch.float32, layouts[i % 4], seed=i)
        if i % 4 == 0:  # few distinct values: ties everywhere
            fmap = torch.round(fmap * 2) / 2
        args = anm_mask_args(x, fmap, t, q, ids, torch.tensor(i), configs[i % 2], False)
        assert_fused_identical(emu().anm_mask(*args), ops.anm_mask(*args))
        n += 32
    emu().set_schedule(0, 0)
    assert n == 2048


def test_anm_mask_backward_is_the_erase_backward():
    # The fused op's autograd (anm_fast/_ops.py) on the CPU kernel: gradients equal those of
    # erase_and_modulate with the op's own boxes.
    x, fmap, t, q, ids = fused_inputs(4, 3, 9, 7, 4, 2, 2, torch.float64, torch.float64,
                                      torch.float64, "contiguous")
    x.requires_grad_(True)
    t.requires_grad_(True)
    args = anm_mask_args(x, fmap, t, q, ids, torch.tensor(3), anm_fast.ANMConfig.cifar(), False)
    out = ops.anm_mask(*args)
    g_e, g_t = torch.randn_like(out[0]), torch.randn_like(out[1])
    gx, gt = torch.autograd.grad((out[0] * g_e).sum() + (out[1] * g_t).sum(), (x, t))
    rx, rt = R.erase_and_modulate_backward(g_e, g_t, t.detach(), out[2], out[3], out[4], 1.0)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gt, rt)
