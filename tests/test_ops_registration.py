"""torch.library integration: opcheck (schema, fake kernels, strides, autograd registration),
gradcheck in float64, and torch.compile(fullgraph=True) equal to eager."""
import pytest
import torch

import anm_fast
from anm_fast import _ops
from anm_fast import reference as R
from anm_fast import config
from anm_fast.config import ANMConfig, BoxParams

ops = torch.ops.anm_fast


def layouts(t):
    yield "contiguous", t.contiguous()
    yield "channels_last", t.contiguous(memory_format=torch.channels_last)
    yield "permuted", t.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)


def boxes_for(B, H, W, C, seed=5):
    pmax = torch.stack((torch.randint(0, H, (B,)), torch.randint(0, W, (B,))), 1)
    pmin = torch.stack((torch.randint(0, H, (B,)), torch.randint(0, W, (B,))), 1)
    return ops.sample_boxes(pmax, pmin, torch.rand(B), torch.arange(B), torch.tensor(seed), H, W,
                            C, ANMConfig().box_params(), torch.zeros(C))


def test_schemas_match_the_python_copy():
    names = _ops.OP_NAMES + (_ops.FUSED_CPU_OPS if anm_fast.has_extension() else ())
    for name in names:
        schema = str(getattr(ops, name).default._schema)
        assert schema == f"anm_fast::{name}{_ops.SCHEMAS[name]}"


@pytest.mark.skipif(not anm_fast.has_extension(), reason="compares with the compiled kernels")
def test_box_params_layout_is_the_same_in_python_and_cpp():
    # the C++ check names the fields it reads, in order; BoxParams packs them in its field order
    peaks = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError) as info:
        ops.sample_boxes(peaks, peaks, torch.ones(1), torch.arange(1), torch.tensor(0), 8, 8, 3,
                         [0.0], torch.zeros(3))
    assert f"must hold {len(BoxParams._fields)} values ({', '.join(BoxParams._fields)};" \
        in str(info.value)
    flags = config._BOX_FLAGS  # the flags come last, in both
    assert BoxParams._fields[-len(flags):] == flags
    bad = ANMConfig().box_params()
    bad[-len(flags)] = 0.5
    with pytest.raises(ValueError, match=f"box_params\\[{len(bad) - len(flags)}\\] "
                                         f"\\({flags[0]}\\) must be 0 or 1"):
        ops.sample_boxes(peaks, peaks, torch.ones(1), torch.arange(1), torch.tensor(0), 8, 8, 3,
                         bad, torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_opcheck_activation_peaks(dtype):
    for _, fmap in layouts(torch.randn(3, 6, 4, 5).to(dtype)):
        torch.library.opcheck(ops.activation_peaks.default, (fmap, 13, 9, 0.0))
        torch.library.opcheck(ops.activation_peaks.default, (fmap, 13, 9, 1.0 / 255))


def test_opcheck_sample_boxes():
    B, H, W, C = 9, 20, 24, 3
    pmax = torch.stack((torch.randint(0, H, (B,)), torch.randint(0, W, (B,))), 1)
    args = (pmax, pmax.flip(0), torch.rand(B), torch.arange(B), torch.tensor(3), H, W, C,
            ANMConfig().box_params(), torch.zeros(C))
    torch.library.opcheck(ops.sample_boxes.default, args)
    args = args[:8] + (ANMConfig(fill=(0.1, 0.2, 0.3)).box_params(), torch.tensor([0.1, 0.2, 0.3]))
    torch.library.opcheck(ops.sample_boxes.default, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_erase_and_modulate(dtype):
    B, C, H, W = 4, 3, 9, 7
    bmax, bmin, ratio, fmax, fmin = boxes_for(B, H, W, C)
    t = torch.softmax(torch.randn(B, 5), 1).to(dtype)
    for _, x in layouts(torch.randn(B, C, H, W).to(dtype)):
        x.requires_grad_(True)
        t.requires_grad_(True)
        torch.library.opcheck(ops.erase_and_modulate.default,
                              (x, t, bmax, bmin, fmax, fmin, ratio, 1.0))
        g = torch.randn(2 * B, C, H, W).to(dtype)
        for _, gl in layouts(g):
            torch.library.opcheck(ops.erase_and_modulate_backward.default,
                                  (gl, torch.randn(B, 5).to(dtype), t.detach(), bmax, bmin, ratio,
                                   1.0))


def test_gradcheck_erase_and_modulate_float64():
    B, C, H, W, N = 3, 2, 6, 5, 4
    bmax, bmin, ratio, fmax, fmin = boxes_for(B, H, W, C)
    ratio = torch.tensor([0.05, 0.3, 3.0])  # the last sample has the clamp active
    x = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    t = torch.softmax(torch.randn(B, N, dtype=torch.float64), 1).requires_grad_(True)

    def f(x, t):
        return anm_fast.erase_and_modulate(x, t, bmax, bmin, fmax, fmin, ratio)

    assert torch.autograd.gradcheck(f, (x, t))
    # channels_last input, too
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(f, (xc, t))


def test_gradient_is_zero_inside_boxes_and_passes_outside():
    B, C, H, W = 2, 1, 8, 8
    box = torch.tensor([[2, 2, 3, 3], [0, 0, 8, 8]])
    x = torch.randn(B, C, H, W, requires_grad=True)
    t = torch.eye(3)[:2].requires_grad_(True)
    fills = torch.zeros(B, C)
    out = anm_fast.erase_and_modulate(x, t, box, box, fills, fills, torch.tensor([0.1, 0.1]))
    out.erased.sum().backward()
    inside = R.box_mask(box, H, W).float()
    torch.testing.assert_close(x.grad, 2 * (1 - inside))


def _mask_fn(x, fmap, targets, quality, seed):
    m = anm_fast.anm_mask(x, fmap, targets, quality, seed=seed)
    return m.erased, m.targets, m.box_max, m.box_min, m.peak_max, m.energy


def test_torch_compile_fullgraph_equals_eager():
    torch._dynamo.reset()
    B = 6
    x = torch.randn(B, 3, 16, 16)
    fmap = torch.randn(B, 8, 4, 4)
    t = torch.softmax(torch.randn(B, 10), 1)
    q = torch.rand(B)
    seed = torch.tensor(1234)
    eager = _mask_fn(x, fmap, t, q, seed)
    compiled = torch.compile(_mask_fn, fullgraph=True, backend="inductor")(x, fmap, t, q, seed)
    for e, c in zip(eager, compiled):
        assert torch.equal(e, c)


def test_torch_compile_backward_through_erase():
    torch._dynamo.reset()
    B = 4
    bmax, bmin, ratio, fmax, fmin = boxes_for(B, 12, 12, 3)

    def loss(x, t):
        out = anm_fast.erase_and_modulate(x, t, bmax, bmin, fmax, fmin, ratio)
        return (out.erased ** 2).sum() + (out.targets * torch.arange(5.0)).sum()

    x = torch.randn(B, 3, 12, 12, requires_grad=True)
    t = torch.softmax(torch.randn(B, 5), 1).requires_grad_(True)
    gx, gt = torch.autograd.grad(loss(x, t), (x, t))
    cx, ct = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x, t), (x, t))
    torch.testing.assert_close(cx, gx)
    torch.testing.assert_close(ct, gt)


def test_opcheck_on_cuda(gpu_backend):
    dev = "cuda"
    fmap = torch.randn(3, 8, 4, 4, device=dev).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(ops.activation_peaks.default, (fmap, 13, 9, 1.0 / 255))
    pmax, pmin, _ = ops.activation_peaks(fmap, 13, 9, 0.0)
    args = (pmax, pmin, torch.rand(3, device=dev), torch.arange(3, device=dev),
            torch.tensor(5, device=dev), 13, 9, 3, ANMConfig().box_params(),
            torch.zeros(0, device=dev))
    torch.library.opcheck(ops.sample_boxes.default, args)
    bmax, bmin, ratio, fmax, fmin = ops.sample_boxes(*args)
    for kind in ("contiguous", "channels_last"):
        x = relayout(torch.randn(3, 3, 13, 9, device=dev), kind).requires_grad_(True)
        t = torch.softmax(torch.randn(3, 4, device=dev), 1).requires_grad_(True)
        torch.library.opcheck(ops.erase_and_modulate.default,
                              (x, t, bmax, bmin, fmax, fmin, ratio, 1.0))
        g = relayout(torch.randn(6, 3, 13, 9, device=dev), kind)
        torch.library.opcheck(ops.erase_and_modulate_backward.default,
                              (g, torch.randn(3, 4, device=dev), t.detach(), bmax, bmin, ratio,
                               1.0))
