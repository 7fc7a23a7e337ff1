"""Small, documented classifiers to train with ANM.

Every model built here carries `anm_feature_layer`: the name of the module whose output is the
last convolutional feature map (B, K, h, w) before global pooling. `masked_forward` reads that
attribute, so these models never need automatic feature-layer discovery.

- `PreActResNet18`: the CIFAR-style pre-activation ResNet-18 used by DivideMix and the ANM
  release (3x3 stem, no max-pool; a 32x32 image gives a 512x4x4 feature map).
- `SmallCNN`: a three-conv network for tiny images such as sklearn's 8x8 digits; fast on CPU.
- `torchvision_resnet`: torchvision's resnet18 / resnet50 with random weights (never downloads),
  optionally with the CIFAR stem for 32x32 inputs.
- `timm_model`: any timm model by name ("timm:convnext_atto" in build_model), random weights
  (pretrained=False: nothing downloads); its feature layer is found by masked_forward's discovery.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PreActBlock", "PreActResNet18", "SmallCNN", "torchvision_resnet", "timm_model",
           "build_model", "check_model_name", "MODELS"]

MODELS = ("preact_resnet18", "small_cnn", "resnet18", "resnet50")
TIMM_PREFIX = "timm:"


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice plus a shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection shortcut sees the pre-activated input, as in the PreAct paper.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """CIFAR-style PreAct ResNet-18. Feature layer: "layer4" (512 x H/8 x W/8).

    in_channels: image channels (3 for CIFAR, 1 for grey images).
    num_classes: output logits.
    """

    anm_feature_layer = "layer4"

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(width, 2, stride=1)
        self.layer2 = self._make_layer(width * 2, 2, stride=2)
        self.layer3 = self._make_layer(width * 4, 2, stride=2)
        self.layer4 = self._make_layer(width * 8, 2, stride=2)
        self.linear = nn.Linear(width * 8, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        # Global average pooling as a function (not a module) keeps layer4 the last 4-D module
        # output, and works for any input size (the release hard-codes avg_pool2d(out, 4)).
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


class SmallCNN(nn.Module):
    """Three 3x3 conv layers + global average pooling + linear. Feature layer: "features".

    Sized for 8x8 digits (one 2x2 max-pool: an 8x8 image gives a width*2 x 4x4 feature map)
    and fine for any small image. in_channels=1 for digits/MNIST, 3 for colour images.
    """

    anm_feature_layer = "features"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, padding=1), nn.BatchNorm2d(width * 2), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width * 2, width * 2, 3, padding=1), nn.BatchNorm2d(width * 2), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def torchvision_resnet(name: str = "resnet18", num_classes: int = 1000, in_channels: int = 3,
                       cifar_stem: bool = False) -> nn.Module:
    """torchvision's resnet18 / resnet50 with random weights (weights=None: nothing downloads).

    cifar_stem=True swaps the 7x7 stride-2 stem and max-pool for a 3x3 stride-1 conv, so a 32x32
    image keeps a 4x4 feature map instead of 1x1. Feature layer: "layer4".
    """
    import torchvision  # optional dependency: only needed for this helper

    builders = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}
    if name not in builders:
        raise ValueError(f"name must be one of {sorted(builders)}, got {name!r}")
    model = builders[name](weights=None, num_classes=num_classes)
    if cifar_stem or in_channels != 3:
        kernel, stride, padding = (3, 1, 1) if cifar_stem else (7, 2, 3)
        model.conv1 = nn.Conv2d(in_channels, 64, kernel, stride=stride, padding=padding,
                                bias=False)
    if cifar_stem:
        model.maxpool = nn.Identity()
    model.anm_feature_layer = "layer4"
    return model


def timm_model(name: str, num_classes: int, in_channels: int = 3,
               image_size: Optional[int] = None) -> nn.Module:
    """timm.create_model(name, pretrained=False): random weights, nothing downloaded. Models
    with a fixed input grid (ViT, DeiT, Swin) are built for `image_size`; convolutional ones take
    any size and have no such argument."""
    timm = _timm()
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_channels)
    if image_size is not None:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
    return timm.create_model(name, **kwargs)


def _timm():
    try:
        import timm
    except ImportError as e:  # a training extra, not a core dependency
        raise ImportError("timm: models need timm: pip install 'anm_fast[train]'") from e
    return timm


def check_model_name(name: str) -> None:
    """A ValueError unless `name` is a built-in model or timm:NAME of a model timm knows (costs no
    model construction: arguments are checked before any data loads)."""
    if not isinstance(name, str):
        raise ValueError(f"model must be a name, got {name!r}")
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX):]
        if not _timm().is_model(arch):
            raise ValueError(f"model {name!r}: timm has no model {arch!r} (timm.list_models() "
                             f"lists them, e.g. resnet18, convnext_atto, vit_tiny_patch16_224)")
        return
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose {', '.join(MODELS)} or timm:NAME")


def build_model(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """One entry point by name: "preact_resnet18", "small_cnn", "resnet18", "resnet50", or
    "timm:NAME" (kwargs: image_size)."""
    if name.startswith(TIMM_PREFIX):
        return timm_model(name[len(TIMM_PREFIX):], num_classes, in_channels, **kwargs)
    check_model_name(name)
    if name == "preact_resnet18":
        return PreActResNet18(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name == "small_cnn":
        return SmallCNN(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name in ("resnet18", "resnet50"):
        return torchvision_resnet(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    raise AssertionError(name)  # check_model_name covers every other name
