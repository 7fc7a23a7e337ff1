"""masked_forward: gradients, equality with the hand-written composition of the ops, two forward
passes, feature-layer discovery, AMP / channels_last / torch.compile, quality, errors."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anm_fast
from anm_fast import masked_forward, models
from anm_fast.masked import FeatureLayerWarning, find_feature_layer
from anm_fast.nn import ReconstructionDecoder

B, N = 4, 10


def _small(width=8):
    return models.SmallCNN(num_classes=N, in_channels=1, width=width)


def _batch(B=B, C=1, H=8, W=8):
    return torch.randn(B, C, H, W), torch.randint(0, N, (B,)), torch.rand(B)


def _decoder(width=8, C=1, H=8):
    return ReconstructionDecoder.for_shapes((2 * width, H // 2, H // 2), (C, H, H))


def _forward_capturing(model, layer, x):
    got = []
    handle = layer.register_forward_hook(lambda m, i, o: got.append(o))
    try:
        return model(x), got[-1]
    finally:
        handle.remove()


class _CountForwards:
    def __init__(self, model):
        self.count = 0
        self.handle = model.register_forward_pre_hook(self._pre)

    def _pre(self, module, inputs):
        self.count += 1


def test_gradients_reach_model_and_decoder_but_not_boxes():
    model, dec = _small(), _decoder()
    x, y, q = _batch()
    out = masked_forward(model, x, y, q, decoder=dec, seed=0)
    out.loss.backward()
    for name, p in list(model.named_parameters()) + list(dec.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for field in ("box_max", "box_min", "peak_max", "peak_min", "ratio", "fill_max", "fill_min",
                  "energy"):
        assert not getattr(out.mask, field).requires_grad, field
    assert not out.mask.box_max.is_floating_point()


def test_gradient_to_x_skips_the_erased_boxes():
    model = _small().eval()
    x, y, q = _batch()
    x.requires_grad_(True)
    out = masked_forward(model, x, y, q, seed=1)
    out.mask.erased.retain_grad()
    out.loss_erased.backward()
    g = out.mask.erased.grad
    keep = torch.ones(2 * B, 1, 8, 8)
    for i, box in enumerate(torch.cat((out.mask.box_max, out.mask.box_min))):
        y0, x0, bh, bw = box.tolist()
        keep[i, :, y0:y0 + bh, x0:x0 + bw] = 0
    torch.testing.assert_close(x.grad, (g * keep)[:B] + (g * keep)[B:])


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("hard", [True, False])
def test_equals_hand_written_composition(train, hard):
    torch.manual_seed(0)
    model, dec = _small(), _decoder()
    model.train(train)
    x, y, q = _batch()
    targets = y if hard else torch.softmax(torch.randn(B, N), 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = masked_forward(model, x, targets, q, decoder=dec, seed=7, recon_weight=0.3)

    model.load_state_dict(state)  # BatchNorm statistics as before the call
    logits, fmap = _forward_capturing(model, model.features, x)
    mask = anm_fast.anm_mask(x, fmap, targets, q, seed=7, num_classes=N)
    logits_e, fmap_e = _forward_capturing(model, model.features, mask.erased)
    recon = dec(fmap_e)
    soft = F.one_hot(y, N).float() if hard else targets
    loss_clean = -(soft * F.log_softmax(logits, 1)).sum(1).mean()
    loss_erased = -(mask.targets.repeat(2, 1) * F.log_softmax(logits_e, 1)).sum(1).mean()
    loss_recon = F.mse_loss(recon[:B], x) + F.mse_loss(recon[B:], x)

    for a, b in zip(out.mask, mask):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.logits_erased, logits_e)
    torch.testing.assert_close(out.targets_erased, mask.targets.repeat(2, 1))
    torch.testing.assert_close(out.reconstruction, recon)
    torch.testing.assert_close(out.loss_clean, loss_clean)
    torch.testing.assert_close(out.loss_erased, loss_erased)
    torch.testing.assert_close(out.loss_recon, loss_recon)
    torch.testing.assert_close(out.loss, loss_clean + loss_erased + 0.3 * loss_recon)
    if hard:
        torch.testing.assert_close(out.loss_clean, F.cross_entropy(logits, y))


def _released_composition(model, dec, x, y, q, seed):
    """The released order: clean pass, erased pass for the logits, erased pass again for the
    decoder's features."""
    logits, fmap = _forward_capturing(model, model.features, x)
    mask = anm_fast.anm_mask(x, fmap, y, q, seed=seed, num_classes=N)
    logits_e = model(mask.erased)
    _, fmap_e = _forward_capturing(model, model.features, mask.erased)
    return logits, logits_e, dec(fmap_e)


def test_two_forward_passes_instead_of_three():
    model, dec = _small().eval(), _decoder()
    x, y, q = _batch()
    counter = _CountForwards(model)
    out = masked_forward(model, x, y, q, decoder=dec, seed=2)
    assert counter.count == 2
    counter.count = 0
    logits, logits_e, recon = _released_composition(model, dec, x, y, q, seed=2)
    assert counter.count == 3
    torch.testing.assert_close(out.logits_erased, logits_e)
    torch.testing.assert_close(out.reconstruction, recon)


def test_discovery_costs_one_forward_without_gradient_once():
    # the first call finds the layer in a no-grad pass of its own (a step's graph must not hold
    # every module's output: compiled in-place updates would break its backward), then it and
    # every later call take two passes
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, N))
    x, y, q = _batch()
    counter = _CountForwards(model)
    with pytest.warns(FeatureLayerWarning, match="'1'"):
        out = masked_forward(model, x, y, q, seed=0)
    assert counter.count == 3 and out.feature_layer == "1"
    counter.count = 0
    masked_forward(model, x, y, q, seed=0)
    assert counter.count == 2


@pytest.mark.parametrize("build,size,expected", [
    (lambda: models.PreActResNet18(num_classes=N, width=4), 32, "layer4"),
    (lambda: models.torchvision_resnet("resnet18", num_classes=N), 32, "layer4"),  # 1x1 map
    (lambda: models.torchvision_resnet("resnet18", num_classes=N), 64, "layer4"),
    (lambda: models.torchvision_resnet("resnet18", num_classes=N, cifar_stem=True), 32, "layer4"),
    (lambda: models.SmallCNN(num_classes=N, in_channels=3, width=4), 8, "features"),
])
def test_automatic_feature_layer(build, size, expected):
    model = build()
    x = torch.randn(2, 3, size, size)
    assert find_feature_layer(model, x) == expected
    assert model.anm_feature_layer == expected  # the models' declared layer agrees


def test_discovery_is_reported_once_and_cached():
    import torchvision
    model = torchvision.models.resnet18(weights=None, num_classes=N)  # no anm_feature_layer
    x, y, q = torch.randn(2, 3, 32, 32), torch.randint(0, N, (2,)), torch.rand(2)
    with pytest.warns(FeatureLayerWarning, match="'layer4'"):
        out = masked_forward(model, x, y, q, seed=0)
    assert out.feature_layer == "layer4"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureLayerWarning)
        assert masked_forward(model, x, y, q, seed=0).feature_layer == "layer4"


def test_explicit_layer_by_name_or_module():
    model = _small().eval()
    x, y, q = _batch()
    a = masked_forward(model, x, y, q, feature_layer="features.5", seed=0)
    b = masked_forward(model, x, y, q, feature_layer=model.features[5], seed=0)
    assert a.feature_layer == b.feature_layer == "features.5"
    assert a.mask.energy.shape == (B, 8, 8)  # features.5 is before the 2x2 pool
    torch.testing.assert_close(a.loss, b.loss)


def test_autocast_bf16():
    model, dec = _small(), _decoder()
    x, y, q = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_forward(model, x, y, q, decoder=dec, seed=0)
    assert out.logits.dtype == torch.bfloat16
    for loss in (out.loss_clean, out.loss_erased, out.loss_recon, out.loss):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    out.loss.backward()
    assert all(p.grad is not None for p in dec.parameters())


def test_channels_last_matches_contiguous():
    model, dec = _small().eval(), _decoder()
    x, y, q = _batch()
    ref = masked_forward(model, x, y, q, decoder=dec, seed=4)
    model = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    out = masked_forward(model, xc, y, q, decoder=dec, seed=4)
    assert out.mask.erased.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.mask.box_max, ref.mask.box_max)
    out.loss.backward()


@pytest.mark.parametrize("discover", [False, True])
def test_compiled_model(discover):
    torch._dynamo.reset()
    model, dec = _small().eval(), _decoder()
    if discover:  # a model without anm_feature_layer: the layer is found on the first call
        model = nn.Sequential(model.features, model.pool, nn.Flatten(), model.classifier)
    layer = None if discover else "features"
    # aot_eager traces the backward too; inductor's code generation would only cost time here.
    compiled = torch.compile(model, backend="eager" if discover else "aot_eager")
    x, y, q = _batch()
    ref = masked_forward(model, x, y, q, feature_layer="0" if discover else layer, decoder=dec,
                         seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureLayerWarning)
        for _ in range(2):  # the second call runs the compiled graph with the cached layer
            out = masked_forward(compiled, x, y, q, feature_layer=layer, decoder=dec, seed=5)
            torch.testing.assert_close(out.loss, ref.loss)
            torch.testing.assert_close(out.mask.box_min, ref.mask.box_min)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_train_mode_updates_batchnorm_twice():
    model = _small().train()
    x, y, q = _batch()
    masked_forward(model, x, y, q, seed=0)
    assert int(model.features[1].num_batches_tracked) == 2


def test_quality_sets_box_size_and_label_softening():
    model = _small().eval()
    x = torch.randn(B, 1, 32, 32)  # room for boxes of several sizes
    y = torch.randint(0, N, (B,))
    clean = masked_forward(model, x, y, torch.ones(B), seed=11)
    noisy = masked_forward(model, x, y, torch.zeros(B), seed=11)
    cfg = anm_fast.ANMConfig()
    # s = U(area_lo, area_hi) + quality_gain * (1 - q): same draw, quality term added.
    torch.testing.assert_close(noisy.mask.ratio - clean.mask.ratio,
                               torch.full((B,), cfg.quality_gain))
    area = lambda b: b[:, 2] * b[:, 3]
    assert (area(noisy.mask.box_max) >= area(clean.mask.box_max)).all()
    assert area(noisy.mask.box_max).sum() > area(clean.mask.box_max).sum()
    for out in (clean, noisy):
        s = out.mask.ratio
        t = out.targets_erased[:B]
        top = t.gather(1, y[:, None])[:, 0]
        torch.testing.assert_close(top, 1 - s)                       # the top class gives s ...
        others = (t.sum(1) - top) / (N - 1)
        torch.testing.assert_close(others, s / (N - 1))              # ... spread over the rest
        torch.testing.assert_close(out.targets_erased[B:], t)        # both copies share t'
    assert (noisy.targets_erased.gather(1, y.repeat(2)[:, None]) <
            clean.targets_erased.gather(1, y.repeat(2)[:, None])).all()


def test_scalar_quality_seed_and_sample_ids():
    model = _small().eval()
    x, y, _ = _batch()
    a = masked_forward(model, x, y, 0.5, seed=3, sample_ids=torch.arange(10, 10 + B))
    b = masked_forward(model, x, y, torch.full((B,), 0.5), seed=3,
                       sample_ids=torch.arange(10, 10 + B))
    torch.testing.assert_close(a.loss, b.loss)
    torch.manual_seed(1)
    c = masked_forward(model, x, y, 0.5)
    torch.manual_seed(1)
    d = masked_forward(model, x, y, 0.5)
    assert int(c.mask.seed) == int(d.mask.seed)


def test_custom_loss_fn():
    model = _small().eval()
    x, y, q = _batch()
    calls = []

    def mse(logits, soft):
        calls.append(soft.shape)
        return ((logits.float().softmax(1) - soft) ** 2).sum(1).mean()

    out = masked_forward(model, x, y, q, loss_fn=mse, seed=0)
    assert calls == [(B, N), (2 * B, N)]
    torch.testing.assert_close(out.loss, out.loss_clean + out.loss_erased)
    assert float(out.loss_recon) == 0.0 and out.reconstruction is None


def test_clear_errors():
    model = _small().eval()
    x, y, q = _batch()
    counter = _CountForwards(model)
    with pytest.raises(ValueError, match="'layer9' does not exist"):
        masked_forward(model, x, y, q, feature_layer="layer9")
    with pytest.raises(ValueError, match=r"\(B, D, h, w\)"):
        masked_forward(model, x, y, q, feature_layer="classifier")  # (B, N): not 4-D
    with pytest.raises(ValueError, match="N = 10"):  # width checked against the logits
        masked_forward(model, x, torch.rand(B, N + 1).softmax(1), q)
    counter.count = 0
    # Shape errors found before any forward pass:
    with pytest.raises(ValueError, match="num_classes"):
        masked_forward(model, x, torch.rand(B, N + 1).softmax(1), q, num_classes=N)
    with pytest.raises(ValueError, match="class-index targets"):
        masked_forward(model, x, y[:2], q)
    with pytest.raises(ValueError, match="quality"):
        masked_forward(model, x, y, q[:3])
    assert counter.count == 0
    with pytest.raises(ValueError, match="for_shapes"):
        masked_forward(model, x, y, q, decoder=nn.Identity())
    with pytest.raises(TypeError, match="feature_layer"):
        masked_forward(model, x, y, q, feature_layer=3)
    with pytest.raises(ValueError, match="not part of the model"):
        masked_forward(model, x, y, q, feature_layer=nn.ReLU())
