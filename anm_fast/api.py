"""The public ANM operations: checked arguments in, named results out.

Each function validates its arguments (anm_fast/_checks.py) and calls one registered operator
(`torch.ops.anm_fast.*`), so it runs on the fastest kernel for the tensors' device, under
autograd, and inside torch.compile(fullgraph=True).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import _checks as chk
from . import _ext, backend
from ._ops import ops
from .config import ANMConfig


class Peaks(NamedTuple):
    peak_max: torch.Tensor  # (B, 2) int64, (row, col) in image coordinates
    peak_min: torch.Tensor  # (B, 2) int64
    energy: torch.Tensor    # (B, h, w) float32, L2-normalised activation energy


class Boxes(NamedTuple):
    box_max: torch.Tensor   # (B, 4) int64: y0, x0, height, width
    box_min: torch.Tensor   # (B, 4) int64
    ratio: torch.Tensor     # (B,) float32, the mask ratio s
    fill_max: torch.Tensor  # (B, C) float32
    fill_min: torch.Tensor  # (B, C) float32


class Erased(NamedTuple):
    erased: torch.Tensor    # (2B, C, H, W): B max-erased copies, then B min-erased copies
    targets: torch.Tensor   # (B, N) modulated soft targets


class MaskBatch(NamedTuple):
    erased: torch.Tensor
    targets: torch.Tensor
    box_max: torch.Tensor
    box_min: torch.Tensor
    ratio: torch.Tensor
    fill_max: torch.Tensor
    fill_min: torch.Tensor
    peak_max: torch.Tensor
    peak_min: torch.Tensor
    energy: torch.Tensor
    seed: torch.Tensor      # 0-d int64: replays the same boxes with sample_boxes(seed=...)


def activation_peaks(fmap: torch.Tensor, image_size, *, band: float = 0.0) -> Peaks:
    """Stage 1: the L2-normalised energy map of `fmap` and the peaks of its bilinear resize to
    `image_size` (first row-major pixel within band * range of the max / min)."""
    fmap = chk.float_tensor(fmap, "fmap", 4, "(B, K, h, w)")
    if 0 in fmap.shape:
        raise ValueError(f"fmap must be non-empty, got shape {tuple(fmap.shape)}")
    H, W = chk.image_size(image_size)
    result = Peaks(*ops.activation_peaks(fmap.detach(), H, W, chk.band(band)))
    chk.check_values(energy=result.energy, fmap=fmap)
    return result


def _seed_tensor(seed, device) -> torch.Tensor:
    """The seed as a 0-d int64 tensor. Ints and drawn seeds stay on the CPU: every kernel reads a
    CPU seed on the host, so no host-to-device copy is issued. A seed tensor on the batch's device
    is read inside the kernel instead (what CUDA-graph capture needs: replays then follow it)."""
    if seed is None:
        # Drawn from torch's default (CPU) generator, so torch.manual_seed makes runs repeatable
        # and the draw is the same whatever device the batch is on.
        return torch.randint(0, 2**62, (), dtype=torch.int64)
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype == torch.bool:
            raise ValueError(f"seed must be an int or a one-element integer tensor, got "
                             f"{seed.dtype} tensor of shape {tuple(seed.shape)}")
        if seed.device.type != "cpu" and seed.device != torch.device(device):
            raise ValueError(f"seed is on {seed.device} but the batch is on {device}: pass it on "
                             f"the CPU or on the batch's device")
        return seed.reshape(()).to(torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, an integer tensor or None, got {type(seed).__name__}")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    if seed >= 2**63:
        seed -= 2**64
    # (scalar_tensor: the same tensor as torch.tensor(seed), at a third less cost when the call
    # runs cold, as it does after a batch has streamed through the caches)
    return torch.scalar_tensor(seed, dtype=torch.int64)


# The fills argument when the fills are drawn (uniform): the kernels do not read it.
_NO_FILLS = torch.zeros(0)


def _fill_tensor(config: ANMConfig, C: int) -> torch.Tensor:
    """The constant fills as a CPU float32 tensor (read on the host by every kernel: no device
    copy)."""
    uniform, values = config.fill_values(C)
    return _NO_FILLS if uniform else torch.tensor(values, dtype=torch.float32)


def _sample_ids(sample_ids, B: int, device) -> Optional[torch.Tensor]:
    """The checked ids, or None for the batch positions 0..B-1."""
    if sample_ids is None:
        return None
    ids = chk.int_tensor(sample_ids, "sample_ids", "(B,)", (B,))
    chk.same_device("the batch", device, sample_ids=ids)
    return ids.to(torch.int64)


def _quality(quality, B: int, device) -> torch.Tensor:
    if isinstance(quality, (int, float)) and not isinstance(quality, bool):
        quality = torch.full((B,), float(quality), device=device)
    q = chk.tensor(quality, "quality")
    if not q.dtype.is_floating_point:
        raise TypeError(f"quality must be a floating tensor of values in [0, 1], got {q.dtype}")
    if tuple(q.shape) != (B,):
        raise ValueError(f"quality must have shape (B,) = ({B},), got {tuple(q.shape)}")
    chk.same_device("the batch", device, quality=q)
    # (its values are checked by the caller's check_values)
    if q.requires_grad:
        q = q.detach()
    return q if q.dtype == torch.float32 else q.to(torch.float32)


def sample_boxes(peak_max: torch.Tensor, peak_min: torch.Tensor, quality, image_size,
                 channels: int, *, config: Optional[ANMConfig] = None, seed=None,
                 sample_ids: Optional[torch.Tensor] = None) -> Boxes:
    """Stage 2: one box per peak, sized by the label quality, from each sample's random stream
    (Philox keyed by `seed`, counter = sample id): the same sample gets the same box in any batch,
    on any device."""
    config = _config(config)
    pmax = chk.tensor(peak_max, "peak_max")
    if pmax.dim() != 2 or pmax.shape[1] != 2:
        raise ValueError(f"peak_max must be (B, 2), got shape {tuple(pmax.shape)}")
    B = pmax.shape[0]
    pmax = chk.int_tensor(pmax, "peak_max", "(B, 2)", (B, 2))
    pmin = chk.int_tensor(peak_min, "peak_min", "(B, 2)", (B, 2))
    chk.same_device("peak_max", pmax, peak_min=pmin)
    H, W = chk.image_size(image_size)
    C = chk.positive_int(channels, "channels")
    q = _quality(quality, B, pmax.device)
    chk.check_values(quality=q, peaks=(("peak_max", pmax), ("peak_min", pmin)), image=(H, W))
    ids = _sample_ids(sample_ids, B, pmax.device)
    return _sample_boxes(pmax, pmin, q, ids, _seed_tensor(seed, pmax.device), H, W, C, config)


def _sample_boxes(pmax, pmin, q, ids, seed_t, H: int, W: int, C: int,
                  config: ANMConfig) -> Boxes:
    if ids is None:
        ids = torch.arange(pmax.shape[0], device=pmax.device)
    return Boxes(*ops.sample_boxes(pmax, pmin, q, ids, seed_t, H, W, C, config.box_params(),
                                   _fill_tensor(config, C)))


_DEFAULT_CONFIG = ANMConfig()


def _config(config) -> ANMConfig:
    if config is None:
        return _DEFAULT_CONFIG
    if not isinstance(config, ANMConfig):
        raise TypeError(f"config must be an ANMConfig, got {type(config).__name__}")
    return config


def _targets(targets, B: int, device, num_classes: Optional[int]):
    """(soft targets (B, N), the class indices when given as such (else None), N). The indices'
    range is checked by the caller's check_values, with the other value checks."""
    t = chk.tensor(targets, "targets")
    chk.label_dtype(t, "targets")
    labels = None
    chk.same_device("x", device, targets=t)
    if not t.dtype.is_floating_point:
        if t.dim() != 1:
            raise ValueError(f"hard-label targets must be (B,) class indices, got shape "
                             f"{tuple(t.shape)}")
        if num_classes is None:
            raise ValueError("targets are class indices: pass num_classes= so they can be made "
                             "one-hot")
        n = chk.positive_int(num_classes, "num_classes")
        if n < 2:
            raise ValueError(f"num_classes must be at least 2, got {n}")
        labels = t
        # clamp: one_hot must not fail on out-of-range labels before check_values reports them
        t = torch.nn.functional.one_hot(t.long().clamp(0, n - 1), n).to(torch.float32)
    if t.dim() != 2:
        raise ValueError(f"targets must be (B, N) soft targets or (B,) class indices, got shape "
                         f"{tuple(t.shape)}")
    if t.shape[1] < 2:
        raise ValueError(f"targets need at least 2 classes, got N={t.shape[1]}")
    if t.shape[0] != B:
        raise ValueError(f"targets has batch size {t.shape[0]} but x has {B}")
    if num_classes is not None and t.shape[1] != num_classes:
        raise ValueError(f"targets has {t.shape[1]} classes but num_classes={num_classes}")
    return t, labels, t.shape[1]


def erase_and_modulate(x: torch.Tensor, targets: torch.Tensor, box_max: torch.Tensor,
                       box_min: torch.Tensor, fill_max: torch.Tensor, fill_min: torch.Tensor,
                       ratio: torch.Tensor, *, label_gain: float = 1.0) -> Erased:
    """Stage 3: the max-erased and min-erased copies of `x`, stacked as (2B, C, H, W), and the
    softened targets. Differentiable with respect to `x` and `targets`."""
    x = chk.float_tensor(x, "x", 4, "(B, C, H, W) images")
    chk.non_empty(x, "x", "(B, C, H, W) images")
    B, C, _, _ = x.shape
    t, _, _ = _targets(targets, B, x.device, None)
    bmax = chk.int_tensor(box_max, "box_max", "(B, 4)", (B, 4))
    bmin = chk.int_tensor(box_min, "box_min", "(B, 4)", (B, 4))
    fmax = chk.tensor(fill_max, "fill_max")
    fmin = chk.tensor(fill_min, "fill_min")
    for name, f in (("fill_max", fmax), ("fill_min", fmin)):
        if tuple(f.shape) != (B, C):
            raise ValueError(f"{name} must have shape (B, C) = ({B}, {C}), got {tuple(f.shape)}")
    r = chk.tensor(ratio, "ratio")
    if tuple(r.shape) != (B,):
        raise ValueError(f"ratio must have shape (B,) = ({B},), got {tuple(r.shape)}")
    chk.same_device("x", x, box_max=bmax, box_min=bmin, fill_max=fmax, fill_min=fmin, ratio=r)
    label_gain = chk.number(label_gain, "label_gain")
    chk.check_values(soft_targets=t, ratio=r, fills=(("fill_max", fmax), ("fill_min", fmin)))
    return Erased(*ops.erase_and_modulate(x, t, bmax, bmin, fmax.detach(), fmin.detach(),
                                          r.detach(), float(label_gain)))


def _use_fused_op(x: torch.Tensor) -> bool:
    """Whether the fused op (peaks, boxes and erasing in one pass, differentiable in x and
    targets) serves the batch's device: the C++ kernel on the CPU; on CUDA, the active backend's
    (Triton, the reference, or the compiled CUDA kernels when built with it)."""
    if not _ext.has_extension():
        return False
    if x.device.type == "cpu":
        return True
    return x.device.type == "cuda" and backend.fused_op_on_cuda()


def anm_mask(x: torch.Tensor, fmap: torch.Tensor, targets: torch.Tensor, quality, *,
             config: Optional[ANMConfig] = None, seed=None,
             sample_ids: Optional[torch.Tensor] = None,
             num_classes: Optional[int] = None) -> MaskBatch:
    """Stages 1-3 in one call: peaks of `fmap`, label-quality guided boxes, erased copies of `x`
    and modulated targets. `targets` may be soft (B, N) or class indices (B,) with num_classes=.
    `seed=None` draws a seed from torch's default generator (torch.manual_seed repeats runs)."""
    config = _config(config)
    x = chk.float_tensor(x, "x", 4, "(B, C, H, W) images")
    chk.non_empty(x, "x", "(B, C, H, W) images")
    fmap = chk.float_tensor(fmap, "fmap", 4, "(B, K, h, w)")
    if 0 in fmap.shape[1:]:
        raise ValueError(f"fmap must be non-empty, got shape {tuple(fmap.shape)}")
    B, C, H, W = x.shape
    chk.batch(fmap, "fmap", B, "x")
    chk.same_device("x", x, fmap=fmap)
    t, labels, n = _targets(targets, B, x.device, num_classes)
    q = _quality(quality, B, x.device)
    ids = _sample_ids(sample_ids, B, x.device)
    seed_t = _seed_tensor(seed, x.device)
    if _use_fused_op(x):
        # One pass over the batch (csrc/cpu/anm_mask_cpu.cpp, csrc/cuda/anm_mask_cuda.cu,
        # kernels/anm_mask.py): the same results as the three ops below. With check_values the op
        # checks the quality and a finite energy; the CPU kernel also the soft targets and an
        # energy that overflowed to zero, in the pass it makes anyway (here they would cost a
        # dozen small ops per call, the most expensive part of a CPU call's Python layer).
        out = ops.anm_mask(x, fmap.detach() if fmap.requires_grad else fmap, t, q, ids, seed_t,
                           float(config.band), config.box_params(), _fill_tensor(config, C),
                           float(config.label_gain), chk.value_checks_active())
        if x.is_cpu:
            chk.check_values(labels=labels, num_classes=n)
        else:
            chk.check_values(labels=labels, num_classes=n, energy=out[9], fmap=fmap,
                             soft_targets=t if labels is None else None)
        return MaskBatch(*out, seed_t)
    # Otherwise the three ops: arguments are checked once here, and every value check of the call
    # (labels, quality, finite energy) costs one host read together. The peaks come from our own
    # op, so they need no range check.
    peak_max, peak_min, energy = ops.activation_peaks(fmap.detach(), H, W, float(config.band))
    chk.check_values(labels=labels, num_classes=n, quality=q, energy=energy, fmap=fmap,
                     soft_targets=t if labels is None else None)
    boxes = _sample_boxes(peak_max, peak_min, q, ids, seed_t, H, W, C, config)
    erased, targets_out = ops.erase_and_modulate(x, t, boxes.box_max, boxes.box_min,
                                                 boxes.fill_max, boxes.fill_min, boxes.ratio,
                                                 float(config.label_gain))
    return MaskBatch(erased, targets_out, boxes.box_max, boxes.box_min, boxes.ratio,
                     boxes.fill_max, boxes.fill_min, peak_max, peak_min, energy, seed_t)
