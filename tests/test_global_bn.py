"""GlobalBatchNorm and distributed.global_mean on 2 gloo processes equal BatchNorm and mean over
the concatenated batch in one process: outputs, input and parameter gradients, running stats."""
import os
import sys

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from anm_fast.train import global_bn

pytestmark = pytest.mark.skipif(not (td.is_available() and td.is_gloo_available())
                                or sys.platform == "win32", reason="needs torch.distributed gloo")

WORLD = 2


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 5, 4, generator=g, dtype=torch.float64) * 3 + 1
    w = torch.randn(10, 3, 5, 4, generator=g, dtype=torch.float64)  # weights of a loss
    logits = torch.randn(10, 4, generator=g, dtype=torch.float64)
    return x, w, logits


def _bn():
    bn = torch.nn.BatchNorm2d(3, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return bn


def _single():
    """One process, the whole batch; loss = mean over samples, as a trainer's would be."""
    from anm_fast.train import distributed as dist

    x, w, logits = _inputs()
    x.requires_grad_(True)
    logits.requires_grad_(True)
    bn = _bn()
    y = bn(x)
    loss = (y * w).flatten(1).sum(1).mean()
    prior = torch.full((4,), 0.25, dtype=torch.float64)
    pen = (prior * (prior / dist.global_mean(logits.softmax(1))).log()).sum()
    (loss + pen).backward()
    return dict(y=y.detach(), gx=x.grad, gl=logits.grad, gw=bn.weight.grad, gb=bn.bias.grad,
                rm=bn.running_mean, rv=bn.running_var)


def _worker(rank, init_file, out_file):
    from anm_fast.train import distributed as dist

    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                          world_size=WORLD)
    try:
        x, w, logits = _inputs()
        part = x.tensor_split(WORLD)[rank].clone().requires_grad_(True)
        wp = w.tensor_split(WORLD)[rank]
        lp = logits.tensor_split(WORLD)[rank].clone().requires_grad_(True)
        bn = global_bn.convert(_bn())
        assert isinstance(bn, global_bn.GlobalBatchNorm)
        y = bn(part)
        loss = (y * wp).flatten(1).sum(1).mean()
        prior = torch.full((4,), 0.25, dtype=torch.float64)
        pen = (prior * (prior / dist.global_mean(lp.softmax(1))).log()).sum()
        (loss + pen).backward()
        dist.average_gradients(bn.parameters())  # what the trainer's optimiser hook does
        torch.save(dict(y=y.detach(), gx=part.grad, gl=lp.grad, gw=bn.weight.grad,
                        gb=bn.bias.grad, rm=bn.running_mean, rv=bn.running_var),
                   f"{out_file}.{rank}")
    finally:
        td.destroy_process_group()


def test_two_processes_equal_one_process_over_the_global_batch(tmp_path):
    out = str(tmp_path / "out")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    parts = [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]
    ref = _single()
    # per-sample quantities: the concatenation of the ranks' slices
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), ref["y"], rtol=1e-10,
                               atol=1e-12)
    # input gradients: every rank back-propagates the sum of all ranks' losses (each rank's is a
    # mean over its 5 samples, the single one over 10, and the penalty is added on every rank),
    # which the trainer's gradient averaging divides by the number of ranks: before that
    # division the per-sample gradients are WORLD x the single-process ones
    for k in ("gx", "gl"):
        torch.testing.assert_close(torch.cat([p[k] for p in parts]) / WORLD, ref[k],
                                   rtol=1e-10, atol=1e-12)
    for p in parts:  # averaged parameter gradients and running statistics: same on every rank
        for k in ("gw", "gb", "rm", "rv"):
            torch.testing.assert_close(p[k], ref[k], rtol=1e-10, atol=1e-12)


def test_plain_batchnorm_outside_distributed_and_in_eval():
    x, _, _ = _inputs()
    a, b = _bn(), global_bn.convert(_bn())
    torch.testing.assert_close(b(x), a(x))          # training mode, no process group
    a.eval(), b.eval()
    torch.testing.assert_close(b(x), a(x))
    assert a.state_dict().keys() == b.state_dict().keys()


def test_convert_replaces_nested_batchnorms_and_keeps_state():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
                              torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(8)))
    with torch.no_grad():
        net[1].running_mean.fill_(0.25)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net = global_bn.convert(net)
    assert isinstance(net[1], global_bn.GlobalBatchNorm)
    assert isinstance(net[2][1], global_bn.GlobalBatchNorm)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="expected a \\(N, C, ...\\) input"):
        net[1](torch.ones(3))
