"""masked_forward: ANM stages 1-4 around any classifier, in two forward passes.

Pass 1 runs the model on the clean batch x. A forward hook on the feature layer captures its
feature map, whose activation peaks place the boxes (stages 1-3, `anm_mask`); the logits give
the clean loss. Pass 2 runs the model once on the 2B erased images: their logits give the erased
loss, and the feature map captured in the same pass feeds the reconstruction decoder (stage 4).
The released code runs the erased images a second time for the decoder; the features are the
same, so one pass serves both.

The feature layer is the module whose output is the last convolutional feature map before global
pooling. It is, in order: the `feature_layer` argument (a module name such as "layer4", or the
module itself), the model's `anm_feature_layer` attribute (set by anm_fast.models), or found
automatically during the first clean pass (see `find_feature_layer`) and cached per model.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
import weakref
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .api import MaskBatch, anm_mask
from .config import ANMConfig
from .losses import soft_cross_entropy

__all__ = ["MaskedOutput", "masked_forward", "find_feature_layer", "FeatureLayerWarning"]

logger = logging.getLogger("anm_fast")

LayerSpec = Union[str, nn.Module, None]


class FeatureLayerWarning(UserWarning):
    """Reports the automatically chosen feature layer (once per model)."""


@dataclasses.dataclass
class MaskedOutput:
    """What masked_forward returns. B = batch size, N = classes."""

    logits: torch.Tensor            # (B, N) the model on the clean images
    logits_erased: torch.Tensor     # (2B, N) on the max-erased then min-erased images
    targets_erased: torch.Tensor    # (2B, N) softened targets, row i matching logits_erased[i]
    loss_clean: torch.Tensor        # scalar: loss_fn(logits, targets)
    loss_erased: torch.Tensor       # scalar: loss_fn(logits_erased, targets_erased)
    loss_recon: torch.Tensor        # scalar: MSE of both reconstructions to x (0 without decoder)
    loss: torch.Tensor              # loss_clean + loss_erased + recon_weight * loss_recon
    mask: MaskBatch                 # boxes, peaks, energy, ratio, fills, seed of anm_mask
    reconstruction: Optional[torch.Tensor]  # (2B, C, H, W) decoder output, or None
    feature_layer: str              # the module name whose output was used


# Feature layers found automatically, per (unwrapped) model: discovery costs nothing after the
# first call and the choice is reported once.
_DISCOVERED: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_FIXED_POOLS = (nn.AvgPool2d, nn.MaxPool2d, nn.LPPool2d)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose submodules carry the hooks: through torch.compile's OptimizedModule
    (`_orig_mod`) and DistributedDataParallel (`module`), whose forwards call it."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _resolve_layer(inner: nn.Module, layer: LayerSpec) -> Optional[Tuple[str, nn.Module]]:
    if layer is None:
        layer = getattr(inner, "anm_feature_layer", None)
        if layer is None:
            layer = _DISCOVERED.get(inner)
        if layer is None:
            return None
    if isinstance(layer, nn.Module):
        for name, module in inner.named_modules():
            if module is layer:
                return name, module
        raise ValueError("feature_layer is a module that is not part of the model")
    if not isinstance(layer, str):
        raise TypeError(f"feature_layer must be a module name (str), a module or None, got "
                        f"{type(layer).__name__}")
    try:
        return layer, inner.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in inner.named_modules() if n and "." not in n]
        raise ValueError(f"feature_layer {layer!r} does not exist in {type(inner).__name__}; "
                         f"its top-level modules are {names}") from None


def _check_fmap(name: str, output, B: int) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 4 or output.shape[0] != B:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"feature_layer {name!r} must output a (B, K, h, w) feature map with "
                         f"B={B}, got {shape}; pick a convolutional stage before global pooling")
    return output


def _forward_capturing(model: nn.Module, layer: nn.Module, x: torch.Tensor):
    """model(x) and the last output of `layer` during that call (hook removed afterwards)."""
    captured: List = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the feature layer did not run during the model's forward pass")
    return logits, captured[-1]


def _is_global_pool(module: nn.Module, inputs, output) -> bool:
    """An adaptive pool, or a fixed pool reducing a larger map to 1x1 (not a strided conv:
    layer4 of a resnet on a 32x32 image is itself 1x1)."""
    if isinstance(module, _GLOBAL_POOLS):
        return True
    if not isinstance(module, _FIXED_POOLS):
        return False
    x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
    return (x is not None and x.dim() == 4 and output.dim() == 4
            and tuple(output.shape[2:]) == (1, 1) and tuple(x.shape[2:]) != (1, 1))


def _discovering_forward(model: nn.Module, x: torch.Tensor):
    """model(x) with a hook on every submodule; returns (logits, name, feature map).

    The choice: the last module (in the order outputs are produced) whose output is a 4-D
    (B, K, h, w) float tensor and which runs before the first global pooling module. Hooks fire
    inner-first, so of nested modules returning the same tensor (layer4.1 then layer4) the
    outermost, which fires last, is chosen."""
    B = x.shape[0]
    events: List[Tuple[str, torch.Tensor, bool]] = []

    def hook_for(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                events.append((name, output, output.dim() == 4 and _is_global_pool(
                    module, inputs, output)))
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if n]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    chosen = None
    for name, out, pooled in events:
        if pooled:
            break
        if out.dim() == 4 and out.shape[0] == B:
            chosen = (name, out)
    if chosen is None:
        raise ValueError(f"no submodule of {type(model).__name__} outputs a 4-D (B, K, h, w) "
                         f"feature map before global pooling; pass feature_layer=")
    return logits, chosen[0], chosen[1]


def find_feature_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The name of the feature layer automatic discovery picks for `model` on `example` images.

    Runs one forward pass without gradient, in eval mode (the mode is restored)."""
    inner = unwrap_model(model)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            return _discovering_forward(inner, example)[1]
    finally:
        inner.train(was_training)


def _soft_targets(targets: torch.Tensor, n: int, B: int) -> torch.Tensor:
    if targets.dtype.is_floating_point:
        if targets.dim() != 2 or targets.shape[1] != n:
            raise ValueError(f"targets must be (B, N) with N = {n} (the model's logits), got "
                             f"shape {tuple(targets.shape)}")
        return targets
    return F.one_hot(targets.long(), n).to(torch.float32)


def _early_checks(x, targets, quality, num_classes) -> None:
    """Shape errors before any forward pass, so a bad call costs nothing."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) image batch, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    B = x.shape[0]
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype.is_floating_point:
        if targets.dim() != 2 or targets.shape[0] != B:
            raise ValueError(f"soft targets must be (B, N) with B = {B}, got shape "
                             f"{tuple(targets.shape)}")
        if num_classes is not None and targets.shape[1] != num_classes:
            raise ValueError(f"targets have {targets.shape[1]} classes but num_classes="
                             f"{num_classes}")
    elif tuple(targets.shape) != (B,):
        raise ValueError(f"class-index targets must be (B,) = ({B},), got shape "
                         f"{tuple(targets.shape)}")
    if isinstance(quality, torch.Tensor) and tuple(quality.shape) != (B,):
        raise ValueError(f"quality must have one value per sample, shape (B,) = ({B},), got "
                         f"{tuple(quality.shape)}")


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Spec stage 4: mean squared error of each half (max-erased, min-erased) to x, summed."""
    B = x.shape[0]
    if recon.shape[0] != 2 * B or recon.shape[1:] != x.shape[1:]:
        raise ValueError(f"the decoder must map the erased feature maps to images of shape "
                         f"{tuple(x.shape[1:])}, got {tuple(recon.shape)}; build it with "
                         f"ReconstructionDecoder.for_shapes(feature_shape, image_shape)")
    target = x.detach().float()
    recon = recon.float()
    return F.mse_loss(recon[:B], target) + F.mse_loss(recon[B:], target)


def masked_forward(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, quality, *,
                   feature_layer: LayerSpec = None, decoder: Optional[nn.Module] = None,
                   config: Optional[ANMConfig] = None, recon_weight: float = 0.02, seed=None,
                   sample_ids: Optional[torch.Tensor] = None, num_classes: Optional[int] = None,
                   loss_fn: Optional[Callable] = None) -> MaskedOutput:
    """One ANM training step's forward: clean pass, masks, erased pass, losses.

    model:     any classifier mapping (B, C, H, W) to (B, N) logits; may be torch.compile'd.
    x:         (B, C, H, W) normalised images (any float dtype, contiguous or channels_last).
    targets:   (B, N) soft targets or (B,) class indices.
    quality:   (B,) label quality in [0, 1] (1 = clean), or one number for the whole batch.
    feature_layer: module name or module; None = model.anm_feature_layer or automatic.
    decoder:   maps the erased feature maps (2B, K, h, w) to (2B, C, H, W); None skips stage 4.
    config, seed, sample_ids: as in anm_mask (seed=None draws from torch's generator).
    num_classes: only checks the targets' width early; N is read from the logits.
    loss_fn:   loss_fn(logits, soft_targets) -> scalar, for both the clean and the erased loss;
               default soft_cross_entropy (float32 math under AMP).
    Peaks, boxes and fills carry no gradient; the losses reach the model and the decoder.
    """
    config = ANMConfig() if config is None else config
    _early_checks(x, targets, quality, num_classes)
    B = x.shape[0]
    inner = unwrap_model(model)
    resolved = _resolve_layer(inner, feature_layer)
    if resolved is None:
        # First call on this model: discover the layer during the clean pass itself (no extra
        # forward). It runs eagerly on the inner module: compiling a graph with a hook on every
        # module for one call would be wasted work.
        logits, name, fmap = _discovering_forward(inner, x)
        _DISCOVERED[inner] = name
        layer = inner.get_submodule(name)
        message = (f"anm_fast: using {type(layer).__name__} {name!r} (output "
                   f"{tuple(fmap.shape[1:])}) of {type(inner).__name__} as the feature layer; "
                   f"pass feature_layer= to choose another")
        logger.info(message)
        warnings.warn(message, FeatureLayerWarning, stacklevel=2)
    else:
        name, layer = resolved
        logits, fmap = _forward_capturing(model, layer, x)
    fmap = _check_fmap(name, fmap, B)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != B:
        raise ValueError(f"the model must return (B, N) logits, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    n = logits.shape[1]
    soft = _soft_targets(targets, n, B)
    mask = anm_mask(x, fmap, soft, quality, config=config, seed=seed, sample_ids=sample_ids)

    logits_erased, fmap_erased = _forward_capturing(model, layer, mask.erased)
    fmap_erased = _check_fmap(name, fmap_erased, 2 * B)

    loss_fn = soft_cross_entropy if loss_fn is None else loss_fn
    targets_erased = mask.targets.repeat(2, 1)
    loss_clean = loss_fn(logits, soft)
    loss_erased = loss_fn(logits_erased, targets_erased)
    if decoder is not None:
        reconstruction = decoder(fmap_erased)
        loss_recon = reconstruction_loss(reconstruction, x)
    else:
        reconstruction = None
        loss_recon = torch.zeros((), device=x.device, dtype=torch.float32)
    loss = loss_clean + loss_erased + recon_weight * loss_recon
    return MaskedOutput(logits, logits_erased, targets_erased, loss_clean, loss_erased,
                        loss_recon, loss, mask, reconstruction, name)
