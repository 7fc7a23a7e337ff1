"""anm_mask (peaks, boxes and erasing in one op) on every backend against the reference composition
activation_peaks -> sample_boxes -> erase_and_modulate: every output the same bits, except the
targets (per-dtype tolerance)."""
import pytest
import torch

import anm_fast
from anm_fast import reference as R
from anm_fast.testing import TOLERANCES, anm_mask_args, aten_calls, relayout

NAMES = ("erased", "targets", "box_max", "box_min", "ratio", "fill_max", "fill_min", "peak_max",
         "peak_min", "energy")

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
def test_seeds(backend, seed):
    if not backend.has("anm_mask"):
        pytest.skip(f"{backend.name} has no anm_mask")
    args = list(mask_args(2, 3, 8, 8, 4, 2, 2, 3, torch.float32, "contiguous", seed=seed))
    out = backend("anm_mask", *args)
    assert_same_outputs(out, R.anm_mask(*args), torch.float32)


def test_no_sample_ids_are_the_batch_positions(backend):
    if not backend.has("anm_mask"):
        pytest.skip(f"{backend.name} has no anm_mask")
    args = list(mask_args(5, 3, 8, 8, 4, 2, 2, 3, torch.float32, "contiguous", seed=3))
    args[4] = None
    want = list(args)
    want[4] = torch.arange(5)
    assert_same_outputs(backend("anm_mask", *args), R.anm_mask(*want), torch.float32)


def test_empty_batch(backend):
    if not backend.has("anm_mask"):
        pytest.skip(f"{backend.name} has no anm_mask")
    args = [a[:0] if isinstance(a, torch.Tensor) and a.dim() and i != 8 else a
            for i, a in enumerate(mask_args(2, 3, 8, 8, 4, 2, 2, 3, torch.float32,
                                            "contiguous", seed=7))]
    out = backend("anm_mask", *args)
    assert out[0].shape == (0, 3, 8, 8) and out[9].shape == (0, 2, 2)


# ----------------------------------------------------------- configs, dtype mixes, many samples
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


CONFIGS = {"cifar": anm_fast.ANMConfig.cifar(), "clothing1m": anm_fast.ANMConfig.clothing1m(),
           "constant": anm_fast.ANMConfig(fill=(0.5,), anchor="corner")}
FUSED_CASES = [  # (B, C, H, W, K, h, w, N)
    (5, 3, 17, 29, 6, 3, 5, 7),      # odd sizes
    (3, 1, 5, 6, 4, 7, 7, 2),        # image smaller than the feature map, one channel
    (9, 4, 12, 12, 300, 2, 2, 40),   # more channels than a CUDA block has threads
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_configs_and_layouts(backend, case, layout, config):
    if not backend.has("anm_mask"):
        pytest.skip(f"{backend.name} has no anm_mask")
    B, C, H, W, K, h, w, N = case
    x, fmap, t, q, ids = fused_inputs(B, C, H, W, K, h, w, torch.float32, torch.float32,
                                      torch.float32, layout, N)
    args = anm_mask_args(x, fmap, t, q, ids, 1234, CONFIGS[config])
    assert_same_outputs(backend("anm_mask", *args), R.anm_mask(*args), torch.float32)


@pytest.mark.parametrize("dtypes", [(torch.float16, torch.float32, torch.float32),
                                    (torch.bfloat16, torch.bfloat16, torch.float16),
                                    (torch.float64, torch.float64, torch.float64),
                                    (torch.float32, torch.float16, torch.bfloat16)],
                         ids=lambda d: "-".join(str(t).split(".")[1] for t in d))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dtype_mixes(backend, dtypes, layout):
    if not backend.has("anm_mask"):
        pytest.skip(f"{backend.name} has no anm_mask")
    x_dtype, f_dtype, t_dtype = dtypes
    if torch.bfloat16 in (x_dtype, t_dtype) and not backend.writes_bf16:
        pytest.skip("Triton's interpreter rounds float32 -> bfloat16 toward zero")
    x, fmap, t, q, ids = fused_inputs(6, 3, 19, 13, 16, 4, 3, x_dtype, f_dtype, t_dtype, layout)
    args = anm_mask_args(x, fmap, t, q, ids, -5, anm_fast.ANMConfig.cifar())
    assert_same_outputs(backend("anm_mask", *args), R.anm_mask(*args), t_dtype)
    if backend.name in ("cuda_emulated", "cuda"):  # the C++ CPU fused op's targets, bit for bit
        assert torch.equal(backend("anm_mask", *args)[1], torch.ops.anm_fast.anm_mask(*args)[1])


def test_more_constant_fills_than_a_kernel_argument_holds(backend):
    # 600 channels of constant fills (a CPU tensor): more than the CUDA kernels take by value.
    if not backend.has("anm_mask"):
        pytest.skip(f"{backend.name} has no anm_mask")
    x, fmap, t, q, ids = fused_inputs(3, 600, 6, 5, 4, 2, 2, torch.float32, torch.float32,
                                      torch.float32, "contiguous")
    args = anm_mask_args(x, fmap, t, q, ids, 2**40 + 3, anm_fast.ANMConfig(fill=(0.25,)))
    assert_same_outputs(backend("anm_mask", *args), R.anm_mask(*args), torch.float32)


def test_bit_identical_on_thousands_of_samples(backend):
    """Energy, peaks, boxes, fills and erased images the reference's bits on 2048 random samples
    (64 batches of 32) over layouts, dtypes, sizes and configs."""
    if not backend.has("anm_mask"):
        pytest.skip(f"{backend.name} has no anm_mask")
    if backend.interpreted:
        pytest.skip("too many batches for the Triton interpreter (run on a GPU)")
    gen = torch.Generator().manual_seed(9)
    layouts = ["contiguous", "channels_last", "sliced", "permuted"]
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    configs = [anm_fast.ANMConfig.cifar(), anm_fast.ANMConfig.clothing1m()]
    for i in range(64):
        C = int(torch.randint(1, 5, (1,), generator=gen))
        H, W = (int(v) for v in torch.randint(2, 24, (2,), generator=gen))
        K = int(torch.randint(1, 40, (1,), generator=gen))
        h, w = (int(v) for v in torch.randint(1, 7, (2,), generator=gen))
        x, fmap, t, q, ids = fused_inputs(32, C, H, W, K, h, w, dtypes[i % 3],
                                          dtypes[(i + 1) % 3], torch.float32, layouts[i % 4],
                                          seed=i)
        if i % 4 == 0:  # few distinct values: ties everywhere
            fmap = torch.round(fmap * 2) / 2
        args = anm_mask_args(x, fmap, t, q, ids, i, configs[i % 2], False)
        assert_same_outputs(backend("anm_mask", *args), R.anm_mask(*args), torch.float32)


# ------------------------------------------------------------ what only the CUDA kernel does
@pytest.mark.cuda_emulated
def test_cuda_kernel_value_checks(emulated_ops):
    # The CUDA kernel raises flags, read once after the launch: the C++ CPU op's messages.
    x, fmap, t, q, ids = fused_inputs(4, 3, 8, 8, 4, 2, 2, torch.float32, torch.float32,
                                      torch.float32, "contiguous")
    cfg = anm_fast.ANMConfig.cifar()
    bad_q = q.clone()
    bad_q[1] = 1.5
    for quality, message in ((bad_q, "quality must lie in"),
                             (torch.full_like(q, float("nan")), "quality contains NaN")):
        args = anm_mask_args(x, fmap, t, quality, ids, 0, cfg)
        for op in (emulated_ops.anm_mask, torch.ops.anm_fast.anm_mask):
            with pytest.raises(ValueError, match=message):
                op(*args)
        emulated_ops.anm_mask(*anm_mask_args(x, fmap, t, quality, ids, 0, cfg, False))
    inf_map = fmap.clone()
    inf_map[2, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        emulated_ops.anm_mask(*anm_mask_args(x, inf_map, t, q, ids, 0, cfg))


@pytest.mark.cuda_emulated
def test_cuda_kernel_is_one_launch(emulated_ops):
    """One kernel launch and no ATen op besides allocation (a copy or cast would be a launch of
    its own on a GPU), with the value checks off."""
    x, fmap, t, q, ids = fused_inputs(4, 3, 8, 8, 4, 2, 2, torch.float32, torch.float32,
                                      torch.float32, "contiguous")
    args = anm_mask_args(x, fmap, t.t().contiguous().t(), q, ids, 0, anm_fast.ANMConfig.cifar(),
                         False)
    before = emulated_ops.launch_count()
    assert aten_calls(lambda: emulated_ops.anm_mask(*args)) == []
    assert emulated_ops.launch_count() - before == 1


@pytest.mark.parametrize("seed_kind", ["device", "int"])
def test_cuda_graph_capture_replays(gpu_backend, seed_kind):
    # A device seed is read in the kernels (replays follow its new value); an int seed is read on
    # the host when the graph is captured (no host-to-device copy, which capture forbids).
    B, C, H, W, K, h, w, N = 64, 3, 32, 32, 128, 4, 4, 10
    dev = torch.device("cuda")
    x = torch.randn(B, C, H, W, device=dev)
    fmap = torch.randn(B, K, h, w, device=dev)
    t = torch.softmax(torch.randn(B, N, device=dev), 1)
    q = torch.rand(B, device=dev)
    seed = torch.tensor(1234, dtype=torch.int64, device=dev) if seed_kind == "device" else 1234
    anm_fast.set_checks(False)
    try:
        def step():
            return anm_fast.anm_mask(x, fmap, t, q, seed=seed)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        for new_inputs in (False, True):
            if new_inputs:
                x.copy_(torch.randn_like(x))
                fmap.copy_(torch.randn_like(fmap))
                q.copy_(torch.rand_like(q))
                if seed_kind == "device":
                    seed.fill_(987654321)
            graph.replay()
            torch.cuda.synchronize()
            eager = step()
            for name, a, b in zip(eager._fields, captured, eager):
                if name == "seed" and seed_kind == "int":
                    continue  # the API's own CPU copy of the int
                assert torch.equal(a, b), f"{name} differs between graph replay and eager"
        # No host synchronisation on the whole path (value checks off).
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        anm_fast.set_checks(True)


def test_kernels_follow_the_current_stream_and_device(gpu_backend):
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(8, 3, 32, 32, generator=gen).cuda()
    fmap0 = torch.randn(8, 16, 4, 4, generator=gen).cuda()
    t = torch.softmax(torch.randn(8, 5, generator=gen), 1).cuda()
    anm_fast.set_checks(False)  # a value check's host read would order the streams for us
    try:
        want = anm_fast.anm_mask(x0, fmap0, t, 0.5, seed=3)
        torch.cuda.synchronize()
        x, fmap = torch.zeros_like(x0), torch.zeros_like(fmap0)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            # The inputs are written on `s` only after a long sleep: a kernel launched on any
            # other stream runs during the sleep and reads zeros.
            torch.cuda._sleep(200_000_000)
            x.copy_(x0)
            fmap.copy_(fmap0)
            got = anm_fast.anm_mask(x, fmap, t, 0.5, seed=3)
            erased = anm_fast.anm_mask(x.requires_grad_(True), fmap, t, 0.5, seed=3).erased
            erased.backward(torch.ones_like(erased))
        torch.cuda.synchronize()
    finally:
        anm_fast.set_checks(True)
    for name, a, b in zip(want._fields, got, want):
        assert torch.equal(a, b), f"{name}: a kernel ran outside the current stream"
    keep = (~R.box_mask(torch.cat((got.box_max, got.box_min)), 32, 32)).to(x.dtype)
    assert torch.equal(x.grad, keep[:8].expand_as(x) + keep[8:].expand_as(x))
    if torch.cuda.device_count() > 1:  # tensors on the second GPU while the first is current
        with torch.cuda.device(0):
            got1 = anm_fast.anm_mask(x0.to("cuda:1"), fmap0.to("cuda:1"), t.to("cuda:1"), 0.5,
                                     seed=3)
        for name, a, b in zip(want._fields, got1, want):
            assert a.device.index == 1 and torch.equal(a.cpu(), b.cpu()), name
