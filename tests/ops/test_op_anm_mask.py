"""anm_mask (stages 1-3 in one op) on every backend against the reference composition
activation_peaks -> sample_boxes -> erase_and_modulate: every output the same bits, except the
targets (per-dtype tolerance)."""
import pytest
import torch

import anm_fast
from anm_fast import reference as R
from anm_fast.testing import TOLERANCES, relayout

NAMES = ("erased", "targets", "box_max", "box_min", "ratio", "fill_max", "fill_min", "peak_max",
         "peak_min", "energy", "seed")

CASES = [  # B, C, H, W, K, h, w, N, dtype, layout, uniform, anchor
    (5, 3, 32, 32, 8, 4, 4, 10, torch.float32, "contiguous", True, True),
    (3, 2, 17, 40, 5, 3, 5, 3, torch.float16, "channels_last", False, False),  # 2 tiles
    (1, 1, 9, 8, 2, 2, 2, 2, torch.float64, "sliced", True, False),          # batch 1
    (2, 5, 12, 10, 3, 6, 5, 1500, torch.float32, "permuted", False, True),   # many classes
    (4, 3, 32, 32, 16, 4, 4, 10, torch.bfloat16, "channels_last", True, True),
    (512, 3, 32, 32, 64, 4, 4, 10, torch.float32, "contiguous", True, True),  # CIFAR B=512
    (8, 3, 224, 224, 256, 7, 7, 1000, torch.float16, "channels_last", True, True),  # ImageNet
]


def mask_args(B, C, H, W, K, h, w, N, dtype, layout, uniform=True, anchor=True, seed=99):
    gen = torch.Generator().manual_seed(B * 7 + C + H)
    x = relayout(torch.randn(B, C, H, W, generator=gen).to(dtype), layout)
    fmap = relayout(torch.randn(B, K, h, w, generator=gen).to(dtype), layout)
    t = torch.softmax(torch.randn(B, N, generator=gen) * 3, 1).to(dtype)
    q = torch.rand(B, generator=gen)
    q[0] = 0.0
    ids = torch.arange(B) * 5 + 2**33
    cfg = anm_fast.ANMConfig(area_lo=0.05, area_hi=0.3, anchor="center" if anchor else "corner",
                             fill="uniform" if uniform else "zero")
    return (x, fmap, t, q, ids, torch.tensor(seed), 1.0 / 255, cfg.box_params(),
            torch.linspace(-1.0, 1.0, C), 1.0, True)


def assert_same_outputs(got, want, dtype):
    assert len(got) == len(want) == len(NAMES)
    for name, g, r in zip(NAMES, got, want):
        assert g.dtype == r.dtype and g.shape == r.shape, name
        # the same layout (strides of size-1 dimensions do not matter)
        assert [s for s, n in zip(g.stride(), g.shape) if n > 1] == \
            [s for s, n in zip(r.stride(), r.shape) if n > 1], f"{name}: another layout"
        if name == "targets":
            rtol, atol = TOLERANCES[dtype]
            torch.testing.assert_close(g, r, rtol=rtol, atol=atol)
        else:  # energy, peaks, boxes, fills, erased images: the same bits
            assert torch.equal(g, r), f"{name} differs from the reference"


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:8])) + f"-{c[9]}")
def test_matches_the_three_reference_ops(backend, case):
    if not backend.has("anm_mask"):
        pytest.skip(f"{backend.name} has no anm_mask")
    B, C, H, W, K, h, w, N, dtype, layout, uniform, anchor = case
    backend.skip_large(B * C * H * W + B * K * h * w, limit=20_000)
    if dtype == torch.bfloat16 and not backend.writes_bf16:
        pytest.skip("Triton's interpreter rounds float32 -> bfloat16 toward zero")
    args = mask_args(B, C, H, W, K, h, w, N, dtype, layout, uniform, anchor)
    assert_same_outputs(backend("anm_mask", *args), R.anm_mask(*args), dtype)


@pytest.mark.parametrize("seed", [0, -1, 2**63 - 1, -(2**63), 2**32])
def test_seeds_and_the_seed_handed_back(backend, seed):
    if not backend.has("anm_mask"):
        pytest.skip(f"{backend.name} has no anm_mask")
    args = list(mask_args(2, 3, 8, 8, 4, 2, 2, 3, torch.float32, "contiguous", seed=seed))
    out = backend("anm_mask", *args)
    assert out[-1].shape == () and out[-1].dtype == torch.int64 and out[-1].item() == seed
    assert_same_outputs(out, R.anm_mask(*args), torch.float32)


def test_empty_batch(backend):
    if not backend.has("anm_mask"):
        pytest.skip(f"{backend.name} has no anm_mask")
    args = [a[:0] if isinstance(a, torch.Tensor) and a.dim() and i != 8 else a
            for i, a in enumerate(mask_args(2, 3, 8, 8, 4, 2, 2, 3, torch.float32,
                                            "contiguous", seed=7))]
    out = backend("anm_mask", *args)
    assert out[0].shape == (0, 3, 8, 8) and out[9].shape == (0, 2, 2) and out[-1].item() == 7
