"""masked_forward: ANM around any classifier, in two forward passes (the steps are those of
docs/SPEC.md).

Pass 1 runs the model on the clean batch x. A forward hook on the feature layer captures its
feature map, whose activation peaks place the boxes (steps 1-3, `anm_mask`); the logits give
the clean loss. Pass 2 runs the model once on the 2B erased images: their logits give the erased
loss, and the feature map captured in the same pass feeds the reconstruction decoder (step 4).
The released code runs the erased images a second time for the decoder; the features are the
same, so one pass serves both.

The feature layer is the module whose output is the last spatial feature map before global
pooling. It is, in order: the `feature_layer` argument (a module name such as "layer4", or the
module itself), the model's `anm_feature_layer` attribute (set by anm_fast.models), or found
automatically by one extra pass before the first clean pass (see `find_feature_layer`) and
cached per model. `capture_features` runs a model and captures its feature map: both passes here,
and every other look at a model's features in this package (nn.ANM, the trainer).

Its output may be a (B, D, h, w) map (CNNs), a channels-last (B, h, w, D) map (Swin, the NHWC
layers of timm models) or (B, N, D) tokens (ViT, DeiT: class and register tokens before an h x w
patch grid); `feature_map` turns each into (B, D, h, w). Modules inside attention blocks (queries,
keys, per-head tensors) are never chosen.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import warnings
import weakref
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks as chk
from .api import MaskBatch, anm_mask
from .config import ANMConfig
from .losses import soft_cross_entropy

__all__ = ["MaskedOutput", "masked_forward", "find_feature_layer", "feature_map",
           "FeatureLayout", "FeatureLayerWarning"]

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


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
    """How a feature layer's output holds its map: "nchw" (B, D, h, w), "nhwc" (B, h, w, D), or
    "tokens" (B, prefix + h*w, D) with `prefix` class/register tokens before the patch grid."""

    kind: str
    prefix: int = 0
    grid: Tuple[int, int] = (0, 0)


NCHW = FeatureLayout("nchw")


def feature_map(output: torch.Tensor, layout: FeatureLayout) -> torch.Tensor:
    """The (B, D, h, w) map of a feature layer's output (differentiable views/copies)."""
    if layout.kind == "nchw":
        return output
    if layout.kind == "nhwc":
        return output.permute(0, 3, 1, 2)
    B, _, D = output.shape
    h, w = layout.grid
    return output[:, layout.prefix:].transpose(1, 2).reshape(B, D, h, w)


# Feature layers found automatically, per (unwrapped) model: discovery costs nothing after the
# first call and the choice is reported once.
_DISCOVERED: "weakref.WeakKeyDictionary[nn.Module, Tuple[str, FeatureLayout]]" = \
    weakref.WeakKeyDictionary()
# models already warned about a 1x1 feature map
_WARNED_1X1: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()

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
        if layer is None and inner in _DISCOVERED:
            layer = _DISCOVERED[inner][0]
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


def _token_layout(inner: nn.Module, n: int) -> Optional[FeatureLayout]:
    """Layout of (B, n, D) tokens: timm's patch_embed.grid_size and num_prefix_tokens when they
    fit, else the fewest leading tokens (at most 8: class, distillation, registers) that leave a
    square grid."""
    prefix = getattr(inner, "num_prefix_tokens", None)
    grid = getattr(getattr(inner, "patch_embed", None), "grid_size", None)
    if isinstance(prefix, int) and grid is not None and len(grid) == 2 and \
            n - prefix == int(grid[0]) * int(grid[1]) > 0:
        return FeatureLayout("tokens", prefix, (int(grid[0]), int(grid[1])))
    for p in range(0, min(8, n - 1) + 1):
        r = math.isqrt(n - p)
        if r > 0 and r * r == n - p:
            return FeatureLayout("tokens", p, (r, r))
    return None


def _layout(inner: nn.Module, module: nn.Module, out: torch.Tensor,
            width: Optional[int] = None) -> Optional[FeatureLayout]:
    """The layout of a 4-D or 3-D layer output, or None when it holds no spatial map.

    4-D: channels-last when the model says so (timm's output_fmt "NHWC", e.g. Swin), when the
    last dim alone matches `width` (the features entering the classifier), or for a LayerNorm
    over the last dim (timm ConvNeXt blocks); else channels-first."""
    if out.dim() == 3:
        return _token_layout(inner, out.shape[1]) if out.shape[1] > 1 else None
    if out.dim() != 4:
        return None
    if getattr(inner, "output_fmt", None) == "NHWC" or str(getattr(inner, "output_fmt", "")) \
            .endswith("NHWC"):
        return FeatureLayout("nhwc")
    if width is not None and out.shape[-1] == width != out.shape[1]:
        return FeatureLayout("nhwc")
    if width is None and type(module) is nn.LayerNorm and \
            tuple(module.normalized_shape) == (out.shape[-1],) and out.shape[1] != out.shape[-1]:
        return FeatureLayout("nhwc")
    return NCHW


def _check_fmap(name: str, output, B: int, layout: FeatureLayout) -> torch.Tensor:
    ok = isinstance(output, torch.Tensor) and output.shape[0:1] == (B,) and (
        output.dim() == 3 and layout.kind == "tokens" and
        output.shape[1] == layout.prefix + layout.grid[0] * layout.grid[1] or
        output.dim() == 4 and layout.kind in ("nchw", "nhwc"))
    if not ok:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"feature_layer {name!r} must output a (B, D, h, w) or (B, h, w, D) "
                         f"feature map or (B, tokens, D) patch tokens with B={B}, got {shape}; "
                         f"pick a stage before global pooling")
    return feature_map(output, layout)


def _warn_if_1x1(inner: nn.Module, name: str, fmap: torch.Tensor, x: torch.Tensor) -> None:
    if tuple(fmap.shape[2:]) != (1, 1) or inner in _WARNED_1X1:
        return
    _WARNED_1X1[inner] = True
    warnings.warn(f"anm_fast: the feature map of {name!r} is 1x1 for {x.shape[-2]}x{x.shape[-1]} "
                  f"images: ANM has no place to choose (both boxes sit in the top-left corner). "
                  f"Use larger images, a stem that keeps resolution (e.g. "
                  f"anm_fast.models.torchvision_resnet(cifar_stem=True)) or an earlier layer "
                  f"(feature_layer=)", FeatureLayerWarning, stacklevel=3)


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


def _inside_attention(model: nn.Module, name: str) -> bool:
    """Whether `name` is an attention module or lies inside one (queries, keys, per-head maps:
    tensors of an attention's internals, never the model's feature map)."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        if parts[i - 1] in ("attn", "attention") or \
                "attention" in type(model.get_submodule(".".join(parts[:i]))).__name__.lower():
            return True
    return False


def _discovering_forward(model: nn.Module, x: torch.Tensor):
    """model(x) with a hook on every submodule; returns (logits, name, layout, output).

    The choice: the last module (in the order outputs are produced), outside attention blocks,
    whose output is a spatial map (4-D, or 3-D tokens on a patch grid) with the batch's size and
    which runs before the first global pooling module. Hooks fire inner-first, so of nested
    modules returning the same tensor (layer4.1 then layer4) the outermost, which fires last, is
    chosen. The width of the first 2-D (B, D) output after it tells (B, D, h, w) from (B, h, w, D).
    Outputs are recorded as shapes plus the chosen tensor only: holding every module's output
    would keep tensors that in-place modules (ReLU(inplace=True)) later change."""
    B = x.shape[0]
    events: List[Tuple[str, nn.Module, torch.Tensor, bool]] = []

    def hook_for(name, module):
        def hook(mod, inputs, output):
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                events.append((name, module, output, output.dim() == 4 and _is_global_pool(
                    mod, inputs, output)))
        return hook

    handles = [m.register_forward_hook(hook_for(n, m)) for n, m in model.named_modules() if n]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    chosen, width = None, None
    for name, module, out, pooled in events:
        if pooled:
            break
        if chosen is not None and out.dim() == 2 and out.shape[0] == B and width is None:
            width = out.shape[1]
        if out.dim() in (3, 4) and out.shape[0] == B and not _inside_attention(model, name) and \
                _layout(model, module, out) is not None:
            chosen, width = (name, module, out), None
    if chosen is None:
        raise ValueError(f"no submodule of {type(model).__name__} outputs a (B, D, h, w) feature "
                         f"map or patch tokens before global pooling; pass feature_layer=")
    name, module, out = chosen
    if width is None:  # no 2-D output before pooling: the pooled (B, D, 1, 1) map's width
        width = next((o.shape[1] for _, _, o, pooled in events if pooled), None)
    return logits, name, _layout(model, module, out, width), out


def find_feature_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The name of the feature layer automatic discovery picks for `model` on `example` images.

    Runs one forward pass without gradient, in eval mode (the mode is restored)."""
    inner = unwrap_model(model)
    with _eval_no_grad(inner):
        return _discovering_forward(inner, example)[1]


class Capture(NamedTuple):
    """What capture_features returns."""

    logits: torch.Tensor    # the model's output for x
    layer: str              # the feature layer's module name
    fmap: torch.Tensor      # (B, D, h, w): the feature layer's output, read through its layout


def capture_features(model: nn.Module, x: torch.Tensor, feature_layer: LayerSpec = None, *,
                     probe: bool = False) -> Capture:
    """One forward pass of `model` on `x`, and the feature map its feature layer outputs during
    that pass (a forward hook, removed afterwards).

    The layer is `feature_layer` (module name or module), else the model's `anm_feature_layer`,
    else the one found automatically by an extra pass on `x` (see `find_feature_layer`), cached
    per model. Gradients flow as in model(x). probe=True looks without changing anything: the
    pass runs on the unwrapped model in eval mode without gradient, and every submodule's mode
    is restored afterwards (feature shapes, plots)."""
    inner = unwrap_model(model)
    name, layer = _feature_layer(inner, feature_layer, x)
    captured: List = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        if probe:
            with _eval_no_grad(inner):
                logits = inner(x)
        else:
            logits = model(x)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the feature layer did not run during the model's forward pass")
    raw = captured[-1]
    layout = _layout_of(inner, name, layer, raw)
    return Capture(logits, name, _check_fmap(name, raw, x.shape[0], layout))


def _feature_layer(inner: nn.Module, feature_layer: LayerSpec, x: torch.Tensor, *,
                   announce: bool = False) -> Tuple[str, nn.Module]:
    """(name, module) of the feature layer; a layer found automatically is cached per model and,
    with `announce`, reported (a FeatureLayerWarning and a log line, for masked_forward's user).
    Discovery runs its own pass without gradient on the inner module (eval mode, restored):
    discovering inside a training forward would hold every module's output for the backward
    pass, and a compiled model's in-place ops then break it."""
    resolved = _resolve_layer(inner, feature_layer)
    if resolved is not None:
        return resolved
    with _eval_no_grad(inner):
        _, name, layout, out = _discovering_forward(inner, x)
    _DISCOVERED[inner] = (name, layout)
    layer = inner.get_submodule(name)
    if announce:
        message = (f"anm_fast: using {type(layer).__name__} {name!r} (output "
                   f"{tuple(out.shape[1:])}, read as {layout.kind}) of {type(inner).__name__} "
                   f"as the feature layer; pass feature_layer= to choose another")
        logger.info(message)
        warnings.warn(message, FeatureLayerWarning, stacklevel=3)
    return name, layer


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module):
    """Eval mode and no gradient for one pass; every submodule's own mode is restored (a model
    may hold eval-mode parts inside a train-mode container)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _layout_of(inner: nn.Module, name: str, layer: nn.Module, out) -> FeatureLayout:
    """The layout of a named (or anm_feature_layer / discovered) layer's output."""
    if inner in _DISCOVERED and _DISCOVERED[inner][0] == name:
        return _DISCOVERED[inner][1]
    if isinstance(out, torch.Tensor):
        return _layout(inner, layer, out) or NCHW
    return NCHW


def _soft_targets(targets: torch.Tensor, n: int, B: int) -> torch.Tensor:
    if targets.dtype.is_floating_point:
        if targets.dim() != 2 or targets.shape[1] != n:
            raise ValueError(f"targets must be (B, N) with N = {n} (the model's logits), got "
                             f"shape {tuple(targets.shape)}")
        return targets
    chk.hard_labels(targets, n)  # before one_hot, whose own error does not name the argument
    return F.one_hot(targets.long(), n).to(torch.float32)


def _early_checks(x, targets, quality, num_classes) -> None:
    """Shape errors before any forward pass, so a bad call costs nothing."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) image batch, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    B = x.shape[0]
    if B == 0:
        raise ValueError("x must hold at least one image (the losses are means over the batch), "
                         f"got shape {tuple(x.shape)}")
    chk.tensor(x, "x")
    targets = chk.tensor(targets, "targets")
    chk.label_dtype(targets, "targets")
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
    """Step 4's reconstruction loss: mean squared error of each half (max-erased, min-erased) to x, summed."""
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
    decoder:   maps the erased feature maps (2B, K, h, w) to (2B, C, H, W); None skips the reconstruction.
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
    name, _ = _feature_layer(inner, feature_layer, x, announce=True)
    logits, _, fmap = capture_features(model, x, name)
    _warn_if_1x1(inner, name, fmap, x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != B:
        raise ValueError(f"the model must return (B, N) logits, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    n = logits.shape[1]
    soft = _soft_targets(targets, n, B)
    mask = anm_mask(x, fmap, soft, quality, config=config, seed=seed, sample_ids=sample_ids)

    logits_erased, _, fmap_erased = capture_features(model, mask.erased, name)

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
