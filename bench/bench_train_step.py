"""Training-step overhead: an ANM step against a plain cross-entropy step over the same 3B images.

Variants (same model, optimiser, batch B of 32x32 CIFAR-size images, CPU fp32):
  ce        plain cross-entropy step over 3B images (one forward/backward of a 3B batch)
  anm       anm_fast.masked_forward: clean pass (B) -> fused anm_mask -> one pass over the 2B erased
            images whose features feed both the classifier and the reconstruction decoder
  released  the released composition: clean pass (B) -> bench/released.py per-image masking ->
            erased pass (2B) for the classifier -> a second, separate erased pass (2B) for the
            decoder
Each includes zero_grad, backward and an SGD step. report.py prints anm/ce and released/ce.
Skipped cleanly when anm_fast.models / anm_fast.masked / anm_fast.nn are not available.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _common import SMOKE, optional, record, rounds
import released

models = optional("anm_fast.models")
masked = optional("anm_fast.masked")
nnmod = optional("anm_fast.nn")

B = 4 if SMOKE else 128
MODELS = ["small_cnn", "preact_resnet18"]
VARIANTS = ["ce", "anm", "released"]


def _build(name):
    if name == "small_cnn":
        model = models.SmallCNN(num_classes=10, in_channels=3)
    else:
        model = models.PreActResNet18(num_classes=10)
    return model


def _fmap_shape(model, x):
    return tuple(masked.capture_features(model, x[:2], probe=True).fmap.shape[1:])


def _soft_ce(logits, t):
    return -(t * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_name", MODELS)
def test_train_step(benchmark, model_name, variant):
    if models is None or masked is None or nnmod is None:
        pytest.skip("anm_fast.models / anm_fast.masked / anm_fast.nn not available")
    torch.manual_seed(0)
    model = _build(model_name)
    model.train()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(B, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (B,), generator=g)
    q = torch.rand(B, generator=g)
    x3 = torch.randn(3 * B, 3, 32, 32, generator=g)
    y3 = torch.randint(0, 10, (3 * B,), generator=g)
    decoder = nnmod.ReconstructionDecoder.for_shapes(_fmap_shape(model, x), (3, 32, 32))
    params = list(model.parameters()) + list(decoder.parameters())
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    onehot = F.one_hot(y, 10).float()

    def ce_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x3), y3)
        loss.backward()
        opt.step()

    def anm_step():
        opt.zero_grad(set_to_none=True)
        out = masked.masked_forward(model, x, y, q, decoder=decoder, num_classes=10)
        out.loss.backward()
        opt.step()

    def released_step():
        opt.zero_grad(set_to_none=True)
        logits, _, fmap = masked.capture_features(model, x)
        erased, t_mod = released.released_anm(x, fmap.detach(), onehot, q, rng)
        logits_er = model(erased)                          # classification pass
        _, _, fmap_er = masked.capture_features(model, erased)  # separate reconstruction pass
        rec = decoder(fmap_er)
        loss_rec = F.mse_loss(rec[:B], x) + F.mse_loss(rec[B:], x)
        loss = (F.cross_entropy(logits, y) + _soft_ce(logits_er, t_mod.repeat(2, 1))
                + 0.02 * loss_rec)
        loss.backward()
        opt.step()

    fn = {"ce": ce_step, "anm": anm_step, "released": released_step}[variant]
    record(benchmark, op="train_step", impl=variant, model=model_name, dtype="fp32",
           device="cpu", shape=f"cifar-B{B}", B=B, images=3 * B, bytes=0)
    heavy = model_name == "preact_resnet18"
    benchmark.pedantic(fn, rounds=rounds(3 if heavy else 7), warmup_rounds=1)
