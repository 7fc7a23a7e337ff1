"""Assertions shared by the test-suites of every backend (CPU, Triton, CUDA).

Peaks are judged by the band rule (docs/SPEC.md, "Energy and peaks") on the reference's resized
map: a kernel's peak either equals the reference's, or the two pixels' values there are equal up
to float rounding (bilinear resizing leaves plateaus whose values differ only in the last bits).
"""
from __future__ import annotations

import torch

from . import reference
from .config import ANMConfig

# Per-dtype tolerances for float outputs compared to the reference (rtol, atol).
TOLERANCES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}


def resized_energy(energy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The reference's resized map (the numbers of interpolate(bilinear), up to rounding)."""
    return reference.bilinear_resize(energy.float(), height, width)


def assert_peaks_match(got_max, got_min, energy, height, width, band=0.0, rel_tol=1e-5):
    """Check kernel peaks against the band rule evaluated on the reference resized map.

    A peak passes when it is exactly the reference's, or when its value lies inside the band
    (up to rel_tol of the map's range) and no pixel before it in row-major order is clearly
    inside the band (beyond rel_tol): i.e. it differs from the reference only by rounding.
    """
    U = resized_energy(energy.cpu(), height, width).flatten(1).double()
    B = U.shape[0]
    hi = U.max(dim=1).values
    lo = U.min(dim=1).values
    spread = hi - lo
    tol = rel_tol * torch.clamp(spread, min=1e-12) + 1e-7 * hi.abs()
    for name, got, target_hi in (("peak_max", got_max, True), ("peak_min", got_min, False)):
        got = got.cpu().long()
        assert got.shape == (B, 2), f"{name} has shape {tuple(got.shape)}"
        assert bool(((got[:, 0] >= 0) & (got[:, 0] < height) & (got[:, 1] >= 0)
                     & (got[:, 1] < width)).all()), f"{name} outside the image"
        idx = got[:, 0] * width + got[:, 1]
        value = U.gather(1, idx[:, None])[:, 0]
        if target_hi:
            thr = hi - band * spread
            inside = value >= thr - tol
            clearly_before = (U >= thr[:, None] + tol[:, None])
        else:
            thr = lo + band * spread
            inside = value <= thr + tol
            clearly_before = (U <= thr[:, None] - tol[:, None])
        pos = torch.arange(U.shape[1])[None, :]
        earlier = (clearly_before & (pos < idx[:, None])).any(dim=1)
        bad = (~inside) | earlier
        assert not bool(bad.any()), (
            f"{name} differs from the band rule beyond rounding for samples "
            f"{bad.nonzero()[:, 0].tolist()[:10]}: got {got[bad][:5].tolist()}")


LAYOUTS = ("contiguous", "channels_last", "sliced", "permuted", "transposed")


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as the 4-D tensor `t`, stored in another memory layout."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":  # every other column of a twice-as-wide tensor
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., 1::2] = t
        return wide[..., 1::2]
    if layout == "permuted":  # storage in (h, w, B, K) order
        return t.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    if layout == "transposed":  # H and W swapped in storage
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def sample_boxes_args(B, H, W, C, device="cpu", seed=7, anchor=True, uniform=True, config=None,
                      ids=None, fill_value=None):
    """Positional arguments of torch.ops.anm_fast.sample_boxes for random peaks: a quarter of the
    samples with quality 0, a quarter with 1, the rest random; ids that are not 0..B-1; constant
    fills `fill_value` (default: -1..1 over the channels) used when `uniform` is False."""
    cfg = config or ANMConfig()
    pmax = torch.stack((torch.randint(0, H, (B,)), torch.randint(0, W, (B,))), 1)
    pmin = torch.stack((torch.randint(0, H, (B,)), torch.randint(0, W, (B,))), 1)
    q = torch.rand(B)
    q[: B // 4] = 0.0
    q[B // 4: B // 2] = 1.0
    ids = torch.arange(B) * 3 + 11 if ids is None else ids
    if fill_value is None:
        fill = torch.linspace(-1.0, 1.0, C)
    else:
        fill = torch.full((C,), float(fill_value))
    box_params = cfg.replace(anchor="center" if anchor else "corner",
                             fill="uniform" if uniform else "zero").box_params()
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in (
        pmax, pmin, q, ids, torch.tensor(seed), H, W, C, box_params, fill))


def anm_mask_args(x, fmap, targets, quality, sample_ids, seed, config=None, check=True):
    """Positional arguments of torch.ops.anm_fast.anm_mask for `config` (default ANMConfig()),
    the seed an int or a tensor."""
    cfg = config or ANMConfig()
    _, values = cfg.fill_values(x.shape[1])
    seed = seed if isinstance(seed, torch.Tensor) else torch.tensor(seed)
    return (x, fmap, targets, quality, sample_ids, seed, float(cfg.band), cfg.box_params(),
            torch.tensor(values, dtype=torch.float32), float(cfg.label_gain), check)


# ATen ops that launch no kernel: allocation and views.
_NO_LAUNCH = {"aten::empty", "aten::empty_strided", "aten::view", "aten::reshape",
              "aten::_reshape_alias", "aten::as_strided", "aten::alias"}


def aten_calls(fn) -> list:
    """The ATen ops that calling fn() makes, by name, other than allocation and views: on a GPU
    each of them would be a kernel launch (a cat, a cast, a copy) besides the op's own kernels."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({e.name for e in prof.events() if e.name.startswith("aten::")} - _NO_LAUNCH)


def assert_same_state(a, b, where: str = "state") -> None:
    """Nested state (dicts, lists, tuples of tensors and plain values, as in checkpoints) equal bit
    for bit, tensors with the same dtype; the assertion names the first place that differs."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
