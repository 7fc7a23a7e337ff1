"""The released recipe's strong-augmentation views (torchvision.transforms.v2, per sample,
counter-based draws)."""
import pytest
import torch

from anm_fast.train.augment_strong import VIEWS, StrongViews, build_view, sample_seed

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def images(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    sv = StrongViews(MEAN, STD, size, size // 8)
    return sv, sv.from_uint8(u8), u8


@pytest.mark.parametrize("view", VIEWS)
def test_view_shape_dtype_and_determinism(view):
    sv, x, _ = images()
    ids = torch.arange(10, 16)
    a = sv(view, x, ids, seed=3, epoch=1, call=2)
    b = sv(view, x, ids, seed=3, epoch=1, call=2)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)                                     # same counters, same views
    assert not torch.equal(a, x)                                 # the view changes the images
    c = sv(view, x, ids, seed=3, epoch=1, call=3)
    assert not torch.equal(a, c)                                 # another call, other draws
    # a sample's view depends on its own id, not on the batch it came in
    alone = sv(view, x[2:3], ids[2:3], seed=3, epoch=1, call=2)
    assert torch.equal(alone[0], a[2])


def test_views_leave_the_callers_generator_alone():
    sv, x, _ = images()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    sv("autoaugment", x, torch.arange(6), seed=0, epoch=0, call=0)
    assert torch.equal(torch.get_rng_state(), before)


def test_randaugment_view_ends_with_a_16px_grey_cutout():
    sv, x, _ = images(n=8)
    out = sv.to_uint8(sv("randaugment", x, torch.arange(8), seed=1, epoch=0, call=0))
    grey = (out == 127).all(1).float()                           # (B, H, W)
    # a 16 x 16 window of grey in every image: the cutout (RandomErasing keeps it inside)
    windows = torch.nn.functional.avg_pool2d(grey[:, None], 16, stride=1)
    assert (windows.flatten(1).max(1).values == 1).all()


def test_round_trip_through_uint8_is_exact():
    sv, x, u8 = images()
    assert torch.equal(sv.to_uint8(x), u8)


def test_build_view_rejects_unknown_names_and_pipelines_are_v2():
    from torchvision.transforms import v2

    with pytest.raises(ValueError, match="unknown augmentation view"):
        build_view("mixup", 32, 4)
    t = build_view("autoaugment", 32, 4)
    assert isinstance(t, v2.Compose)
    assert any(isinstance(s, v2.AutoAugment) for s in t.transforms)
    assert any(isinstance(s, v2.RandAugment) for s in build_view("randaugment", 32, 4).transforms)
    warm = build_view("warmup", 32, 4).transforms
    assert isinstance(warm[0], v2.ColorJitter) and isinstance(warm[-1], v2.RandomAffine)


def test_sample_seeds_are_spread():
    seeds = {sample_seed(v, 0, e, c, i) for v in VIEWS for e in range(3) for c in range(3)
             for i in range(50)}
    assert len(seeds) == 3 * 3 * 3 * 50 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_views_run_on_the_gpu_and_match_the_cpu():
    sv, x, _ = images()
    ids = torch.arange(6)
    for view in VIEWS:
        gpu = sv(view, x.cuda(), ids, seed=0, epoch=0, call=0)
        assert gpu.is_cuda and gpu.shape == x.shape
    cpu = sv("randaugment", x, ids, seed=0, epoch=0, call=0)
    gpu = sv("randaugment", x.cuda(), ids, seed=0, epoch=0, call=0).cpu()
    assert (sv.to_uint8(cpu).int() - sv.to_uint8(gpu).int()).abs().float().mean() < 2.0
