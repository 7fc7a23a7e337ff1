"""torch.library registration: schemas (C++ or fallback), fake kernels, autograd.

The schemas live in csrc/ops.cpp. When the compiled extension is missing, the same schemas are
defined here and the reference serves them on every device, so `torch.ops.anm_fast.*` always
exists. Fake kernels give torch.compile the exact shapes, dtypes and strides the real kernels
produce; autograd is registered on the op, so the ops work inside torch.compile(fullgraph=True).
"""
from __future__ import annotations

import torch

from . import _ext, backend, reference

OP_NAMES = ("activation_peaks", "sample_boxes", "erase_and_modulate",
            "erase_and_modulate_backward")

# The fused op (peaks, boxes and erasing, docs/SPEC.md 1-3), defined by the compiled extension
# only (csrc/cpu/anm_mask_cpu.cpp, csrc/cuda/anm_mask_cuda.cu; kernels/anm_mask.py on CUDA under
# the Triton backend). Without the extension anm_fast.anm_mask composes the three ops.
FUSED_CPU_OPS = ("anm_mask",)

# Kept identical to csrc/ops.cpp (a test compares them when the extension is loaded).
SCHEMAS = {
    "anm_mask": "(Tensor x, Tensor fmap, Tensor targets, Tensor quality, Tensor? sample_ids, "
                "Tensor seed, float band, float[] box_params, Tensor fill_value, "
                "float label_gain, bool check_values) -> "
                "(Tensor erased, Tensor targets_out, Tensor box_max, Tensor box_min, "
                "Tensor ratio, Tensor fill_max, Tensor fill_min, Tensor peak_max, "
                "Tensor peak_min, Tensor energy)",
    "activation_peaks": "(Tensor fmap, int height, int width, float band) -> "
                        "(Tensor peak_max, Tensor peak_min, Tensor energy)",
    "sample_boxes": "(Tensor peak_max, Tensor peak_min, Tensor quality, Tensor sample_ids, "
                    "Tensor seed, int height, int width, int channels, float[] box_params, "
                    "Tensor fill_value) -> "
                    "(Tensor box_max, Tensor box_min, Tensor ratio, Tensor fill_max, "
                    "Tensor fill_min)",
    "erase_and_modulate": "(Tensor x, Tensor targets, Tensor box_max, Tensor box_min, "
                          "Tensor fill_max, Tensor fill_min, Tensor ratio, float label_gain) -> "
                          "(Tensor erased, Tensor targets_out)",
    "erase_and_modulate_backward": "(Tensor grad_erased, Tensor grad_targets, Tensor targets, "
                                   "Tensor box_max, Tensor box_min, Tensor ratio, "
                                   "float label_gain) -> (Tensor grad_x, Tensor grad_targets_in)",
}

_fallback_lib = None
if not _ext.has_extension():
    # No compiled kernels: define the schemas here and let the reference serve every device.
    _fallback_lib = torch.library.Library("anm_fast", "DEF")
    for _name in OP_NAMES:
        _fallback_lib.define(_name + SCHEMAS[_name])
        _fallback_lib.impl(_name, getattr(reference, _name), "CompositeExplicitAutograd")

ops = torch.ops.anm_fast


# The CUDA dispatch key is filled by anm_fast/backend.py (compiled CUDA, Triton or reference).
backend.install()


# ----------------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("anm_fast::activation_peaks")
def _activation_peaks_fake(fmap, height, width, band):
    B, _, h, w = fmap.shape
    peak = fmap.new_empty((B, 2), dtype=torch.int64)
    return peak, fmap.new_empty((B, 2), dtype=torch.int64), fmap.new_empty((B, h, w),
                                                                           dtype=torch.float32)


@torch.library.register_fake("anm_fast::sample_boxes")
def _sample_boxes_fake(peak_max, peak_min, quality, sample_ids, seed, height, width, channels,
                       box_params, fill_value):
    B = peak_max.shape[0]
    box = lambda: peak_max.new_empty((B, 4), dtype=torch.int64)  # noqa: E731
    fill = lambda: peak_max.new_empty((B, channels), dtype=torch.float32)  # noqa: E731
    return box(), box(), peak_max.new_empty((B,), dtype=torch.float32), fill(), fill()


@torch.library.register_fake("anm_fast::erase_and_modulate")
def _erase_and_modulate_fake(x, targets, box_max, box_min, fill_max, fill_min, ratio, label_gain):
    B, C, H, W = x.shape
    erased = torch.empty((2 * B, C, H, W), dtype=x.dtype, device=x.device,
                         memory_format=reference.erased_memory_format(x))
    return erased, torch.empty(targets.shape, dtype=targets.dtype, device=targets.device)


@torch.library.register_fake("anm_fast::erase_and_modulate_backward")
def _erase_and_modulate_backward_fake(grad_erased, grad_targets, targets, box_max, box_min, ratio,
                                      label_gain):
    twoB, C, H, W = grad_erased.shape
    grad_x = torch.empty((twoB // 2, C, H, W), dtype=grad_erased.dtype, device=grad_erased.device,
                         memory_format=reference.erased_memory_format(grad_erased))
    return grad_x, torch.empty(targets.shape, dtype=grad_targets.dtype, device=grad_targets.device)


if _ext.has_extension():
    @torch.library.register_fake("anm_fast::anm_mask")
    def _anm_mask_fake(x, fmap, targets, quality, sample_ids, seed, band, box_params, fill_value,
                       label_gain, check_values):
        B, C, _, _ = x.shape
        erased, targets_out = _erase_and_modulate_fake(x, targets, None, None, None, None, None,
                                                       label_gain)
        boxes = _sample_boxes_fake(x.new_empty((B, 2), dtype=torch.int64), None, quality,
                                   sample_ids, seed, 0, 0, C, box_params, fill_value)
        peaks = _activation_peaks_fake(fmap, 0, 0, band)
        return (erased, targets_out, *boxes, *peaks)


# ---------------------------------------------------------------------------------------- autograd
def _erase_setup_context(ctx, inputs, output):
    x, targets, box_max, box_min, _fill_max, _fill_min, ratio, label_gain = inputs
    ctx.save_for_backward(targets, box_max, box_min, ratio)
    ctx.label_gain = label_gain
    ctx.x_shape = x.shape
    ctx.x_dtype = x.dtype


def _erase_backward(ctx, grad_erased, grad_targets):
    targets, box_max, box_min, ratio = ctx.saved_tensors
    if grad_erased is None:
        B, C, H, W = ctx.x_shape
        grad_erased = targets.new_zeros((2 * B, C, H, W), dtype=ctx.x_dtype)
    if grad_targets is None:
        grad_targets = torch.zeros_like(targets)
    grad_x, grad_t = ops.erase_and_modulate_backward(grad_erased, grad_targets, targets, box_max,
                                                     box_min, ratio, ctx.label_gain)
    return grad_x, grad_t, None, None, None, None, None, None


torch.library.register_autograd("anm_fast::erase_and_modulate", _erase_backward,
                                setup_context=_erase_setup_context)


# The fused op's gradient (anm_mask) is registered in C++: csrc/autograd/anm_mask_autograd.cpp.
