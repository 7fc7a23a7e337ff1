"""ReconstructionDecoder shapes and design; the ANM module: construction, call, state_dict."""
import io

import pytest
import torch
from torch import nn

from anm_fast import ANMConfig, MaskedOutput, masked_forward, models
from anm_fast.nn import ANM, ReconstructionDecoder


@pytest.mark.parametrize("feature_shape,image_shape", [
    ((512, 4, 4), (3, 32, 32)), ((2048, 7, 7), (3, 224, 224)), ((16, 4, 4), (1, 8, 8)),
    ((512, 1, 1), (3, 32, 32)), ((64, 7, 5), (3, 32, 30)), ((8, 3, 3), (3, 3, 3)),
    ((32, 2, 3), (1, 28, 28)),
])
def test_decoder_maps_any_feature_shape_to_the_image(feature_shape, image_shape):
    dec = ReconstructionDecoder.for_shapes(feature_shape, image_shape)
    out = dec(torch.zeros(2, *feature_shape[:1], *feature_shape[1:]))
    assert out.shape == (2, *image_shape)


def test_decoder_default_is_the_released_linear_design():
    dec = ReconstructionDecoder.for_shapes((512, 4, 4), (3, 32, 32))
    convs = list(dec.layers)
    assert len(convs) == 3 and all(isinstance(m, nn.ConvTranspose2d) for m in convs)
    assert [(m.in_channels, m.out_channels) for m in convs] == [(512, 256), (256, 128), (128, 3)]
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in convs)
    # No non-linearity: D is affine, so D(2f) - D(f) == D(f) - D(0).
    f = torch.randn(1, 512, 4, 4)
    z = torch.zeros_like(f)
    torch.testing.assert_close(dec(2 * f) - dec(f), dec(f) - dec(z), rtol=1e-4, atol=1e-4)


def test_decoder_options_and_errors():
    dec = ReconstructionDecoder.for_shapes((16, 4, 4), (1, 8, 8), hidden=(12, 6),
                                           activation=nn.ReLU)
    kinds = [type(m).__name__ for m in dec.layers]
    assert kinds == ["ConvTranspose2d", "ReLU", "ConvTranspose2d", "ReLU", "ConvTranspose2d"]
    assert dec.layers[0].out_channels == 12
    with pytest.raises(ValueError, match="only upsamples"):
        ReconstructionDecoder.for_shapes((8, 16, 16), (3, 8, 8))
    with pytest.raises(ValueError, match="hidden"):
        ReconstructionDecoder.for_shapes((8, 4, 4), (3, 8, 8), hidden=(4,))


def _anm(**kwargs):
    return ANM(models.SmallCNN(num_classes=5, in_channels=1, width=4), 5, (1, 8, 8), **kwargs)


def test_anm_builds_decoder_without_touching_the_model():
    model = models.PreActResNet18(num_classes=5, width=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    anm = ANM(model, num_classes=5, image_size=32)
    assert anm.feature_layer == "layer4" and anm.feature_shape == (32, 4, 4)
    assert anm.image_shape == (3, 32, 32) and model.training
    for k, v in model.state_dict().items():  # the probe ran in eval mode: no BN update
        torch.testing.assert_close(v, before[k])
    names = {n for n, _ in anm.named_parameters()}
    assert any(n.startswith("decoder.") for n in names) and any(n.startswith("model.") for n in names)


def test_anm_call_equals_masked_forward():
    anm = _anm(recon_weight=0.3).eval()
    x, y, q = torch.randn(3, 1, 8, 8), torch.randint(0, 5, (3,)), torch.rand(3)
    out = anm(x, y, q, seed=9)
    assert isinstance(out, MaskedOutput)
    ref = masked_forward(anm.model, x, y, q, decoder=anm.decoder, recon_weight=0.3, seed=9)
    torch.testing.assert_close(out.loss, ref.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in anm.parameters())


def test_anm_state_dict_round_trip():
    cfg = ANMConfig.sanm_official(area_hi=0.09)
    src = _anm(config=cfg, recon_weight=0.3)
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    dst = _anm()
    assert dst.config != cfg
    dst.load_state_dict(state)
    assert dst.config == cfg and dst.recon_weight == 0.3 and dst.feature_layer == "features"
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, msg=n)
    x, y = torch.randn(2, 1, 8, 8), torch.randint(0, 5, (2,))
    src.eval(), dst.eval()
    torch.testing.assert_close(src(x, y, 0.2, seed=1).loss, dst(x, y, 0.2, seed=1).loss)


def test_anm_errors():
    with pytest.raises(ValueError, match=r"\(B, 7\)"):
        ANM(models.SmallCNN(num_classes=5, in_channels=1, width=4), 7, (1, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        ANM(models.SmallCNN(num_classes=5, in_channels=1, width=4), 5, (1, 8, 8), in_channels=3)
    anm = _anm()
    with pytest.raises(ValueError, match="built for"):
        anm(torch.randn(2, 1, 16, 16), torch.zeros(2, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="checkpoint"):
        ANM(models.SmallCNN(num_classes=5, in_channels=1, width=4), 5, (1, 16, 16)).load_state_dict(
            anm.state_dict(), strict=False)


def test_anm_with_discovered_layer_and_compiled_model():
    torch._dynamo.reset()
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 5))
    anm = ANM(torch.compile(net, backend="eager"), 5, (1, 8, 8))
    assert anm.feature_layer == "1" and anm.feature_shape == (4, 8, 8)
    out = anm(torch.randn(2, 1, 8, 8), torch.randint(0, 5, (2,)), 0.5, seed=0)
    out.loss.backward()
    assert net[0].weight.grad is not None
