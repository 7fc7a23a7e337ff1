"""Triton kernels of anm_fast (installed as the subpackage `anm_fast.kernels`).

Each launcher has the signature of the `torch.ops.anm_fast.*` operator of the same name, so
anm_fast/backend.py can register it for the CUDA dispatch key as it is. Importing this package
imports triton: it raises ImportError where triton is missing.
"""
from .activation_peaks import activation_peaks
from .erase import erase_and_modulate, erase_and_modulate_backward
from .fused import sample_and_erase
from .sample_boxes import sample_boxes

# Operator name -> launcher, what anm_fast/backend.py registers.
LAUNCHERS = {
    "activation_peaks": activation_peaks,
    "sample_boxes": sample_boxes,
    "erase_and_modulate": erase_and_modulate,
    "erase_and_modulate_backward": erase_and_modulate_backward,
}

# Not an operator: stages 2 and 3 in one launch (sample_boxes + erase_and_modulate).
__all__ = ["LAUNCHERS", "activation_peaks", "sample_boxes", "erase_and_modulate",
           "erase_and_modulate_backward", "sample_and_erase"]
