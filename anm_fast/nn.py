"""Modules for ANM: the reconstruction decoder and `ANM`, a module owning model + decoder.

`ReconstructionDecoder.for_shapes((K, h, w), (C, H, W))` builds the released design: three
transposed convolutions with no non-linearity between them (docs/SPEC.md, "4. Reconstruction"),
sized so that any feature map shape lands exactly on the image shape.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from . import _checks as chk
from .config import ANMConfig
from .masked import MaskedOutput, capture_features, masked_forward, unwrap_model

__all__ = ["ReconstructionDecoder", "ANM"]


def _up_layer(size: int, factor: int) -> Tuple[int, int, int]:
    """(kernel, stride, padding) of a transposed conv multiplying `size` by `factor` exactly:
    kernel = stride + 2 * padding gives out = size * stride."""
    return (factor + 2, factor, 1) if factor >= 2 else (3, 1, 1)


def _axis_plan(h: int, H: int, layers: int) -> list:
    """Per-layer (kernel, stride, padding) along one axis taking h to H in `layers` steps.

    All but the last layer upsample by the same power of two, about (H/h)^(1/layers) (4x4 ->
    32x32: x2, x2, x2, i.e. 4 -> 8 -> 16 -> 32, ours; the release's CIFAR decoder goes
    4 -> 10 -> 15 -> 32, ReconstructionDecoder.sanm_cifar; 7x7 -> 224x224: x4, x4, x2). The last layer lands on H
    exactly: an integer factor when H is a multiple of the current size, otherwise stride
    H // size with the kernel that makes out = (size - 1) * stride + kernel = H."""
    if h > H:
        raise ValueError(f"the feature map ({h}) is larger than the image ({H}) along an axis; a "
                         f"transposed-conv decoder only upsamples")
    step = 2 ** max(0, round(math.log2(H / h) / layers))
    plan, size = [], h
    for _ in range(layers - 1):
        s = step if size * step <= H else 1
        plan.append(_up_layer(size, s))
        size *= s
    s = H // size
    if size * s == H:
        plan.append(_up_layer(size, s))
    else:
        plan.append((H - (size - 1) * s, s, 0))
    return plan


class ReconstructionDecoder(nn.Module):
    """Transposed convolutions from a (K, h, w) feature map to a (C, H, W) image.

    Build it with `for_shapes`. `activation` (e.g. nn.ReLU) inserts a non-linearity between the
    layers; the default None is the released linear decoder.
    """

    def __init__(self, channels: Sequence[int], kernels, strides, paddings,
                 activation: Optional[Callable[[], nn.Module]] = None):
        super().__init__()
        layers = []
        for i in range(len(channels) - 1):
            layers.append(nn.ConvTranspose2d(channels[i], channels[i + 1], kernels[i],
                                             stride=strides[i], padding=paddings[i]))
            if activation is not None and i < len(channels) - 2:
                layers.append(activation())
        self.layers = nn.Sequential(*layers)

    @classmethod
    def for_shapes(cls, feature_shape, image_shape, *, hidden: Optional[Sequence[int]] = None,
                   activation: Optional[Callable[[], nn.Module]] = None,
                   num_layers: int = 3) -> "ReconstructionDecoder":
        """feature_shape (K, h, w) -> image_shape (C, H, W).

        hidden: the channels between layers. Default: K/2, K/4, ... capped at 256, 128, ...
        and never below C: 512 -> 256 -> 128 -> 3 for ResNet-18, the release's channels (its
        spatial sizes differ: see sanm_cifar); the cap (ours)
        keeps ResNet-50's 2048 -> 256 -> 128 -> 3 decoder at 19M parameters instead of 94M."""
        K, h, w = (int(v) for v in feature_shape)
        C, H, W = (int(v) for v in image_shape)
        if min(K, h, w, C, H, W) <= 0 or num_layers < 1:
            raise ValueError(f"need positive shapes and num_layers, got {feature_shape}, "
                             f"{image_shape}, {num_layers}")
        if hidden is None:
            hidden = [max(C, min(K >> (i + 1), 256 >> i)) for i in range(num_layers - 1)]
        if len(hidden) != num_layers - 1:
            raise ValueError(f"hidden needs {num_layers - 1} channel counts, got {list(hidden)}")
        rows, cols = _axis_plan(h, H, num_layers), _axis_plan(w, W, num_layers)
        decoder = cls([K, *hidden, C], [(r[0], c[0]) for r, c in zip(rows, cols)],
                      [(r[1], c[1]) for r, c in zip(rows, cols)],
                      [(r[2], c[2]) for r, c in zip(rows, cols)], activation)
        decoder.feature_shape, decoder.image_shape = (K, h, w), (C, H, W)
        return decoder

    @classmethod
    def sanm_cifar(cls, feature_shape, image_shape) -> "ReconstructionDecoder":
        """The released CIFAR decoder: (K, 4, 4) -> (C, 32, 32) through 4 -> 10 -> 15 -> 32
        (kernel 4 stride 2, kernel 6 stride 1, kernel 4 stride 2, no padding), channels
        K -> K/2 -> K/4 -> C (512 -> 256 -> 128 -> 3 for ResNet-18)."""
        K, h, w = (int(v) for v in feature_shape)
        C, H, W = (int(v) for v in image_shape)
        if (h, w, H, W) != (4, 4, 32, 32) or K < 4 or C < 1:
            raise ValueError(f"the released CIFAR decoder maps (K, 4, 4) features to (C, 32, 32) "
                             f"images, got {tuple(feature_shape)} -> {tuple(image_shape)}")
        decoder = cls([K, K // 2, K // 4, C], [4, 6, 4], [2, 1, 2], [0, 0, 0])
        decoder.feature_shape, decoder.image_shape = (K, h, w), (C, H, W)
        return decoder

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def _image_shape(image_size, in_channels: Optional[int]) -> Tuple[int, int, int]:
    if in_channels is not None:
        in_channels = chk.positive_int(in_channels, "in_channels")
    if isinstance(image_size, numbers.Integral):
        dims = (chk.positive_int(image_size, "image_size"),) * 2
    elif isinstance(image_size, (tuple, list, torch.Size)):
        dims = tuple(chk.positive_int(v, f"image_size[{i}]") for i, v in enumerate(image_size))
    else:
        raise TypeError(f"image_size must be an int, (H, W) or (C, H, W), got {image_size!r}")
    if len(dims) == 3:
        if in_channels is not None and in_channels != dims[0]:
            raise ValueError(f"image_size {dims} has {dims[0]} channels but in_channels="
                             f"{in_channels}")
        return dims
    if len(dims) != 2:
        raise ValueError(f"image_size must be an int, (H, W) or (C, H, W), got {image_size!r}")
    return (3 if in_channels is None else int(in_channels),) + dims


class ANM(nn.Module):
    """A classifier plus everything ANM trains with it: decoder, config, recon weight.

        anm = ANM(model, num_classes=10, image_size=32)        # CIFAR: (3, 32, 32)
        optimizer = torch.optim.SGD(anm.parameters(), lr=0.02)  # model + decoder
        out = anm(x, y, quality)                                # a MaskedOutput
        out.loss.backward()

    The feature shape is read from one no-grad forward pass on zeros at construction (eval mode,
    so no BatchNorm statistics change). `anm.model` is the classifier (use it alone for
    inference). The state_dict holds the model, the decoder and (as extra state) the config,
    recon weight and feature layer name.
    """

    def __init__(self, model: nn.Module, num_classes: int, image_size, feature_layer=None,
                 config: Optional[ANMConfig] = None, recon_weight: float = 0.02, *,
                 in_channels: Optional[int] = None, decoder: Optional[nn.Module] = None):
        super().__init__()
        self.model = model
        self.config = ANMConfig() if config is None else config
        self.recon_weight = chk.number(recon_weight, "recon_weight")
        self.num_classes = chk.positive_int(num_classes, "num_classes")
        self.image_shape = _image_shape(image_size, in_channels)
        name, feature_shape = self._probe(feature_layer)
        self.feature_layer = name
        self.feature_shape = feature_shape
        self.decoder = decoder if decoder is not None else ReconstructionDecoder.for_shapes(
            feature_shape, self.image_shape)
        param = next(model.parameters(), None)
        if param is not None:
            self.decoder.to(param.device)

    def _probe(self, feature_layer):
        inner = unwrap_model(self.model)
        param = next(inner.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        x = torch.zeros((2,) + self.image_shape, device=device, dtype=dtype)
        logits, name, fmap = capture_features(inner, x, feature_layer, probe=True)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"the model returns logits of shape {tuple(logits.shape)}, expected "
                             f"(B, {self.num_classes})")
        return name, tuple(fmap.shape[1:])

    def forward(self, x: torch.Tensor, targets: torch.Tensor, quality, *, seed=None,
                sample_ids: Optional[torch.Tensor] = None,
                loss_fn: Optional[Callable] = None) -> MaskedOutput:
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x has images of shape {tuple(x.shape[1:])}, this ANM was built "
                             f"for {self.image_shape}")
        return masked_forward(self.model, x, targets, quality, feature_layer=self.feature_layer,
                              decoder=self.decoder, config=self.config,
                              recon_weight=self.recon_weight, seed=seed, sample_ids=sample_ids,
                              num_classes=self.num_classes, loss_fn=loss_fn)

    def get_extra_state(self):
        return {"config": dataclasses.asdict(self.config), "recon_weight": self.recon_weight,
                "feature_layer": self.feature_layer, "num_classes": self.num_classes,
                "image_shape": list(self.image_shape)}

    def set_extra_state(self, state) -> None:
        if list(state["image_shape"]) != list(self.image_shape) or \
                state["num_classes"] != self.num_classes:
            raise ValueError(f"checkpoint is for images {state['image_shape']} and "
                             f"{state['num_classes']} classes, this ANM has {self.image_shape} "
                             f"and {self.num_classes}")
        self.config = ANMConfig(**state["config"])
        self.recon_weight = float(state["recon_weight"])
        self.feature_layer = state["feature_layer"]

    def extra_repr(self) -> str:
        return (f"feature_layer={self.feature_layer!r}, feature_shape={self.feature_shape}, "
                f"image_shape={self.image_shape}, recon_weight={self.recon_weight}")
