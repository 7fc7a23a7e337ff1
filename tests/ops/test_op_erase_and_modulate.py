"""erase_and_modulate and its backward on every backend against the reference: erased images
exactly (copies and fills), targets and gradients within the per-dtype tolerance."""
import pytest
import torch
import torch.nn.functional as F

import anm_fast
from anm_fast import reference as R
from anm_fast.testing import TOLERANCES, aten_calls, relayout, sample_boxes_args

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(1, 3, 32, 32, 10), (7, 1, 5, 7, 2), (3, 3, 17, 9, 100), (2, 5, 40, 33, 3),
          (2, 2, 8, 8, 1500), (64, 3, 17, 9, 100), (1024, 3, 8, 8, 10), (2, 3, 224, 224, 10),
          (1024, 3, 32, 32, 10), (3, 5, 17, 13, 10), (4, 8, 16, 16, 10), (2, 1, 9, 8, 10),
          (2, 1, 1, 1, 2)]


def layout_of(t, kind):
    """relayout's layouts, and two more the kernels must take as they are."""
    if kind == "batch_sliced":  # every other sample of a larger batch
        big = torch.zeros((2 * t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype)
        big[1::2] = t
        return big[1::2]
    if kind == "offset":  # dense, one element past an aligned address: no vector loads
        flat = torch.zeros(t.numel() + 1, dtype=t.dtype)
        view = flat[1:].view(t.shape)
        view.copy_(t)
        return view
    return relayout(t, kind)


def inputs(B, C, H, W, N, dtype, seed=3):
    gen = torch.Generator().manual_seed(B + C + H + W + N)
    x = torch.randn(B, C, H, W, generator=gen).to(dtype)
    t = torch.softmax(torch.randn(B, N, generator=gen) * 3, dim=1)
    t[::3] = F.one_hot(torch.randint(0, N, (t[::3].shape[0],), generator=gen), N).float()
    boxes = R.sample_boxes(*sample_boxes_args(B, H, W, C, seed=seed,
                                              fill_value=None))
    return x, t.to(dtype), boxes


def check_dtype(backend, dtype):
    if dtype == torch.bfloat16 and not backend.writes_bf16:
        pytest.skip("Triton's interpreter rounds float32 -> bfloat16 toward zero")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced", "permuted",
                                  "batch_sliced", "offset"])
def test_matches_reference(backend, shape, dtype, kind):
    B, C, H, W, N = shape
    check_dtype(backend, dtype)
    backend.skip_large(B * C * H * W, limit=20_000)
    x, t, (bmax, bmin, ratio, fmax, fmin) = inputs(B, C, H, W, N, dtype)
    x = layout_of(x, kind)
    ratio = ratio.clone()
    ratio[0] = 5.0  # label shift clamped to t_k for sample 0
    for t_dtype, gain in ((torch.float32, 1.0), (dtype, 4.0)):
        tt = t.to(t_dtype)
        erased, targets = backend("erase_and_modulate", x, tt, bmax, bmin, fmax, fmin, ratio,
                                  gain)
        r_erased, r_targets = R.erase_and_modulate(x, tt, bmax, bmin, fmax, fmin, ratio, gain)
        assert erased.shape == (2 * B, C, H, W) and erased.dtype == dtype
        assert erased.stride() == r_erased.stride(), "output layout differs from the rule"
        assert torch.equal(erased, r_erased)  # copies and constant fills are exact
        rtol, atol = TOLERANCES[t_dtype]
        assert targets.dtype == t_dtype and targets.is_contiguous()
        torch.testing.assert_close(targets, r_targets, rtol=rtol, atol=atol)
        if backend.name in ("cuda_emulated", "cuda"):  # the C++ CPU kernel's steps, bit for bit
            assert torch.equal(targets, torch.ops.anm_fast.erase_and_modulate(
                x, tt, bmax, bmin, fmax, fmin, ratio, gain)[1])
        if t_dtype == dtype and dtype in (torch.float32, torch.float64):
            torch.testing.assert_close(targets.sum(1), torch.ones(B, dtype=t_dtype), rtol=0,
                                       atol=1e-5)


def test_layout_rule(backend):
    x, t, (bmax, bmin, ratio, fmax, fmin) = inputs(2, 3, 8, 8, 4, torch.float32)
    out = backend("erase_and_modulate", x.contiguous(memory_format=torch.channels_last), t,
                  bmax, bmin, fmax, fmin, ratio, 1.0)[0]
    assert out.is_contiguous(memory_format=torch.channels_last)
    out = backend("erase_and_modulate", x[:, :, ::1, :], t, bmax, bmin, fmax, fmin, ratio,
                  1.0)[0]
    assert out.is_contiguous()


def test_strided_targets_boxes_and_gain(backend):
    B, C, H, W, N = 5, 3, 12, 10, 7
    x, t, (bmax, bmin, ratio, fmax, fmin) = inputs(B, C, H, W, N, torch.float32)
    t_strided = t.t().contiguous().t()                      # column-major targets
    bmax32 = bmax.to(torch.int32)
    bmin_strided = torch.stack((bmin, bmin), 2)[..., 1]     # strided boxes
    full = torch.tensor([[0, 0, H, W]] * B)                 # whole-image box
    for gain in (0.0, 0.5, 3.0):
        for boxes in ((bmax32, bmin_strided), (full, bmin)):
            got = backend("erase_and_modulate", x, t_strided, *boxes, fmax, fmin, ratio, gain)
            want = R.erase_and_modulate(x, t, *boxes, fmax, fmin, ratio, gain)
            assert torch.equal(got[0], want[0])
            torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_label_shift_follows_the_spec(backend):
    t = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.5, 0.3, 0.2, 0.0], [0.04, 0.02, 0.9, 0.04]])
    ratio = torch.tensor([0.06, 0.3, 2.0])
    box = torch.tensor([[0, 0, 1, 1]] * 3)
    fills = torch.zeros(3, 1)
    x = torch.zeros(3, 1, 2, 2)
    _, out = backend("erase_and_modulate", x, t, box, box, fills, fills, ratio, 1.0)
    want = torch.tensor([[0.02, 0.94, 0.02, 0.02],          # d = s = 0.06
                         [0.2, 0.4, 0.3, 0.1],               # d = s = 0.3
                         [0.34, 0.32, 0.0, 0.34]])           # d clamped to t_k = 0.9
    torch.testing.assert_close(out, want)
    _, out = backend("erase_and_modulate", x, t, box, box, fills, fills, ratio, 0.5)
    torch.testing.assert_close(out[0], torch.tensor([0.01, 0.97, 0.01, 0.01]))
    # ties in the top class: the first occurrence gives the mass
    tie = torch.tensor([[0.5, 0.5]])
    _, out = backend("erase_and_modulate", x[:1], tie, box[:1], box[:1], fills[:1], fills[:1],
                     torch.tensor([0.1]), 1.0)
    torch.testing.assert_close(out, torch.tensor([[0.4, 0.6]]))


@pytest.mark.parametrize("shape", [(6, 3, 11, 9, 5), (1, 3, 32, 32, 10), (3, 5, 17, 13, 6),
                                   (2, 3, 224, 224, 6), (1024, 3, 32, 32, 10), (4, 8, 16, 16, 6),
                                   (2, 1, 9, 8, 6)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced", "offset"])
def test_backward_matches_reference(backend, shape, dtype, kind):
    B, C, H, W, N = shape
    check_dtype(backend, dtype)
    backend.skip_large(B * C * H * W, limit=20_000)
    if not backend.has("erase_and_modulate_backward"):
        pytest.skip(f"{backend.name} has no erase_and_modulate_backward")
    _, t, (bmax, bmin, ratio, _, _) = inputs(B, C, H, W, N, dtype, seed=11)
    ratio = ratio.clone()
    ratio[0] = 5.0  # clamp active for sample 0
    gen = torch.Generator().manual_seed(7 * B + H)
    g = layout_of(torch.randn(2 * B, C, H, W, generator=gen).to(dtype), kind)
    gt = torch.randn(B, N, generator=gen).to(dtype)
    for gain in (1.0, 5.0):
        gx, gtt = backend("erase_and_modulate_backward", g, gt, t, bmax, bmin, ratio, gain)
        rgx, rgtt = R.erase_and_modulate_backward(g, gt, t, bmax, bmin, ratio, gain)
        rtol, atol = TOLERANCES[dtype]
        assert gx.shape == (B, C, H, W) and gx.dtype == dtype and gtt.dtype == dtype
        assert gx.stride() == rgx.stride(), "grad_x layout differs from the rule"
        torch.testing.assert_close(gx, rgx, rtol=rtol, atol=atol)
        torch.testing.assert_close(gtt, rgtt, rtol=rtol, atol=atol)
        if backend.name in ("cuda_emulated", "cuda"):  # the C++ CPU kernel's sums, bit for bit
            assert torch.equal(gx, torch.ops.anm_fast.erase_and_modulate_backward(
                g, gt, t, bmax, bmin, ratio, gain)[0])


def test_empty_batch(backend):
    x = torch.randn(0, 3, 8, 8)
    t = torch.zeros(0, 4)
    box = torch.zeros(0, 4, dtype=torch.int64)
    f = torch.zeros(0, 3)
    r = torch.zeros(0)
    erased, targets = backend("erase_and_modulate", x, t, box, box, f, f, r, 1.0)
    assert erased.shape == (0, 3, 8, 8) and targets.shape == (0, 4)
    if backend.has("erase_and_modulate_backward"):
        gx, gt = backend("erase_and_modulate_backward", erased, targets, t, box, box, r, 1.0)
        assert gx.shape == (0, 3, 8, 8) and gt.shape == (0, 4)


MIXED = [(t, g) for t in DTYPES for g in DTYPES if t != g]


@pytest.mark.parametrize("t_dtype,g_dtype", MIXED,
                         ids=lambda d: str(d).replace("torch.", ""))
def test_backward_mixed_dtypes(backend, t_dtype, g_dtype):
    """The label arithmetic's types when targets and gradients differ (docs/SPEC.md, "Erasing and
    labels"): the arg-max and the clamp in the targets' type, the sum in the gradient's."""
    check_dtype(backend, g_dtype)
    if not backend.has("erase_and_modulate_backward"):
        pytest.skip(f"{backend.name} has no erase_and_modulate_backward")
    B, C, H, W, N = 4, 2, 5, 6, 40  # N > 32: a warp's lanes hold several classes each
    _, t, (bmax, bmin, ratio, _, _) = inputs(B, C, H, W, N, torch.float64, seed=5)
    t[1] = 0.0
    t[1, 3] = 0.5
    t[1, 7] = 0.5 + 2.0**-40  # the top class only in float64: a tie (class 3) in float32
    t = t.to(t_dtype)
    ratio = torch.tensor([5.0, 5.0, 0.01, 0.02])  # the clamp active for samples 0 and 1
    gen = torch.Generator().manual_seed(13)
    g = torch.randn(2 * B, C, H, W, generator=gen, dtype=torch.float64).to(t_dtype)
    gt = torch.randn(B, N, generator=gen, dtype=torch.float64).to(g_dtype)  # 53-bit values
    gx, gtt = backend("erase_and_modulate_backward", g, gt, t, bmax, bmin, ratio, 1.0)
    rgx, rgtt = R.erase_and_modulate_backward(g, gt, t, bmax, bmin, ratio, 1.0)
    assert gx.dtype == t_dtype and gtt.dtype == g_dtype
    torch.testing.assert_close(gx, rgx, rtol=TOLERANCES[t_dtype][0], atol=TOLERANCES[t_dtype][1])
    rtol, atol = TOLERANCES[g_dtype]
    torch.testing.assert_close(gtt, rgtt, rtol=rtol, atol=atol)
    k = 7 if t_dtype == torch.float64 else 3
    assert (gtt[1] != gt[1]).nonzero().flatten().tolist() == [k]


def test_reads_boxes_fills_and_ratios_as_given(backend):
    """int32 / int16 / strided boxes, float16 / float64 fills, a float64 ratio, column-major
    targets: the same result as the canonical dtypes (the CUDA kernels read these in place)."""
    B, C, H, W, N = 5, 3, 12, 10, 7
    x, t, (bmax, bmin, ratio, fmax, fmin) = inputs(B, C, H, W, N, torch.float32)
    fmax = fmax.to(torch.float16).float()  # values that float16 holds exactly
    want = R.erase_and_modulate(x, t, bmax, bmin, fmax, fmin, ratio, 2.0)
    got = backend("erase_and_modulate", x, t.t().contiguous().t(), bmax.to(torch.int32),
                  torch.stack((bmin, bmin), 2)[..., 1].to(torch.int16), fmax.half(),
                  fmin.double(), ratio.double(), 2.0)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    if backend.has("erase_and_modulate_backward"):
        g = torch.randn(2 * B, C, H, W)
        gt = torch.randn(B, N)
        want = R.erase_and_modulate_backward(g, gt, t, bmax, bmin, ratio, 2.0)
        got = backend("erase_and_modulate_backward", g, gt.t().contiguous().t(),
                      t.t().contiguous().t(), bmax.to(torch.int32), bmin.to(torch.uint8),
                      ratio.double(), 2.0)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


def huge_sample_stride(t):
    """t (2, ...) as a view whose second sample starts 2^31 elements after the first: a sample
    base offset past 32 bits. The storage is reserved, not touched (it costs no memory)."""
    per = t[0].numel()
    flat = torch.empty(2**31 + per, dtype=t.dtype)
    view = flat.as_strided(tuple(t.shape), (2**31,) + tuple(t[0].stride()))
    view.copy_(t)
    return view


def test_sample_offsets_past_32_bits(backend):
    if backend.interpreted:
        pytest.skip("the Triton interpreter copies the whole 4 GiB storage")
    x, t, (bmax, bmin, ratio, fmax, fmin) = inputs(2, 3, 8, 8, 4, torch.float16)
    xv = huge_sample_stride(x)
    got = backend("erase_and_modulate", xv, t, bmax, bmin, fmax, fmin, ratio, 1.0)
    assert torch.equal(got[0], R.erase_and_modulate(x, t, bmax, bmin, fmax, fmin, ratio, 1.0)[0])
    if backend.has("erase_and_modulate_backward"):
        b1 = tuple(b[:1] for b in (bmax, bmin, ratio))
        g = torch.randn(2, 3, 8, 8).to(torch.float16)  # B = 1: copy 1 starts 2^31 further
        got = backend("erase_and_modulate_backward", huge_sample_stride(g), t[:1].float(),
                      t[:1], *b1, 1.0)
        want = R.erase_and_modulate_backward(g, t[:1].float(), t[:1], *b1, 1.0)
        assert torch.equal(got[0], want[0])


@pytest.mark.cuda_emulated
def test_cuda_kernels_are_one_launch_each_way(emulated_ops):
    """The CUDA erase_and_modulate and its backward: one kernel launch (labels included), and no
    ATen op (a cat, cast or copy would be a launch of its own on a GPU), with boxes, fills,
    ratios and targets in other dtypes and strides than the kernels' own."""
    ops = emulated_ops
    B, C, H, W, N = 5, 3, 12, 10, 7
    x, t, (bmax, bmin, ratio, fmax, fmin) = inputs(B, C, H, W, N, torch.float32)
    args = (x.contiguous(memory_format=torch.channels_last), t.t().contiguous().t(),
            bmax.to(torch.int32), torch.stack((bmin, bmin), 2)[..., 1], fmax.half(),
            fmin.double(), ratio.double(), 1.0)
    before = ops.launch_count()
    assert aten_calls(lambda: ops.erase_and_modulate(*args)) == []
    assert ops.launch_count() - before == 1
    g = torch.randn(2 * B, C, H, W)
    bargs = (g, torch.randn(N, B).t(), args[1].double(), *args[2:4], args[6], 1.0)
    before = ops.launch_count()
    assert aten_calls(lambda: ops.erase_and_modulate_backward(*bargs)) == []
    assert ops.launch_count() - before == 1


@pytest.mark.cuda_emulated
def test_cuda_kernels_refuse_images_past_32_bit_offsets(emulated_ops):
    ops = emulated_ops
    x = torch.zeros(1, 1, 1, 1).expand(1, 2, 2**15, 2**15)  # 2^31 elements, no memory
    box = torch.zeros(1, 4, dtype=torch.int64)
    t = torch.full((1, 2), 0.5)
    f = torch.zeros(1, 2)
    r = torch.zeros(1)
    with pytest.raises(ValueError, match="one image of 2 x 32768 x 32768"):
        ops.erase_and_modulate(x, t, box, box, f, f, r, 1.0)
    with pytest.raises(ValueError, match="one image of 2 x 32768 x 32768"):
        ops.erase_and_modulate_backward(x.expand(2, 2, 2**15, 2**15), t, t, box, box, r, 1.0)


# ---------------------------------------------------------------- what only a GPU shows
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_gradcheck_float64_on_the_gpu(gpu_backend, kind):
    B, C, H, W = 2, 3, 8, 9
    x = relayout(torch.randn(B, C, H, W, dtype=torch.float64, device="cuda"), kind)
    x.requires_grad_(True)
    # sample 0: shift 0.05 < t_k = 0.6 (pass-through); sample 1: shift 0.9 > t_k = 0.3 (clamped)
    t = torch.tensor([[0.6, 0.1, 0.1, 0.1, 0.1], [0.3, 0.2, 0.2, 0.2, 0.1]], dtype=torch.float64,
                     device="cuda", requires_grad=True)
    ratio = torch.tensor([0.05, 0.9], device="cuda")
    box_max = torch.tensor([[1, 2, 3, 4], [0, 0, 8, 2]], device="cuda")
    box_min = torch.tensor([[5, 5, 3, 4], [2, 3, 1, 1]], device="cuda")
    fills = torch.rand(B, C, device="cuda")

    def f(x, t):
        return anm_fast.erase_and_modulate(x, t, box_max, box_min, fills, fills, ratio)

    assert torch.autograd.gradcheck(f, (x, t))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_reference_labels_are_the_same_bits_on_cuda_and_cpu():
    # ATen divides by a Python number as a multiply by its reciprocal on CUDA: the reference
    # divides by a tensor, so the oracle does not depend on the device.
    gen = torch.Generator().manual_seed(4)
    for N in (2, 3, 7, 10, 100, 1000):
        t = torch.softmax(torch.randn(64, N, generator=gen) * 3, 1)
        ratio = torch.rand(64, generator=gen)
        g = torch.randn(64, N, generator=gen)
        assert torch.equal(R.modulate_targets(t.cuda(), ratio.cuda(), 1.5).cpu(),
                           R.modulate_targets(t, ratio, 1.5))
        box = torch.zeros(64, 4, dtype=torch.int64)
        x = torch.zeros(128, 1, 2, 2)
        cpu = R.erase_and_modulate_backward(x, g, t, box, box, ratio, 1.5)
        gpu = R.erase_and_modulate_backward(x.cuda(), g.cuda(), t.cuda(), box.cuda(), box.cuda(),
                                            ratio.cuda(), 1.5)
        torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-6, atol=1e-7)  # sums' order
