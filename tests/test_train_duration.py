"""The run-time estimate: a timed batch pass that leaves the run untouched, the count of passes
per epoch, the measured pace after the first epoch of each phase, and one warning for hours."""
import io
import types

import pytest
import torch

from anm_fast.train import duration
from anm_fast.train.methods.base import Context, Method


def test_words():
    assert duration.words(40) == "40 s"
    assert duration.words(12 * 60) == "12 min"
    assert duration.words(3.5 * 3600) == "3.5 h"
    assert duration.words(50 * 3600) == "2.1 days"


class TwoPhase:
    """iterations and passes of a method with 2 warm-up epochs of cost 1 and then cost 10."""

    def __init__(self, device="cpu"):
        self.ctx = types.SimpleNamespace(device=torch.device(device))

    def iterations(self, epoch):
        return 100

    def passes(self, epoch):
        return 1.0 if epoch < 2 else 10.0


def pace(monkeypatch, seconds_per_pass, epochs=10):
    monkeypatch.setattr(duration, "timed_pass_seconds", lambda m: seconds_per_pass)
    out = io.StringIO()
    return duration.Pace(TwoPhase(), "[m seed 0]", 0, epochs, stream=out), out


def test_estimate_counts_every_epochs_passes(monkeypatch):
    p, out = pace(monkeypatch, 0.01)
    # 2 x 100 x 1 + 8 x 100 x 10 passes at 0.01 s: 82 s
    assert "estimated time for epochs 1-10: about 82 s" in out.getvalue()
    assert "warning" not in out.getvalue()


def test_hours_are_warned_at_the_start_and_only_once(monkeypatch):
    p, out = pace(monkeypatch, 10.0)
    assert out.getvalue().count("warning:") == 1 and "about 22.8 h on cpu" in out.getvalue()
    p.epoch_done(0, 1000.0)
    assert out.getvalue().count("warning:") == 1


def test_the_measured_pace_replaces_the_estimate(monkeypatch):
    p, out = pace(monkeypatch, 0.001)           # estimate: 8 s, no warning
    p.epoch_done(0, 100.0)                      # measured: 1 s per pass -> 8100 s left
    text = out.getvalue()
    assert "at the pace of epoch 1: about 2.2 h left" in text
    assert "warning: [m seed 0] the remaining epochs will take about 2.2 h on cpu (at the pace " \
           "of epoch 1)" in text and "--device cuda" in text
    p.epoch_done(1, 100.0)                      # same phase: no second line, no 2nd warning
    assert out.getvalue().count("at the pace of") == 2  # the line and the warning of epoch 1


def test_a_new_phase_prints_its_pace_once(monkeypatch):
    p, out = pace(monkeypatch, 0.0001)
    for epoch in range(4):
        p.epoch_done(epoch, 1.0 if epoch < 2 else 10.0)
    lines = [ln for ln in out.getvalue().splitlines() if "at the pace" in ln]
    assert [ln.split(":")[0] for ln in lines] == ["[m seed 0] at the pace of epoch 1",
                                                   "[m seed 0] at the pace of epoch 3"]


class Dropper(Method):
    """A method whose network draws random numbers (dropout) and has BatchNorm statistics."""

    name = "dropper"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                       torch.nn.Dropout(0.5), torch.nn.Flatten(),
                                       torch.nn.LazyLinear(3))
        self.net(torch.zeros(2, 1, 8, 8))

    def nets(self):
        return [self.net]

    def iterations(self, epoch):
        return 1


def test_the_timed_pass_leaves_the_run_untouched():
    from anm_fast.train.data import DataBundle
    import numpy as np

    x = torch.randn(10, 1, 8, 8)
    data = DataBundle("t", x, np.zeros(10, dtype=np.int64), x, np.zeros(10, dtype=np.int64), 3,
                      [0.0], [1.0])
    ctx = Context(data=data, y_noisy=torch.zeros(10, dtype=torch.int64),
                  hp={"batch_size": 4, "warmup": 0}, device=torch.device("cpu"), seed=0,
                  noise_kind="sym", noise_rate=0.5)
    m = Dropper(ctx)
    before = {k: v.clone() for k, v in m.net.state_dict().items()}
    rng = torch.get_rng_state()
    gen = m.gen.get_state()
    assert duration.timed_pass_seconds(m) > 0
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(m.gen.get_state(), gen)
    after = m.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in m.net.parameters())
    assert m._aug_calls == 0
