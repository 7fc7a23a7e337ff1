"""The bundled models: shapes, declared feature layers, no weight downloads."""
import pytest
import torch

from anm_fast import models
from anm_fast.masked import capture_features


def _feature_shape(model, x):
    """Logits and the declared feature layer's output (model.anm_feature_layer)."""
    logits, _, fmap = capture_features(model, x)
    return logits, fmap


@pytest.mark.parametrize("in_channels", [1, 3])
def test_preact_resnet18_shapes(in_channels):
    model = models.PreActResNet18(num_classes=7, in_channels=in_channels, width=8).eval()
    logits, fmap = _feature_shape(model, torch.randn(2, in_channels, 32, 32))
    assert model.anm_feature_layer == "layer4"
    assert logits.shape == (2, 7)
    assert fmap.shape == (2, 64, 4, 4)


def test_preact_resnet18_default_is_released_size():
    model = models.PreActResNet18()
    # 11.17M parameters: the CIFAR PreAct ResNet-18 of DivideMix / the ANM release.
    assert 11.0e6 < sum(p.numel() for p in model.parameters()) < 11.3e6


def test_small_cnn_on_digits():
    model = models.SmallCNN(num_classes=10, in_channels=1, width=8).eval()
    logits, fmap = _feature_shape(model, torch.randn(3, 1, 8, 8))
    assert model.anm_feature_layer == "features"
    assert logits.shape == (3, 10)
    assert fmap.shape == (3, 16, 4, 4)


@pytest.mark.parametrize("name,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_torchvision_resnet_without_download(name, channels):
    model = models.torchvision_resnet(name, num_classes=5, cifar_stem=True).eval()
    assert model.anm_feature_layer == "layer4"
    logits, fmap = _feature_shape(model, torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 5)
    assert fmap.shape == (1, channels, 4, 4)


def test_torchvision_resnet_grey_standard_stem():
    model = models.torchvision_resnet("resnet18", num_classes=3, in_channels=1).eval()
    logits, fmap = _feature_shape(model, torch.randn(1, 1, 64, 64))
    assert logits.shape == (1, 3) and fmap.shape == (1, 512, 2, 2)


def test_build_model_by_name_and_errors():
    assert isinstance(models.build_model("small_cnn", 4, in_channels=1), models.SmallCNN)
    assert isinstance(models.build_model("preact_resnet18", 4, width=8), models.PreActResNet18)
    assert models.build_model("resnet18", 4).fc.out_features == 4
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("vgg", 4)
    with pytest.raises(ValueError, match="resnet18"):
        models.torchvision_resnet("resnet34")
