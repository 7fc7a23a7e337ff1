"""BatchNorm with batch statistics over the global batch of every rank, on any backend.

torch.nn.SyncBatchNorm does this on GPUs only (it refuses CPU tensors), so a gloo job on CPU would
otherwise normalise each rank's slice by its own statistics: with batch 64 on 2 processes, every
BatchNorm layer sees 32 samples instead of 64 and the run is no longer the single-process run
with the same global batch. `GlobalBatchNorm` all-reduces the per-channel sums twice per training
forward (mean first, then the centred sum of squares: the same two-pass arithmetic as one
process, no E[x^2] - E[x]^2 cancellation) through the autograd-aware
`distributed.all_reduce_sum`, whose backward all-reduces the gradients, so every rank's input
gradient is the one a single process would compute for its samples.

Eval mode, and training outside torch.distributed, are plain BatchNorm. The state_dict keys are
those of BatchNorm, so checkpoints load into the unconverted model.
"""
from __future__ import annotations

import torch
from torch import nn

from .distributed import all_reduce_sum, world


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm{1,2,3}d whose training statistics cover the samples of every rank."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm: expected a (N, C, ...) input, got shape "
                             f"{tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and world() > 1):
            return super().forward(input)
        C = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        shape = [1, C] + [1] * (input.dim() - 2)
        x = input if input.dtype == torch.float64 else input.float()
        local_count = torch.full((1,), x.numel() // max(C, 1), dtype=x.dtype, device=x.device)
        sums = all_reduce_sum(torch.cat([x.sum(dims), local_count]))
        count = sums[C].detach()
        if float(count) < 2:
            raise ValueError("GlobalBatchNorm: fewer than 2 values per channel over all ranks")
        mean = sums[:C] / count
        centred = x - mean.view(shape)
        var = all_reduce_sum((centred * centred).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                unbiased = var.detach() * (count / (count - 1))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype),
                                                        alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype),
                                                       alpha=factor)
        return y.to(input.dtype)


def convert(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm layer (not already synchronised) replaced by a
    GlobalBatchNorm holding the same parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        like = next((t for t in list(module.parameters()) + list(module.buffers())
                     if t.is_floating_point()), torch.empty(0))
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, device=like.device, dtype=like.dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def sync_batch_norm(net: nn.Module, device: torch.device) -> nn.Module:
    """`net` with batch statistics over the global batch: PyTorch's SyncBatchNorm on GPUs,
    GlobalBatchNorm elsewhere (SyncBatchNorm refuses CPU tensors). No-op when not distributed."""
    if world() == 1:
        return net
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return convert(net)
