"""SIGTERM / SIGINT: stop at the next step boundary instead of dying mid-step.

Schedulers (SLURM, Kubernetes, spot instances, torchrun) send SIGTERM and wait a grace period
before SIGKILL. The handler only sets a flag; the training loop polls `requested()` before every
step and after every checkpoint, so an optimiser step, an evaluation or a checkpoint write is never
torn. Under torch.distributed the flag is agreed by all ranks (a MAX all-reduce), so every rank
stops at the same step and none is left waiting in a collective.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Optional

_signal: Optional[int] = None


class Preempted(Exception):
    """Raised at a step boundary after SIGTERM/SIGINT; the loop turns it into a clean exit."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum, frame):
    global _signal
    if _signal is not None and signum == signal.SIGINT:
        # a second Ctrl-C means "now": the last checkpoint on disk is still whole
        raise KeyboardInterrupt
    _signal = signum


@contextlib.contextmanager
def handle_signals():
    """Install the handlers for the duration of a run (main thread only; restored after)."""
    global _signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _signal = None
    old = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _signal = None


def requested() -> Optional[int]:
    """The signal number if any rank has been asked to stop, else None."""
    from . import distributed as dist

    local = _signal or 0
    if dist.world() > 1:
        local = dist.all_max_int(local)
    return local or None


def check() -> None:
    signum = requested()
    if signum:
        raise Preempted(signum)
