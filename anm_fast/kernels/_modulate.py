"""Per-sample label modulation rows (forward and backward), called from the erase kernels so one
launch serves both the images and the targets."""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import as_type


@triton.jit
def _div(a, b, OPM64: tl.constexpr):
    # Triton's float32 '/' is not correctly rounded on GPUs; the C++ kernels' is.
    if OPM64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def _argmax_row(t_row, ts1, N, OPM64: tl.constexpr, BLOCK_N: tl.constexpr):
    """Top class k (first occurrence on ties) and its value t_k, in the op-math type."""
    if OPM64:
        opm = tl.float64
    else:
        opm = tl.float32
    best = tl.load(t_row).to(opm)
    k = 0
    for n0 in range(0, N, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        m = offs < N
        v = tl.load(t_row + offs.to(tl.int64) * ts1, mask=m, other=-float("inf")).to(opm)
        v = tl.where(m, v, -float("inf"))
        t_max = tl.max(v, axis=0)
        first = tl.min(tl.where(m & (v == t_max), offs, N), axis=0)
        k = tl.where(t_max > best, first, k)
        best = tl.maximum(best, t_max)
    return k, best


@triton.jit
def _shift(t_k, ratio, gain, OPM64: tl.constexpr):
    """d = min(gain * s, t_k) and whether the clamp is active (anm_common.h label_shift).
    ratio: the sample's mask ratio s as float32."""
    if OPM64:
        opm = tl.float64
    else:
        opm = tl.float32
    want = ratio.to(opm) * gain.to(opm)
    clamped = want > t_k
    return tl.where(clamped, t_k, want), clamped


@triton.jit
def modulate_row(t_ptr, ts0, ts1, out_ptr, ratio, b, N, gain,
                 OPM64: tl.constexpr, BLOCK_N: tl.constexpr):
    """t'_k = t_k - d, t'_c = t_c + d / (N - 1) for c != k; out is contiguous (B, N).
    ratio: sample b's mask ratio (float32 value); gain: float64."""
    if OPM64:
        opm = tl.float64
    else:
        opm = tl.float32
    t_row = t_ptr + b * ts0
    k, t_k = _argmax_row(t_row, ts1, N, OPM64, BLOCK_N)
    d, _clamped = _shift(t_k, ratio, gain, OPM64)
    share = _div(d, as_type(N - 1, opm), OPM64)
    for n0 in range(0, N, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        m = offs < N
        v = tl.load(t_row + offs.to(tl.int64) * ts1, mask=m, other=0.0).to(opm)
        o = tl.where(offs == k, v - d, v + share)
        tl.store(out_ptr + b * N + offs, o.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def modulate_row_backward(g_ptr, gs0, gs1, t_ptr, ts0, ts1, out_ptr, ratio_ptr, rs0, b, N, gain,
                          T64: tl.constexpr, G64: tl.constexpr, BLOCK_N: tl.constexpr):
    """The gradient passes through, except where the clamp d = t_k is active: then
    dL/dt_k = sum_{c != k} g_c / (N - 1). The arg-max and the clamp in the targets' opmath type
    (T64: float64), the sum in the gradient's (G64)."""
    if G64:
        g_opm = tl.float64
    else:
        g_opm = tl.float32
    k, t_k = _argmax_row(t_ptr + b * ts0, ts1, N, T64, BLOCK_N)
    ratio = tl.load(ratio_ptr + b * rs0).to(tl.float32)
    _d, clamped = _shift(t_k, ratio, gain, T64)
    g_row = g_ptr + b * gs0
    total = tl.zeros([BLOCK_N], g_opm)
    for n0 in range(0, N, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        g = tl.load(g_row + offs.to(tl.int64) * gs1, mask=offs < N, other=0.0)
        total += tl.where(offs == k, 0.0, g.to(g_opm))
    spread = _div(tl.sum(total, axis=0), as_type(N - 1, g_opm), G64)
    for n0 in range(0, N, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        m = offs < N
        g = tl.load(g_row + offs.to(tl.int64) * gs1, mask=m, other=0.0)
        o = tl.where(offs == k, tl.where(clamped, spread.to(g.dtype), g), g)
        tl.store(out_ptr + b * N + offs, o.to(out_ptr.dtype.element_ty), mask=m)
