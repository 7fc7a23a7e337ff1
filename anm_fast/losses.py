"""Soft-target cross-entropy: the loss ANM's modulated (softened) targets are trained with."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_cross_entropy"]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                       reduction: str = "mean") -> torch.Tensor:
    """-sum_c t_c log softmax(logits)_c per sample.

    logits:  (B, N) of any float dtype; the log-softmax runs in float32 (float64 stays float64),
             so fp16/bf16 logits under autocast lose no precision in the loss.
    targets: (B, N) soft targets (rows on the simplex), or (B,) class indices.
    reduction: "mean" (over the batch), "sum" or "none" (a (B,) tensor).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, N), got shape {tuple(logits.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    opmath = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = F.log_softmax(logits.to(opmath), dim=1)
    if not targets.dtype.is_floating_point:
        if tuple(targets.shape) != (logits.shape[0],):
            raise ValueError(f"class-index targets must be (B,) = ({logits.shape[0]},), got "
                             f"{tuple(targets.shape)}")
        per_sample = -logp.gather(1, targets.long()[:, None])[:, 0]
    else:
        if targets.shape != logits.shape:
            raise ValueError(f"soft targets must have the logits' shape {tuple(logits.shape)}, "
                             f"got {tuple(targets.shape)}")
        per_sample = -(targets.to(opmath) * logp).sum(dim=1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()
