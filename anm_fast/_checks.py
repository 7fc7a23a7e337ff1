"""Argument checks of the public API: every bad input fails here, with a message naming the
argument and what was expected, before it reaches a kernel.

Shape, dtype and device checks are free and always run. Checks that look at the values (quality in
[0, 1], peaks inside the image, finite feature maps) read data, which costs a host synchronisation
on a GPU: they run in eager mode while `checks_enabled()` (the default), and are skipped inside
torch.compile and when turned off with `anm_fast.set_checks(False)`.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import numpy as np
import torch

_VALUE_CHECKS = True
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def set_checks(enabled: bool) -> None:
    """Turn the value checks (which synchronise with the GPU) on or off globally."""
    global _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)


def checks_enabled() -> bool:
    return _VALUE_CHECKS


def compiling() -> bool:
    """True while torch.compile traces (no host reads, no Python-side caches then)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())


def value_checks_active() -> bool:
    return _VALUE_CHECKS and not compiling()


def tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_meta:
        # (torch.compile's fake tensors report their real device, so this is a user's tensor)
        raise ValueError(f"{name} is on meta, a device without data: pass tensors on the CPU or "
                         f"a GPU")
    return value


def non_empty(t: torch.Tensor, name: str, what: str, first_dim: int = 1) -> None:
    """Every dimension from `first_dim` on must be non-zero (an empty batch is fine)."""
    if 0 in t.shape[first_dim:]:
        raise ValueError(f"{name} must be {what} with non-zero sizes, got shape "
                         f"{tuple(t.shape)}")


def label_dtype(t: torch.Tensor, name: str) -> None:
    """Class indices are integers: complex and bool tensors are neither labels nor targets."""
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be float soft targets (B, N) or integer class indices (B,), "
                        f"got {t.dtype}")


def number(value, name: str, lo: float = 0.0, hi: float = math.inf) -> float:
    """A finite real number (Python or numpy scalar, not bool) in [lo, hi], as a float."""
    ok = (not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
          and math.isfinite(value) and lo <= value <= hi)
    if not ok:
        bound = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def float_tensor(value, name: str, dims: int, what: str) -> torch.Tensor:
    t = tensor(value, name)
    if t.dim() != dims:
        raise ValueError(f"{name} must be {what} ({dims}-D), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32 or "
                        f"float64), got {t.dtype}")
    return t


def int_tensor(value, name: str, shape_what: str, shape) -> torch.Tensor:
    t = tensor(value, name)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {shape_what} = {tuple(shape)}, "
                         f"got {tuple(t.shape)}")
    return t


def batch(t: torch.Tensor, name: str, expected: int, expected_from: str) -> None:
    if t.shape[0] != expected:
        raise ValueError(f"{name} has batch size {t.shape[0]} but {expected_from} has {expected}")


def same_device(reference_name: str, reference, **others) -> None:
    """`reference` is a tensor or a torch.device; every tensor in `others` must be on it."""
    device = reference if isinstance(reference, torch.device) else reference.device
    for name, t in others.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but {reference_name} is on "
                             f"{device}: all tensors must be on one device")


def positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def image_size(value) -> Tuple[int, int]:
    """image_size: an int (square) or an (H, W) pair of positive ints."""
    if isinstance(value, torch.Size) or isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"image_size must be an int or an (H, W) pair, got {value!r}")
        return positive_int(value[0], "image_size[0]"), positive_int(value[1], "image_size[1]")
    size = positive_int(value, "image_size")
    return size, size


def band(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"band must be a number in [0, 1), got {value!r}")
    return float(value)


# Each value check reduces its tensor to a few numbers on the tensor's device; check_values reads
# all of them in one host transfer and judges them in Python (NaN fails every comparison, so a NaN
# anywhere fails its check). Few small ops: the CPU training loop pays for each one.

def _extremes(t: torch.Tensor) -> torch.Tensor:
    return torch.stack(torch.aminmax(t.detach()))


def _quality_error(q: torch.Tensor) -> ValueError:
    q = q.detach()
    if bool(torch.isnan(q).any()):
        return ValueError("quality contains NaN; expected values in [0, 1]")
    return ValueError(f"quality must lie in [0, 1], got values in "
                      f"[{float(q.min())}, {float(q.max())}]")


_ENERGY_ERROR = ("fmap contains non-finite values (NaN or Inf), or values whose squares overflow "
                 "float32; the activation energy is undefined")


def _energy_summary(energy: torch.Tensor) -> torch.Tensor:
    """(smallest, largest) per-sample maximum of the energy map."""
    return _extremes(energy.flatten(1).amax(1))


def _energy_error(energy: torch.Tensor, fmap) -> Optional[ValueError]:
    """Non-finite energy; or, given the map it came from, a sample whose L2-normalised energy is
    all zero although its map is not: the sum of its squares overflowed while normalising, and
    its peaks would all be (0, 0). (A map of zeros has zero energy indeed: every position ties
    and the peaks are (0, 0), as specified.)"""
    energy = energy.detach()
    if not bool(torch.isfinite(energy).all()):
        return ValueError(_ENERGY_ERROR)
    if fmap is None:
        return None
    zero = (energy.flatten(1).amax(1) <= 0).nonzero().flatten()
    peak = fmap.detach()[zero].abs().flatten(1).amax(1)
    large = (peak > 0).nonzero().flatten()
    if not large.numel():
        return None
    i = int(zero[large[0]])
    return ValueError(f"fmap sample {i} has values up to {float(peak[large[0]]):.3g}, too large "
                      f"for the activation energy (the sum of its squares overflows "
                      f"{str(fmap.dtype).replace('torch.', '')} arithmetic, so its peaks would "
                      f"all be (0, 0)); scale the feature map down")


def _soft_tolerance(t: torch.Tensor) -> float:
    """How far a row sum may be from 1. Rounding each entry to the targets' dtype is relative
    to the entry, so it moves a row summing to 1 by at most about eps / 2 whatever N is; the
    margin also covers a few roundings in how the targets were made (softmax, mixing)."""
    return 1e-3 + 8 * torch.finfo(t.dtype).eps


def _soft_summary(t: torch.Tensor) -> torch.Tensor:
    """(smallest entry, largest entry, smallest row sum, largest row sum)."""
    t = t.detach()
    sums = t.sum(1, dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    return torch.cat((_extremes(t).to(sums.dtype), _extremes(sums)))


def _soft_ok(v, tol: float) -> bool:
    lo, _, slo, shi = v
    return lo >= 0 and abs(slo - 1) <= tol and abs(shi - 1) <= tol


def _soft_error(t: torch.Tensor, name: str) -> ValueError:
    t = t.detach()
    what = "soft targets must be rows of non-negative values summing to 1"
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        i = int(bad.any(1).nonzero()[0])
        return ValueError(f"{name} holds NaN or Inf (row {i}); {what}")
    if bool((t < 0).any()):
        i = int((t < 0).any(1).nonzero()[0])
        return ValueError(f"{name} holds negative values (row {i}: min {float(t[i].min()):.4g}); "
                          f"{what}")
    sums = t.sum(1, dtype=torch.float64)
    i = int(((sums - 1).abs() > _soft_tolerance(t)).nonzero()[0])
    return ValueError(f"{name} row {i} sums to {float(sums[i]):.6g}; {what}")


def check_values(*, quality=None, energy=None, fmap=None, peaks=(), image=None, labels=None,
                 num_classes=None, soft_targets=None, ratio=None, fills=()) -> None:
    """All value checks of one call in a single host read (one GPU synchronisation, not one per
    check); the message of the first failing check is then worked out on the slow path.

    labels: class indices in [0, num_classes). soft_targets: rows on the simplex. quality: in
    [0, 1]. energy: finite; with `fmap`, the map it came from, also non-zero wherever the map is
    (see _energy_error). ratio: finite, >= 0. fills, peaks: (name, tensor) pairs, finite fill
    values / positions inside the image (H, W)."""
    if not value_checks_active():
        return
    checks = []  # (numbers on the device, predicate on them -> ok, error or None: a false alarm)
    if labels is not None and labels.numel():
        checks.append((_extremes(labels), lambda v: v[0] >= 0 and v[1] < num_classes,
                       lambda: ValueError(f"targets hold class indices outside "
                                          f"[0, {num_classes})")))
    if soft_targets is not None and soft_targets.numel():
        tol = _soft_tolerance(soft_targets)
        checks.append((_soft_summary(soft_targets), lambda v: _soft_ok(v, tol),
                       lambda: _soft_error(soft_targets, "targets")))
    if quality is not None and quality.numel():
        checks.append((_extremes(quality), lambda v: v[0] >= 0 and v[1] <= 1,
                       lambda: _quality_error(quality)))
    if energy is not None and energy.numel():
        least = 0.0 if fmap is None else math.nextafter(0.0, 1.0)
        checks.append((_energy_summary(energy),
                       lambda v: least <= v[0] and v[1] < math.inf,
                       lambda: _energy_error(energy, fmap)))
    if ratio is not None and ratio.numel():
        checks.append((_extremes(ratio), lambda v: v[0] >= 0 and v[1] < math.inf,
                       lambda: ValueError("ratio must hold finite mask ratios >= 0")))
    for name, fill in fills:
        if fill.numel():
            checks.append((_extremes(fill), lambda v: -math.inf < v[0] and v[1] < math.inf,
                           lambda name=name: ValueError(f"{name} must hold finite fill "
                                                        f"values")))
    for name, peak in peaks:
        if peak.numel():
            checks.append((torch.cat(torch.aminmax(peak.detach(), dim=0)),  # rows, cols
                           lambda v: v[0] >= 0 and v[1] >= 0 and v[2] < image[0] and v[3] < image[1],
                           lambda name=name: ValueError(f"{name} holds positions outside the "
                                                        f"{image[0]}x{image[1]} image")))
    if not checks:
        return
    values = torch.cat([v for v, _, _ in checks]).tolist()
    at = 0
    for v, ok, error in checks:
        n = v.numel()
        if not ok(values[at:at + n]):
            exc = error()
            if exc is not None:
                raise exc
        at += n


def hard_labels(labels: torch.Tensor, num_classes: int, name: str = "targets") -> None:
    """Class indices in [0, num_classes) (a value check: skipped when checks are off)."""
    label_dtype(labels, name)
    check_values(labels=labels, num_classes=num_classes)
