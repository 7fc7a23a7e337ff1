"""The released SANM network's output: probabilities instead of logits (recipe switch
`softmax_in_net`)."""
from __future__ import annotations

import torch


class SoftmaxOutput(torch.nn.Module):
    """A classifier whose output is softmax(logits): the released SANM network, whose every
    consumer then applies softmax / log-softmax / cross-entropy again to those probabilities.
    `inner` keeps the classifier; its ANM feature layer is reached through "inner.<layer>"."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        layer = getattr(inner, "anm_feature_layer", None)
        if layer is not None:
            self.anm_feature_layer = f"inner.{layer}"

    def forward(self, x):
        return self.inner(x).float().softmax(1)
