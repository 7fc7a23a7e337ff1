"""Argument checks of the public API: every bad input fails here, with a message naming the
argument and what was expected, before it reaches a kernel.

Shape, dtype and device checks are free and always run. Checks that look at the values (quality in
[0, 1], peaks inside the image, finite feature maps) read data, which costs a host synchronisation
on a GPU: they run in eager mode while `checks_enabled()` (the default), and are skipped inside
torch.compile and when turned off with `anm_fast.set_checks(False)`.
"""
from __future__ import annotations

import numbers
from typing import Tuple

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
    return value


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
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
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


def _quality_bad(q: torch.Tensor) -> torch.Tensor:
    q = q.detach()
    return torch.isnan(q).any() | (q < 0).any() | (q > 1).any()


def _quality_error(q: torch.Tensor) -> ValueError:
    q = q.detach()
    if bool(torch.isnan(q).any()):
        return ValueError("quality contains NaN; expected values in [0, 1]")
    return ValueError(f"quality must lie in [0, 1], got values in "
                      f"[{float(q.min())}, {float(q.max())}]")


def _energy_bad(energy: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(energy).all()


_ENERGY_ERROR = ("fmap contains non-finite values (NaN or Inf), or values whose squares overflow "
                 "float32; the activation energy is undefined")


def _peaks_bad(peak: torch.Tensor, H: int, W: int) -> torch.Tensor:
    p = peak.detach()
    return (p < 0).any() | (p[:, 0] >= H).any() | (p[:, 1] >= W).any()


def _labels_bad(labels: torch.Tensor, n: int) -> torch.Tensor:
    return (labels < 0).any() | (labels >= n).any()


def check_values(*, quality=None, energy=None, peaks=(), image=None, labels=None,
                 num_classes=None) -> None:
    """All value checks of one call in a single host read (one GPU synchronisation, not one per
    check); the message of the first failing check is then worked out on the slow path."""
    if not value_checks_active():
        return
    checks = []  # (flag tensor, function building the error)
    if labels is not None and labels.numel():
        checks.append((_labels_bad(labels, num_classes),
                       lambda: ValueError(f"targets hold class indices outside "
                                          f"[0, {num_classes})")))
    if quality is not None and quality.numel():
        checks.append((_quality_bad(quality), lambda: _quality_error(quality)))
    if energy is not None and energy.numel():
        checks.append((_energy_bad(energy), lambda: ValueError(_ENERGY_ERROR)))
    for name, peak in peaks:
        if peak.numel():
            checks.append((_peaks_bad(peak, *image),
                           lambda name=name: ValueError(f"{name} holds positions outside the "
                                                        f"{image[0]}x{image[1]} image")))
    if not checks:
        return
    flags = torch.stack([flag for flag, _ in checks]).tolist()
    for bad, (_, error) in zip(flags, checks):
        if bad:
            raise error()
