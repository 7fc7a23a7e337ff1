"""Triton kernels of anm_fast (installed as the subpackage `anm_fast.kernels`).

Each launcher has the signature of the `torch.ops.anm_fast.*` operator of the same name, so
anm_fast/backend.py can register it for the CUDA dispatch key as it is. Importing this package
imports triton: it raises ImportError where triton is missing.
"""
from .activation_peaks import activation_peaks
from .anm_mask import anm_mask
from .erase import erase_and_modulate, erase_and_modulate_backward
from .sample_boxes import sample_boxes

# Operator name -> launcher, what anm_fast/backend.py registers.
LAUNCHERS = {
    "activation_peaks": activation_peaks,
    "sample_boxes": sample_boxes,
    "erase_and_modulate": erase_and_modulate,
    "erase_and_modulate_backward": erase_and_modulate_backward,
    "anm_mask": anm_mask,
}

__all__ = ["LAUNCHERS", "activation_peaks", "anm_mask", "sample_boxes", "erase_and_modulate",
           "erase_and_modulate_backward"]
