"""masked_forward with nothing named on modern backbones (timm, random weights, small images):
token maps (ViT, DeiT, register tokens) and channels-last maps (Swin) read as (B, D, h, w), the
energy map on the last patch/feature grid, gradients reaching the model; torch.compile'd models
with automatic discovery; a warning for a 1x1 map."""
import warnings

import pytest
import torch
from torch import nn

from anm_fast import masked_forward
from anm_fast.masked import FeatureLayerWarning

timm = pytest.importorskip("timm")
N = 5


@pytest.mark.parametrize("name,kwargs,size,layer,grid", [
    ("vit_tiny_patch16_224", dict(img_size=64), 64, "norm", (4, 4)),
    ("vit_tiny_patch16_224", dict(img_size=64, reg_tokens=4), 64, "norm", (4, 4)),
    ("deit_tiny_patch16_224", dict(img_size=64), 64, "norm", (4, 4)),
    ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=4, depths=(1, 1, 1, 1)), 64,
     "norm", (2, 2)),
    ("convnext_atto", dict(), 64, None, (2, 2)),
    ("resnet18", dict(), 64, "layer4", (2, 2)),
], ids=["vit", "vit-registers", "deit", "swin", "convnext", "resnet"])
def test_automatic_layer_on_timm_backbones(name, kwargs, size, layer, grid):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=N, **kwargs)
    x, y, q = torch.randn(2, 3, size, size), torch.randint(0, N, (2,)), torch.tensor([0.2, 0.9])
    with pytest.warns(FeatureLayerWarning) as record:
        out = masked_forward(model, x, y, q, seed=0)
    assert "attn" not in out.feature_layer and ".q" not in out.feature_layer
    if layer is not None:
        assert out.feature_layer == layer, [str(r.message) for r in record]
    assert tuple(out.mask.energy.shape) == (2, *grid)
    out.loss.backward()
    first = next(p for p in model.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_named_channels_last_stage_is_read_as_nhwc():
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=N,
                              img_size=64, window_size=4, depths=(1, 1, 1, 1))
    x, y, q = torch.randn(2, 3, 64, 64), torch.randint(0, N, (2,)), torch.rand(2)
    out = masked_forward(model, x, y, q, seed=0, feature_layer="layers.2")
    assert tuple(out.mask.energy.shape) == (2, 4, 4)  # (B, 4, 4, 384) -> a 4x4 map


def _convnet():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, N))


def test_compiled_model_with_automatic_discovery():
    torch.manual_seed(0)
    model = _convnet()
    compiled = torch.compile(model, backend="aot_eager")
    x, y, q = torch.randn(4, 3, 8, 8), torch.randint(0, N, (4,)), torch.rand(4)
    with pytest.warns(FeatureLayerWarning, match="'5'"):
        out = masked_forward(compiled, x, y, q, seed=0)
    out.loss.backward()
    assert model[0].weight.grad.abs().sum() > 0


def test_one_by_one_map_warns_once():
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=N)  # 32x32 -> 1x1 layer4
    x, y, q = torch.randn(2, 3, 32, 32), torch.randint(0, N, (2,)), torch.rand(2)
    with pytest.warns(FeatureLayerWarning, match="is 1x1 for 32x32 images"):
        masked_forward(model, x, y, q, seed=0, feature_layer="layer4")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureLayerWarning)
        masked_forward(model, x, y, q, seed=0, feature_layer="layer4")
