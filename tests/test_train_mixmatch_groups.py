"""DivideMix's MixMatch groups: the released six groups per branch, their targets and weights,
and the ANM ablation switches (max-erased copy, min-erased copy, label softening,
reconstruction)."""
import json

import numpy as np
import pytest
import torch

from anm_fast.train.data import DataBundle
from anm_fast.train.methods import Context, get_method
from anm_fast.train.methods.base import sharpen
from anm_fast.train.presets import resolve
from anm_fast.train.recipes import recipe_hp

N, B = 10, 4


def method(name="dividemix-anm", n=24, **hp):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = np.arange(n) % N
    data = DataBundle("cifar10", x, y, x[:8], y[:8], N, (0.5,) * 3, (0.25,) * 3, pad=4, flip=True)
    over = dict(model="small_cnn", width=4, batch_size=B, sync_bn=False)
    over.update(hp)
    ctx = Context(data=data, y_noisy=torch.as_tensor(y), device=torch.device("cpu"), seed=0,
                  noise_kind="sym", noise_rate=0.5,
                  hp=resolve(name, "cifar10", "sym", 0.5, over))
    torch.manual_seed(0)
    return get_method(name)(ctx)


def groups(m, w_value=1.0):
    idx_x, idx_u = torch.arange(B), torch.arange(B, 2 * B)
    w_all = torch.full((m.ctx.n,), w_value)
    m.begin_epoch(m.hp["warmup"])
    return m.mixmatch_groups(m.net1, m.net2, 0, idx_x, idx_u, w_all, w_all)


def released(**extra):
    hp = recipe_hp("sanm-release", "cifar10")
    hp.update(model="small_cnn", width=4, decoder="auto", softmax_in_net=False)
    hp.update(extra)
    return hp


def test_released_views_make_six_groups_per_branch_with_their_targets():
    m = method(**released())
    gx, tx, gu, tu, recon = groups(m, w_value=1.0)
    assert len(gx) == len(tx) == len(gu) == len(tu) == 6
    assert all(g.shape == (B, 3, 32, 32) for g in gx + gu)
    assert all(t.shape == (B, N) for t in tx + tu)
    # w = 1 (fully trusted labels): the refined target is the one-hot label itself
    onehot = torch.nn.functional.one_hot(torch.arange(B) % N, N).float()
    for t in tx[:4]:
        assert torch.allclose(t, onehot)
    # the four augmented views differ from one another (AutoAugment x2, RandAugment x2)
    assert not torch.equal(gx[0], gx[1]) and not torch.equal(gx[2], gx[3])
    # the erased copies: softened targets (the top class gives mass away), rows sum to 1
    for t in tx[4:] + tu[4:]:
        assert torch.allclose(t.sum(1), torch.ones(B), atol=1e-5)
    assert (tx[4].max(1).values < 1).all()
    assert torch.equal(tu[0], tu[1]) and torch.equal(tu[0], tu[3])
    assert recon is not None and recon.requires_grad


def test_default_views_make_four_groups_and_weights_mix_the_prediction():
    m = method()
    gx, tx, gu, tu, _ = groups(m, w_value=0.0)
    assert len(gx) == len(gu) == 4     # two views + max- and min-erased copies
    # w = 0: the target is the sharpened mean prediction, not the label
    assert not torch.allclose(tx[0], torch.nn.functional.one_hot(torch.arange(B) % N, N).float())
    assert torch.allclose(tx[0].sum(1), torch.ones(B), atol=1e-5)


def test_ablation_switches_keep_only_the_chosen_parts():
    full = groups(method())
    no_max = groups(method(anm_max_copy=False))
    no_min = groups(method(anm_min_copy=False))
    assert len(no_max[0]) == len(no_min[0]) == 3
    assert torch.equal(no_max[0][2], full[0][3])   # the min-erased copy is what is left
    assert torch.equal(no_min[0][2], full[0][2])   # the max-erased copy
    assert torch.equal(no_max[1][2], full[1][3])
    neither = groups(method(anm_max_copy=False, anm_min_copy=False))
    assert len(neither[0]) == 2 and neither[4] is not None   # reconstruction still trains
    unsoft = groups(method(anm_soften=False))
    assert torch.equal(unsoft[0][2], full[0][2])             # same erased images
    assert torch.equal(unsoft[1][2], unsoft[1][0])           # targets: the clean images'
    assert not torch.equal(full[1][2], full[1][0])
    m = method(anm_recon=False)
    assert m.decoders == [] and groups(m)[4] is None


def test_ablation_flags_reach_a_run(tmp_path):
    from anm_fast.train.cli import main

    out = tmp_path / "r"
    assert main(["--epochs", "2", "--warmup", "1", "--method", "dividemix-anm",
                 "--train-subset", "200", "--no-progress", "--no-plots", "--threads", "1",
                 "--no-anm-recon", "--no-anm-min-copy", "--no-anm-soften", "--out",
                 str(out)]) == 0
    hp = json.load(open(out / "run_config.json"))["hp"]
    assert (hp["anm_recon"], hp["anm_min_copy"], hp["anm_soften"]) == (False, False, False)
    rows = [json.loads(l) for l in open(out / "dividemix-anm" / "seed0" / "metrics.jsonl")]
    assert rows[1]["recon1"] == 0.0


def test_softmax_in_net_returns_probabilities_and_keeps_the_feature_layer():
    m = method(softmax_in_net=True)
    p = m.net1(torch.randn(3, 3, 32, 32))
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-5) and (p >= 0).all()
    assert m.net1.anm_feature_layer == "inner.features"
    assert m.net1.get_submodule(m.net1.anm_feature_layer) is m.net1.inner.features


def test_single_network_anm_honours_the_switches():
    from anm_fast.train.methods.anm_parts import ablated_loss, masked

    full, no_max = method("anm"), method("anm", anm_max_copy=False, anm_recon=False)
    assert no_max.decoder is None
    x = full.images(torch.arange(B), aug=False)
    t = torch.nn.functional.one_hot(torch.arange(B) % N, N).float()
    q = torch.ones(B)
    res = masked(full, full.net, full.decoder, x, t, q, torch.arange(B))
    assert ablated_loss(full, res, t) is res.loss
    from anm_fast.losses import soft_cross_entropy

    want = res.loss_clean + soft_cross_entropy(res.logits_erased[B:].float(),
                                               res.targets_erased[B:].float())
    assert torch.allclose(ablated_loss(no_max, res, t), want)



def test_state_round_trips_decoders_and_refuses_other_counts():
    # Method.state_dict holds one reconstruction decoder per network: a checkpoint loads into a
    # run with as many, and a run without the reconstruction part refuses it (it would drop the
    # decoders silently); the other way round a fresh decoder would silently join
    full, again, off = method("anm"), method("anm"), method("anm", anm_recon=False)
    state = full.state_dict()
    for d in again.decoders:
        torch.nn.init.zeros_(d.layers[0].weight)
    again.load_state_dict(state)
    assert len(again.decoders) == 1 and all(
        torch.equal(a.layers[0].weight, b.layers[0].weight)
        for a, b in zip(full.decoders, again.decoders))
    with pytest.raises(ValueError, match="holds 1 reconstruction decoders, this run has 0"):
        off.load_state_dict(state)
    with pytest.raises(ValueError, match="holds 0 reconstruction decoders, this run has 1"):
        full.load_state_dict(off.state_dict())
