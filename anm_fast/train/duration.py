"""How long a run takes: an estimate before the first epoch, the measured pace after each one.

The estimate times one forward and backward pass of a copy of the run's network on a batch of its
training images (the run's own networks, random streams and BatchNorm statistics are untouched),
then counts the passes the run makes: every method says, per epoch, how many iterations it runs
(`Method.iterations`) and how many such batch passes one iteration costs (`Method.passes`). After
each epoch the measured seconds replace the timed step. A run that will take more than an hour is
warned about once, at the start when the estimate says so, else as soon as the pace does.
"""
from __future__ import annotations

import copy
import sys
import time

import torch

HOURS = 3600.0


def words(seconds: float) -> str:
    """'40 s', '12 min', '3.5 h', '2.1 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * HOURS:
        return f"{seconds / HOURS:.1f} h"
    return f"{seconds / (24 * HOURS):.1f} days"


def timed_pass_seconds(method, repeats: int = 2) -> float:
    """Seconds of one forward + backward pass over one training batch, on a copy of the method's
    first network (the fastest of `repeats` passes after one untimed pass). Only the main process
    calls it (the other ranks' networks are the same)."""
    ctx = method.ctx
    bs = min(int(method.hp["batch_size"]), ctx.n)
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # no draw of the run's streams is used up
        # eval mode: no dropout draws, and a SyncBatchNorm on one rank waits for no other;
        # forward() rather than __call__: a torch.compile'd network is timed eager, not compiled
        net = copy.deepcopy(method.nets()[0]).eval()
        x = method.images(torch.arange(bs), aug=False)
        best = float("inf")
        for i in range(repeats + 1):
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            t0 = time.perf_counter()
            with method.autocast():
                out = net.forward(x)
            out.float().sum().backward()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            if i:
                best = min(best, time.perf_counter() - t0)
    return best


def passes_left(method, start: int, epochs: int) -> float:
    """Batch passes of epochs start .. epochs-1."""
    return float(sum(method.iterations(e) * method.passes(e) for e in range(start, epochs)))


class Pace:
    """The estimate of one (method, seed) run and its warning; `epoch_done` after each epoch.

    Prints the estimate at the start, the measured one after the first epoch of each phase
    (warm-up, training: their iterations cost differently), and the warning once."""

    def __init__(self, method, label: str, start: int, epochs: int, stream=sys.stderr):
        self.method, self.label, self.epochs, self.stream = method, label, epochs, stream
        self.pass_seconds = timed_pass_seconds(method)
        self.warned = False
        self._phases_seen = set()
        left = passes_left(method, start, epochs) * self.pass_seconds
        print(f"{label} estimated time for epochs {start + 1}-{epochs}: about {words(left)} "
              f"(from one timed batch pass; the first epoch's pace refines it)", file=stream)
        self._maybe_warn(left, "estimated from a timed training step")

    def epoch_done(self, epoch: int, seconds: float) -> None:
        phase = self.method.passes(epoch)
        if epoch + 1 >= self.epochs or (self.warned and phase in self._phases_seen):
            return  # nothing left to say: no line for this phase, no second warning
        passes = self.method.iterations(epoch) * phase
        if passes <= 0:
            return
        self.pass_seconds = seconds / passes
        left = passes_left(self.method, epoch + 1, self.epochs) * self.pass_seconds
        if phase not in self._phases_seen:
            self._phases_seen.add(phase)
            print(f"{self.label} at the pace of epoch {epoch + 1}: about {words(left)} left",
                  file=self.stream)
        self._maybe_warn(left, f"at the pace of epoch {epoch + 1}")

    def _maybe_warn(self, left: float, how: str) -> None:
        if self.warned or left < HOURS:
            return
        self.warned = True
        device = self.method.ctx.device.type
        print(f"warning: {self.label} the remaining epochs will take about {words(left)} on "
              f"{device} ({how}). For minutes instead: fewer --epochs, --train-subset N, a "
              f"smaller --model or --preset small-images-cpu"
              f"{'' if device == 'cuda' else ', or a GPU (--device cuda)'}", file=self.stream)
