"""The CPU's run-time-dispatched vector loops (csrc/cpu/vector_kernels.cpp) against exact oracles.

The energies must equal a sequential float32 sum over channels (k = 0, 1, ...: the order every
CPU path uses), and the peaks must be exactly those of a scan of the resized map built from the
op's own energies (reference.bilinear_resize + peaks_of_map): no near-tie allowance, since both
sides see the same numbers. The same outputs must come out whichever ISA level runs
(ATEN_CPU_CAPABILITY=default / avx2 / the widest the CPU has), bit for bit."""
import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anm_fast
from anm_fast import reference as R

pytestmark = pytest.mark.skipif(not anm_fast.has_extension(),
                                reason="the vector loops are in the C++ extension (not built)")
ops = torch.ops.anm_fast

# (K, h, w): planes of 1, 4, 15 positions (portable loop), 16 (one vector, four samples side by
# side), 17 and 49 (an overlapping last chunk), 64, 196 and 576 (chunk groups) and 40 x 40 (more
# than 64 chunks: their offsets no longer fit the kernel's stack buffer).
FMAPS = [(3, 1, 1), (5, 2, 2), (7, 3, 5), (512, 4, 4), (33, 1, 17), (64, 7, 7), (9, 8, 8),
         (6, 14, 14), (2, 24, 24), (3, 40, 40)]
# (H, W): no full vector, one, several with a scalar tail, and a large map.
IMAGES = [(8, 8), (32, 32), (31, 45), (17, 100), (224, 224)]


def sequential_energy(fmap: torch.Tensor) -> torch.Tensor:
    """The CPU kernels' arithmetic written out: squares added channel by channel in float32, then
    the L2 norm summed position by position, each step rounded on its own."""
    f = fmap.to(torch.float32)
    B, K, h, w = f.shape
    e = torch.zeros(B, h, w)
    for k in range(K):
        e = e + f[:, k] * f[:, k]
    flat = e.reshape(B, h * w)
    sq = torch.zeros(B)
    for i in range(h * w):
        sq = sq + flat[:, i] * flat[:, i]
    # the correctly rounded square root (torch's float32 sqrt may be 1 ulp off; via float64 it is
    # exact, as std::sqrt is)
    norm = torch.sqrt(sq.double()).float().clamp_min(1e-12)
    # divided element by element: with a broadcast divisor torch may multiply by its reciprocal
    return e / norm[:, None, None].expand(B, h, w).contiguous()


def _fmap(B, K, h, w, seed=0, zero_some=True):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, K, h, w, generator=g).relu()
    if zero_some and B > 2:
        f[1] = 0.0  # an all-zero sample: energy 0 everywhere, peaks at the first pixel
    return f


@pytest.mark.parametrize("K,h,w", FMAPS)
@pytest.mark.parametrize("B", [1, 3, 4, 6, 9])
def test_energy_is_the_sequential_sum(B, K, h, w):
    fmap = _fmap(B, K, h, w)
    _, _, energy = ops.activation_peaks(fmap, 8, 8, 0.0)
    assert torch.equal(energy, sequential_energy(fmap))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "batch_stride"])
def test_energy_layouts_agree(layout):
    B, K, h, w = 6, 40, 4, 4
    base = _fmap(2 * B, 2 * K, h, w)
    if layout == "contiguous":
        fmap = base[:B, :K].contiguous()
    elif layout == "channels_last":
        fmap = base[:B, :K].contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        fmap = base[:B, ::2]  # channel stride 2 planes, planes themselves contiguous
    else:
        fmap = base[::2, :K]  # samples two apart
    _, _, energy = ops.activation_peaks(fmap, 32, 32, 0.0)
    assert torch.equal(energy, sequential_energy(fmap))


@pytest.mark.parametrize("H,W", IMAGES)
@pytest.mark.parametrize("band", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("K,h,w", [(512, 4, 4), (64, 7, 7), (7, 3, 5), (9, 8, 8)])
def test_peaks_are_those_of_the_resized_map(K, h, w, H, W, band):
    fmap = _fmap(5, K, h, w, seed=H * W + K)
    pmax, pmin, energy = ops.activation_peaks(fmap, H, W, band)
    want_max, want_min = R.peaks_of_map(R.bilinear_resize(energy, H, W), band)
    assert torch.equal(pmax, want_max)
    assert torch.equal(pmin, want_min)


def test_peaks_of_plateaus_and_constant_maps():
    # A single hot position (a plateau of equal values after the clamped border rows), and a
    # constant map (every pixel ties: the first pixel is both peaks).
    fmap = torch.zeros(3, 4, 4, 4)
    fmap[0, :, 0, 0] = 1.0
    fmap[1, :, 3, 3] = 1.0
    fmap[2] = 1.0
    for H, W in [(32, 32), (31, 45)]:
        pmax, pmin, energy = ops.activation_peaks(fmap, H, W, 0.0)
        want_max, want_min = R.peaks_of_map(R.bilinear_resize(energy, H, W), 0.0)
        assert torch.equal(pmax, want_max) and torch.equal(pmin, want_min)
        assert pmax[2].tolist() == [0, 0] and pmin[2].tolist() == [0, 0]


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), H=st.integers(1, 70), W=st.integers(1, 70),
       band=st.sampled_from([0.0, 0.01, 0.3, 0.9]), levels=st.sampled_from([0, 2, 3]),
       seed=st.integers(0, 2**16))
def test_peaks_any_resize(h, w, H, W, band, levels, seed):
    # Up- and downsampling, odd ratios, scalar tails; `levels` > 0 quantises the feature map so
    # that many pixels tie exactly (the first occurrence must still win).
    g = torch.Generator().manual_seed(seed)
    fmap = torch.rand(3, 5, h, w, generator=g)
    if levels:
        fmap = torch.floor(fmap * levels) / levels
    pmax, pmin, energy = ops.activation_peaks(fmap, H, W, band)
    want_max, want_min = R.peaks_of_map(R.bilinear_resize(energy, H, W), band)
    assert torch.equal(pmax, want_max)
    assert torch.equal(pmin, want_min)


_ISA_SCRIPT = r"""
import json, sys, torch, anm_fast
ops = torch.ops.anm_fast
out = {}
for key, fmap in torch.load(sys.argv[1]).items():
    for H, W in [(32, 32), (31, 45), (224, 224)]:
        for band in (0.0, 0.2):
            pmax, pmin, energy = ops.activation_peaks(fmap, H, W, band)
            out[f"{key},{H},{W},{band}"] = [pmax.tolist(), pmin.tolist(),
                                            energy.view(torch.int32).tolist()]
json.dump(out, sys.stdout)
"""


def _run_with_capability(cap, inputs):
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if cap is not None:
        env["ATEN_CPU_CAPABILITY"] = cap
    res = subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(inputs)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def test_every_isa_level_gives_the_same_bits(tmp_path):
    # The inputs are made here and loaded by each process: torch's own random kernels differ
    # between ISA levels.
    inputs = tmp_path / "fmaps.pt"
    torch.save({f"{K},{h},{w}": _fmap(7, K, h, w, seed=i)
                for i, (K, h, w) in enumerate([(512, 4, 4), (64, 7, 7), (33, 1, 17), (6, 14, 14)])},
               inputs)
    widest = _run_with_capability(None, inputs)
    for cap in ("default", "avx2"):
        assert _run_with_capability(cap, inputs) == widest, cap
