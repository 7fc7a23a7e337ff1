"""The pieces that plug ANM (anm_fast.masked_forward) into a training method."""
from __future__ import annotations

import torch


def make_decoder(method, net) -> torch.nn.Module:
    """A reconstruction decoder for `net`'s feature map (hyper-parameter decoder: auto or sanm),
    its shape read from one look at two training images."""
    from ...masked import capture_features
    from ...nn import ReconstructionDecoder

    x = method.images(torch.arange(min(2, method.ctx.n)), aug=False)
    features = tuple(capture_features(net, x, probe=True).fmap.shape[1:])
    kind = method.hp.get("decoder", "auto")
    if kind == "sanm":  # the release's 4 -> 10 -> 15 -> 32 decoder (CIFAR, ResNet-18)
        dec = ReconstructionDecoder.sanm_cifar(features, tuple(x.shape[1:]))
    elif kind == "auto":
        dec = ReconstructionDecoder.for_shapes(features, tuple(x.shape[1:]))
    else:
        raise ValueError(f"unknown decoder {kind!r}: auto or sanm")
    dec = dec.to(method.ctx.device)
    if method.ctx.channels_last:
        dec = dec.to(memory_format=torch.channels_last)
    return dec


def draw_seed(method) -> int:
    """The ANM box seed of one step, from the method's generator (checkpointed: exact resume)."""
    return int(torch.randint(0, 2**62, (), generator=method.gen))


def masked(method, net, decoder, x, targets, quality, sample_ids):
    from ...masked import masked_forward

    with method.autocast():
        return masked_forward(net, x, targets, quality.clamp(0, 1).float(), decoder=decoder,
                              config=method.anm_cfg, recon_weight=method.hp["recon_weight"],
                              seed=draw_seed(method), sample_ids=sample_ids.to(x.device))


# Ablation switches (hyper-parameters, all on by default): which parts of ANM a run keeps.
PARTS = ("anm_max_copy", "anm_min_copy", "anm_soften", "anm_recon")


def part_on(method, name: str) -> bool:
    return bool(method.hp.get(name, True))


def wants_decoder(method) -> bool:
    """The reconstruction part: no decoder is built (or trained) when it is switched off."""
    return part_on(method, "anm_recon")


def kept_copies(method):
    """Which erased copies join training: 0 = max-erased, 1 = min-erased."""
    return [c for c, name in enumerate(("anm_max_copy", "anm_min_copy")) if part_on(method, name)]


def erased_parts(method, res, targets):
    """(erased images, their targets) of a masked_forward result, with the ablation switches
    applied: only the kept copies, and the un-softened `targets` when label softening is off.
    Rows: the kept copies one after the other, each in batch order."""
    er = res.mask.erased.detach()
    B = len(er) // 2
    # the softened targets of one copy (both copies share them), or the targets as given
    te = res.mask.targets if part_on(method, "anm_soften") else targets
    te = te.detach().float()
    copies = kept_copies(method)
    if not copies:
        return er[:0], te[:0]
    return (torch.cat([er[c * B:(c + 1) * B] for c in copies]), te.repeat(len(copies), 1))


def ablated_loss(method, res, targets):
    """masked_forward's total loss with the ablation switches applied (the single-network ANM
    method): the clean loss, the erased loss over the kept copies (targets un-softened when
    softening is off) and the reconstruction loss when that part is on."""
    if all(part_on(method, p) for p in PARTS):
        return res.loss
    from ...losses import soft_cross_entropy

    B = len(res.logits)
    te = res.targets_erased if part_on(method, "anm_soften") else targets.repeat(2, 1)
    loss = res.loss_clean
    copies = kept_copies(method)
    if copies:
        rows = torch.cat([torch.arange(c * B, (c + 1) * B) for c in copies]).to(te.device)
        loss = loss + soft_cross_entropy(res.logits_erased[rows].float(), te[rows].float())
    if part_on(method, "anm_recon"):
        loss = loss + method.hp["recon_weight"] * res.loss_recon
    return loss


def masked_step_inputs(method, net, decoder, x, tx, wx, idx_x, u, tu, wu, idx_u):
    """Erased copies of a labeled and an unlabeled batch with their modulated targets, for MixUp,
    and the reconstruction loss (None when that part is off); one masked_forward call for both
    batches."""
    Bx, B = len(x), len(x) + len(u)
    t = torch.cat([tx, tu])
    res = masked(method, net, decoder, torch.cat([x, u]), t, torch.cat([wx, wu]),
                 torch.cat([idx_x, idx_u]))
    er, te = erased_parts(method, res, t)
    k = len(er) // B  # kept copies
    rows_x = torch.cat([torch.arange(c * B, c * B + Bx) for c in range(k)]).to(er.device) \
        if k else torch.zeros(0, dtype=torch.int64, device=er.device)
    rows_u = torch.cat([torch.arange(c * B + Bx, (c + 1) * B) for c in range(k)]).to(er.device) \
        if k else torch.zeros(0, dtype=torch.int64, device=er.device)
    recon = res.loss_recon.float() if decoder is not None else None
    return er[rows_x], te[rows_x], er[rows_u], te[rows_u], recon
