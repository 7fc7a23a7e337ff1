"""ANM on a single network (no co-training): the lightest way to use the regulariser.

After a cross-entropy warm-up, every epoch a GMM over per-sample losses gives each training sample
a label quality q (docs/SPEC.md, "5. Label quality"). Each step trains on refined targets
q * y + (1 - q) * sharpen(p) (p: the network's current prediction on the same images), and
masked_forward adds the max- and min-erased copies of those images with the refined targets
modulated, plus the reconstruction loss. Refinement matters: on hard noisy labels the erased
copies alone do not help (the quick digits prototype that motivated this method showed it).
"""
from __future__ import annotations

import torch

from .anm_parts import ablated_loss, masked
from .base import Method, sharpen


class ANM(Method):
    name = "anm"
    uses_anm = True
    # a guessing forward, the clean and the two erased batches forward + backward, the decoder
    train_passes = 4.5

    def __init__(self, ctx):
        super().__init__(ctx)
        (self.net,) = self.build_branches(1)

    @property
    def decoder(self):
        return self.decoder_of(0)

    def nets(self):
        return [self.net]

    def train_epoch(self, epoch, bar=None):
        hp = self.hp
        self.net.train()
        if epoch < hp["warmup"]:
            losses = []
            for idx in self.batches(torch.arange(self.ctx.n), hp["batch_size"]):
                losses.append(self.warmup_step(self.net, self.opts[0], idx))
                if bar is not None:
                    bar.update(1)
            return {"loss": sum(losses) / max(len(losses), 1)}
        self.quality = self.clean_posterior(self.net, self.history_of(0))
        sums = {"loss": 0.0, "clean": 0.0, "erased": 0.0, "recon": 0.0}
        steps = 0
        for idx in self.batches(torch.arange(self.ctx.n), hp["batch_size"]):
            x = self.images(idx)
            y = self.one_hot(self.labels(idx))
            q = self.quality[idx.to(self.quality.device)].to(self.ctx.device).float()
            with torch.no_grad(), self.autocast():
                self.net.eval()  # the guess must not move BatchNorm statistics
                p = self.net(x).float().softmax(1)
                self.net.train()
            t = q[:, None] * y + (1 - q[:, None]) * sharpen(p, hp["T"])
            res = masked(self, self.net, self.decoder, x, t, q, idx)
            loss = ablated_loss(self, res, t).float()  # res.loss unless a part is off
            objective = loss * self.slice_weight  # (see Method.batches)
            if hp.get("prior_penalty", True):
                penalty = self.prior_penalty(res.logits)
                loss, objective = loss + penalty, objective + penalty
            self.opts[0].zero_grad(set_to_none=True)
            objective.backward()
            self.opts[0].step()
            sums["loss"] += float(loss.detach())
            sums["clean"] += float(res.loss_clean.detach())
            sums["erased"] += float(res.loss_erased.detach())
            sums["recon"] += float(res.loss_recon.detach())
            steps += 1
            if bar is not None:
                bar.update(1)
        return {k: v / max(steps, 1) for k, v in sums.items()}
