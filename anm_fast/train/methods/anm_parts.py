"""The pieces that plug ANM (anm_fast.masked_forward) into a training method."""
from __future__ import annotations

import torch


def feature_map(net, x: torch.Tensor) -> torch.Tensor:
    """The output of the model's ANM feature layer for `x`, by one eval-mode, no-grad forward
    (the model's train/eval mode is restored afterwards)."""
    layer = net.get_submodule(net.anm_feature_layer)
    seen = {}
    def hook(module, inputs, output):  # returns None: a hook's return value replaces the output
        seen["f"] = output.detach()

    handle = layer.register_forward_hook(hook)
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
        net.train(was)
    return seen["f"]


def feature_shape(net, x: torch.Tensor):
    """(K, h, w) of the model's ANM feature layer for images like `x`."""
    return tuple(feature_map(net, x).shape[1:])


def make_decoder(method, net) -> torch.nn.Module:
    from ...nn import ReconstructionDecoder

    x = method.images(torch.arange(min(2, method.ctx.n)), aug=False)
    dec = ReconstructionDecoder.for_shapes(feature_shape(net, x), tuple(x.shape[1:]))
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


def erased_images(res):
    """The (2B, C, H, W) erased copies (max-erased then min-erased) of a masked_forward result."""
    for name in ("mask", "mask_batch", "batch"):
        m = getattr(res, name, None)
        if m is not None and hasattr(m, "erased"):
            return m.erased
    if hasattr(res, "erased"):
        return res.erased
    raise AttributeError("masked_forward's result carries no erased images")


def masked_step_inputs(method, net, decoder, x, tx, wx, idx_x, u, tu, wu, idx_u):
    """Erased copies of a labeled and an unlabeled batch with their modulated targets, for MixUp,
    and the reconstruction loss; one masked_forward call for both batches."""
    Bx = len(x)
    res = masked(method, net, decoder, torch.cat([x, u]), torch.cat([tx, tu]),
                 torch.cat([wx, wu]), torch.cat([idx_x, idx_u]))
    er = erased_images(res).detach()
    B = len(er) // 2
    te = res.targets_erased.detach().float()
    if len(te) == 2 * B:  # targets given per erased copy
        te = te[:B]
    ex = torch.cat([er[:Bx], er[B:B + Bx]])
    eu = torch.cat([er[Bx:B], er[B + Bx:]])
    etx = torch.cat([te[:Bx], te[:Bx]])
    etu = torch.cat([te[Bx:], te[Bx:]])
    return ex, etx, eu, etu, res.loss_recon.float()
