"""Plain cross-entropy on the noisy labels: the baseline every other method must beat."""
from __future__ import annotations

import torch

from .base import Method


class CE(Method):
    name = "ce"

    def __init__(self, ctx):
        super().__init__(ctx)
        (self.net,) = self.build_branches(1)

    def nets(self):
        return [self.net]

    def train_epoch(self, epoch, bar=None):
        self.net.train()
        total, count = 0.0, 0
        for idx in self.batches(torch.arange(self.ctx.n), self.hp["batch_size"]):
            total += self.warmup_step(self.net, self.opts[0], idx) * len(idx)
            count += len(idx)
            if bar is not None:
                bar.update(1)
        return {"loss": total / max(count, 1)}
