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
def handle_signals(ignore_after_stop: bool = False):
    """Install the handlers for the duration of a run (main thread only; restored after).

    ignore_after_stop: for the process's own entry point. Once a signal has stopped the run,
    further SIGTERM / SIGINT are ignored instead of restoring the default action, which would
    let a second SIGTERM (schedulers often send several) kill the process during its shutdown,
    after the message but before the exit status 128 + signal."""
    global _signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _signal = None
    old = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        stopped = _signal is not None
        for s, h in old.items():
            signal.signal(s, signal.SIG_IGN if stopped and ignore_after_stop else h)
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
