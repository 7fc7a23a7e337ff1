"""Multi-process data parallelism on torch.distributed, for runs launched by torchrun.

One process per GPU (NCCL) or per CPU worker (gloo). Outside torchrun (WORLD_SIZE unset or 1)
every function here is a no-op and the trainer behaves exactly as a single process always did.

What each rank does (the README section on torchrun has the user-facing version):
- Shuffling: every rank draws the same global permutation of *sample indices* from the method's
  shared generator and takes its slice of each global batch (`shard`), so a sample's id, and hence
  its ANM mask (keyed by seed and sample id), does not depend on which rank sees it. The
  per-step ANM seed comes from the same shared stream; augmentation draws are counter-based,
  keyed by (seed, epoch, sample id) (`augment.augment_keyed`), so a sample's crop and flip do not
  depend on the rank either; MixUp pairings come from a per-rank generator (`local_generator`).
- Gradients: averaged over ranks by an optimiser step pre-hook (`average_gradients_on_step`)
  rather than a DistributedDataParallel wrapper: masked_forward runs the network twice per step
  (clean and erased images) and DivideMix runs it up to six times, which breaks DDP's
  one-forward-one-backward contract; averaging after backward is the same arithmetic without
  DDP's communication overlap. Checkpoints therefore always hold the plain, unwrapped model.
- BatchNorm: by default (`sync_bn=True`) batch statistics cover the global batch (SyncBatchNorm on
  GPUs, `global_bn.GlobalBatchNorm` on CPU; `global_bn.sync_batch_norm` converts a network), so a
  step normalises exactly the samples a single process with the same global batch would. With
  `sync_bn=False` each rank normalises its own slice (as DDP does). Either way the running
  statistics are averaged over ranks at the end of every epoch (`average_bn_buffers`), so
  evaluation and the label-quality pass see the same model on every rank.
- Batch-level terms of a loss (ANM's prior penalty on the mean prediction) use `global_mean`,
  the mean over the global batch, for the same reason.
- Label quality: each rank computes per-sample losses on its share of the training set and
  `gather_by_index` reassembles the full vector on every rank before the GMM, so every rank ends
  with the same quality vector.
- Files: rank 0 alone writes checkpoints, logs, plots and results; `barrier()` keeps the others
  from reading a checkpoint before it is whole.
"""
from __future__ import annotations

import datetime
import os
import sys
from typing import Iterable, List, Optional

import torch
import torch.distributed as td


def launched() -> bool:
    """True inside a torchrun-launched job of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_name: Optional[str] = None) -> Optional[torch.device]:
    """Join the process group from torchrun's environment; returns this rank's device (None when
    not distributed). NCCL when the job uses GPUs, gloo on CPU."""
    if not launched() or td.is_initialized():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = torch.cuda.is_available() and device_name in (None, "", "auto", "cuda") or (
        device_name or "").startswith("cuda")
    if want_cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device_name}: no CUDA GPU is visible to torch")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    td.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return device


def shutdown(finished: bool = False) -> None:
    """Leave the process group. After a finished run every rank waits for the others first, so
    that no rank tears its gloo connections down while a peer still works at the run's end (rank 0
    writes the results). After an error no rank waits (torchrun stops the others)."""
    if td.is_available() and td.is_initialized():
        if finished:
            barrier()
        td.destroy_process_group()


def exit_process(code: int) -> None:
    """End a torchrun-launched process with `code` without finalizing the interpreter.

    Gloo's worker threads (and autograd's) can still drop tensors that hold Python objects after
    destroy_process_group has returned; one that does so while the interpreter is being torn down
    aborts the process ("terminate called without an active exception", exit -6) after a run that
    finished and wrote everything: pytorch/pytorch#190489. Skipping the finalization closes that
    window. Nothing is lost: every file the trainer writes is closed (and renamed into place) by
    then, it registers no atexit handler and starts no worker processes; stdout and stderr are
    flushed here."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(code)


def world() -> int:
    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def rank() -> int:
    return td.get_rank() if td.is_available() and td.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        if td.get_backend() == "nccl":
            td.barrier(device_ids=[torch.cuda.current_device()])
        else:
            td.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" \
        else torch.device("cpu")


def all_max_int(value: int) -> int:
    t = torch.tensor([int(value)], dtype=torch.int64, device=_comm_device())
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return int(t.item())


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (e.g. the run folder name chosen by rank 0)."""
    if world() == 1:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a global batch of sample indices (the whole batch when not
    distributed). Slices differ in size by at most one."""
    w = world()
    if w == 1:
        return batch
    return batch.tensor_split(w)[rank()]


def local_generator(seed: int, epoch: int) -> torch.Generator:
    """Per-rank generator for MixUp pairings, re-derived every epoch from (seed,
    epoch, rank) so that a resume, on any number of processes, is well defined."""
    return torch.Generator().manual_seed((seed * 1000003 + epoch * 7919 + rank() * 104729 + 29)
                                         % (2 ** 63))


def gather_by_index(values: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank holds `values` for samples rank, rank + world, ... (`local_indices(n)`);
    returns the full (n, ...) tensor, in sample order, on every rank."""
    w = world()
    if w == 1:
        return values
    per = (n + w - 1) // w
    dev = _comm_device()
    pad = torch.zeros((per,) + tuple(values.shape[1:]), dtype=values.dtype, device=dev)
    pad[: len(values)] = values.to(dev)
    parts = [torch.empty_like(pad) for _ in range(w)]
    td.all_gather(parts, pad)
    out = torch.empty((n,) + tuple(values.shape[1:]), dtype=values.dtype, device=dev)
    for r, p in enumerate(parts):
        count = len(range(r, n, w))
        out[r::w] = p[:count]
    return out.to(values.device)


def local_indices(n: int) -> torch.Tensor:
    return torch.arange(rank(), n, world())


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of `params`, one flat buffer per dtype. A parameter
    without a gradient on this rank counts as zero so every rank joins the same collectives."""
    w = world()
    if w == 1:
        return
    params = [p for p in params if p.requires_grad]
    by_dtype = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for dtype in sorted(by_dtype, key=str):  # same order on every rank
        grads = by_dtype[dtype]
        flat = torch.cat([g.reshape(-1) for g in grads])
        td.all_reduce(flat)
        flat /= w
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def average_gradients_on_step(opt: torch.optim.Optimizer) -> None:
    """Make every `opt.step()` average the gradients over ranks first (no-op when single)."""
    if world() == 1:
        return

    def hook(optimizer, args, kwargs):
        average_gradients(p for g in optimizer.param_groups for p in g["params"])

    opt.register_step_pre_hook(hook)


def average_bn_buffers(nets: List[torch.nn.Module]) -> None:
    """Mean of the BatchNorm running statistics over ranks, so every rank evaluates (and scores
    label quality with) the same model."""
    w = world()
    if w == 1:
        return
    for net in nets:
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                for buf in (m.running_mean, m.running_var):
                    if buf is not None:
                        td.all_reduce(buf)
                        buf /= w


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is the sum over ranks of the gradients: each rank's input
    feeds every rank's output. (torch.distributed.nn.functional.all_reduce does the same but is
    deprecated from torch 2.6 on; the functional collectives that replace it are not
    differentiable on every version we support.)"""

    @staticmethod
    def forward(ctx, t):
        out = t.clone()
        td.all_reduce(out, op=td.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        td.all_reduce(grad, op=td.ReduceOp.SUM)
        return grad


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of `t` over every rank of the default process group."""
    return _AllReduceSum.apply(t.contiguous())


def global_mean(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Mean of `x` over `dim` across the samples of every rank, differentiable (the backward
    all-reduces the gradient): the single-process batch mean of the global batch. Plain
    `x.mean(dim)` when not distributed."""
    if world() == 1:
        return x.mean(dim)
    local_sum = x.sum(dim)
    local = torch.cat([local_sum.reshape(-1),
                       torch.full((1,), x.shape[dim], dtype=x.dtype, device=x.device)])
    total = all_reduce_sum(local)
    return (total[:-1] / total[-1].detach()).reshape(local_sum.shape)
