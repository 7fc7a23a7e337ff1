"""anm_fast: fast, fused Adversarial Noisy Masking for training classifiers on noisy labels."""
from . import _ext
from ._checks import set_checks
from .backend import get_backend, set_backend
from ._ext import extension_error, has_cuda_kernels, has_extension
from .api import (Boxes, Erased, MaskBatch, Peaks, activation_peaks, anm_mask, erase_and_modulate,
                  sample_boxes)
from .config import ANMConfig
from . import reference

__version__ = "0.1.0"

__all__ = [
    "ANMConfig", "Boxes", "Erased", "MaskBatch", "Peaks", "activation_peaks", "anm_mask",
    "erase_and_modulate", "sample_boxes", "set_checks", "has_extension", "has_cuda_kernels",
    "extension_error", "reference", "set_backend", "get_backend",
]

# The user-facing training API: masked_forward and its modules.
from .masked import MaskedOutput, find_feature_layer, masked_forward
from . import label_issues, losses, models, nn, quality

__all__ += ["MaskedOutput", "find_feature_layer", "masked_forward", "label_issues", "losses",
            "models", "nn", "quality"]
