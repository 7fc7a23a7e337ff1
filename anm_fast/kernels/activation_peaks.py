"""Triton activation_peaks: energy map, L2 normalisation and both peaks, one program per sample.

The feature map is read once, in the C++ kernels' summation order (bit-identical energies). The
bilinear resize to H x W is never written to memory: each tile of output pixels is interpolated
from the (h, w) energy map on the fly, exactly like the C++ kernel (taps and lerp of anm_common.h;
rows first, then columns; no fused multiply-add), and reduced to running extremes with their first
row-major index. With band > 0 a second scan finds the first pixel inside each band.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import NO_FMA, as_type, device_guard, next_pow2


@triton.jit
def _taps(dst, in_size, scale):
    """Source taps and weight of output indices `dst`: anm_common.h linear_tap."""
    src = scale * (dst.to(tl.float32) + 0.5) - 0.5
    src = tl.maximum(src, 0.0)
    i0 = tl.minimum(src.to(tl.int32), in_size - 1)  # src >= 0: truncation is floor
    lam = src - i0.to(tl.float32)
    lam = tl.minimum(tl.maximum(lam, 0.0), 1.0)
    i1 = tl.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, lam


@triton.jit
def _lerp(a, b, w):
    # a + (b - a) * w, as anm_common.h lerp: exact where a == b, so the plateaus of the resized
    # map hold equal values and ties break as on every other backend.
    return a + (b - a) * w


@triton.jit
def _resized_tile(e_base, offs, mask, w, H, W, h, scale_h, scale_w):
    """Values of the bilinear resize at flat output indices `offs` (row-major over H x W):
    source rows resized horizontally first, then vertically, as the C++ kernel does."""
    i = offs // W
    j = offs % W
    y0, y1, ly = _taps(i, h, scale_h)
    x0, x1, lx = _taps(j, w, scale_w)
    e00 = tl.load(e_base + y0 * w + x0, mask=mask, other=0.0)
    e01 = tl.load(e_base + y0 * w + x1, mask=mask, other=0.0)
    e10 = tl.load(e_base + y1 * w + x0, mask=mask, other=0.0)
    e11 = tl.load(e_base + y1 * w + x1, mask=mask, other=0.0)
    return _lerp(_lerp(e00, e01, lx), _lerp(e10, e11, lx), ly)


@triton.jit
def sample_peaks(f_base, sK, sH, sW, K, h, w, H, W, band, raw_base, e_base,
                 ACC64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Stage 1 for one sample: writes its normalised energies (float32, h*w at e_base) and returns
    the flat row-major indices of its max and min peaks in the H x W resized map.

    The summation order is the C++ kernels' (csrc/cpu/peaks_per_sample.h), so the energies, and
    with them the peaks, are the same bits: each position's squares added in channel order
    k = 0, 1, ..., the norm's squares in position order, e / norm rounded once to float32.
    raw_base: scratch for the raw energies in the accumulator type (float64 maps keep them in
    float64 until they are normalised; for float32 it may be e_base itself)."""
    P = h * w
    if ACC64:
        acc_t = tl.float64
    else:
        acc_t = tl.float32

    # Pass 1: raw energies sum_k f^2, one lane per position, the channels in order.
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        pos = f_base + (offs_p // w).to(tl.int64) * sH + (offs_p % w).to(tl.int64) * sW
        e = tl.zeros([BLOCK_P], acc_t)
        # Four channels' loads issued together (latency hidden), their squares still added one
        # by one in channel order: the same chain, the same bits.
        K4 = K - K % 4
        for k in range(0, K4, 4):
            v0 = tl.load(pos + k * sK, mask=mask_p, other=0.0).to(acc_t)
            v1 = tl.load(pos + (k + 1) * sK, mask=mask_p, other=0.0).to(acc_t)
            v2 = tl.load(pos + (k + 2) * sK, mask=mask_p, other=0.0).to(acc_t)
            v3 = tl.load(pos + (k + 3) * sK, mask=mask_p, other=0.0).to(acc_t)
            e += v0 * v0
            e += v1 * v1
            e += v2 * v2
            e += v3 * v3
        for k in range(K4, K):
            v = tl.load(pos + k * sK, mask=mask_p, other=0.0).to(acc_t)
            e += v * v
        tl.store(raw_base + offs_p, e, mask=mask_p)
    tl.debug_barrier()  # the energies just stored are re-read by other threads of this program

    # The L2 norm: squares added in position order (a serial sum, as on the CPU).
    sq = as_type(0.0, acc_t)
    for p in range(0, P):
        ep = tl.load(raw_base + p)
        sq += ep * ep
    if ACC64:
        norm = tl.sqrt(sq)
    else:
        norm = tl.math.sqrt_rn(sq)
    norm = tl.where(norm < 1e-12, 1e-12, norm)  # not maximum: a NaN norm stays NaN, as on the CPU

    # Pass 2: normalise (one rounding to float32).
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        e = tl.load(raw_base + offs_p, mask=mask_p, other=0.0)
        if ACC64:
            u = (e / norm).to(tl.float32)
        else:
            u = tl.math.div_rn(e, norm)
        tl.store(e_base + offs_p, u, mask=mask_p)
    tl.debug_barrier()

    # Pass 3: extremes of the resized map and their first row-major index.
    HW = H * W
    scale_h = tl.math.div_rn(as_type(h, tl.float32), as_type(H, tl.float32))
    scale_w = tl.math.div_rn(as_type(w, tl.float32), as_type(W, tl.float32))
    hi = -float("inf")
    lo = float("inf")
    idx_hi = 0
    idx_lo = 0
    for t0 in range(0, HW, BLOCK_HW):
        offs = t0 + tl.arange(0, BLOCK_HW)
        mask = offs < HW
        u = _resized_tile(e_base, offs, mask, w, H, W, h, scale_h, scale_w)
        t_hi = tl.max(tl.where(mask, u, -float("inf")), axis=0)
        t_lo = tl.min(tl.where(mask, u, float("inf")), axis=0)
        f_hi = tl.min(tl.where(mask & (u == t_hi), offs, HW), axis=0)
        f_lo = tl.min(tl.where(mask & (u == t_lo), offs, HW), axis=0)
        idx_hi = tl.where(t_hi > hi, f_hi, idx_hi)
        idx_lo = tl.where(t_lo < lo, f_lo, idx_lo)
        hi = tl.maximum(hi, t_hi)
        lo = tl.minimum(lo, t_lo)

    # Pass 4 (band > 0): first pixel within band * range of each extreme.
    if band > 0:
        spread = (hi - lo) * band
        thr_hi = hi - spread
        thr_lo = lo + spread
        found_hi = HW
        found_lo = HW
        for t0 in range(0, HW, BLOCK_HW):
            offs = t0 + tl.arange(0, BLOCK_HW)
            mask = offs < HW
            u = _resized_tile(e_base, offs, mask, w, H, W, h, scale_h, scale_w)
            found_hi = tl.minimum(found_hi, tl.min(tl.where(mask & (u >= thr_hi), offs, HW),
                                                   axis=0))
            found_lo = tl.minimum(found_lo, tl.min(tl.where(mask & (u <= thr_lo), offs, HW),
                                                   axis=0))
        # The extremes themselves always qualify, so both searches succeed.
        idx_hi = found_hi
        idx_lo = found_lo
    return idx_hi, idx_lo


@triton.jit
def _activation_peaks_kernel(f_ptr, sB, sK, sH, sW, K, h, w, H, W, band,
                             raw_ptr, energy_ptr, pmax_ptr, pmin_ptr,
                             ACC64: tl.constexpr, BLOCK_P: tl.constexpr,
                             BLOCK_HW: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    P = h * w
    idx_hi, idx_lo = sample_peaks(f_ptr + b * sB, sK, sH, sW, K, h, w, H, W, band,
                                  raw_ptr + b * P, energy_ptr + b * P, ACC64, BLOCK_P, BLOCK_HW)
    tl.store(pmax_ptr + b * 2, (idx_hi // W).to(tl.int64))
    tl.store(pmax_ptr + b * 2 + 1, (idx_hi % W).to(tl.int64))
    tl.store(pmin_ptr + b * 2, (idx_lo // W).to(tl.int64))
    tl.store(pmin_ptr + b * 2 + 1, (idx_lo % W).to(tl.int64))


def peak_blocks(h: int, w: int, height: int, width: int) -> dict:
    """Tile sizes of sample_peaks (they depend on the shapes only, never on the batch size)."""
    return {"BLOCK_P": min(next_pow2(h * w), 128), "BLOCK_HW": min(next_pow2(height * width), 1024)}


def raw_energy_buffer(energy: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    """Where sample_peaks keeps the raw energies: the energy output itself for float32
    accumulation, a float64 scratch for float64 maps."""
    if fmap.dtype == torch.float64:
        return torch.empty(energy.shape, dtype=torch.float64, device=energy.device)
    return energy


def activation_peaks(fmap: torch.Tensor, height: int, width: int, band: float):
    """Launcher with the signature of torch.ops.anm_fast.activation_peaks."""
    if fmap.dim() != 4:
        raise ValueError(f"activation_peaks: fmap must be (B, K, h, w), got {tuple(fmap.shape)}")
    if height <= 0 or width <= 0:
        raise ValueError("activation_peaks: image size must be positive")
    B, K, h, w = fmap.shape
    if K == 0 or h == 0 or w == 0:
        raise ValueError(f"activation_peaks: fmap has an empty dimension: {tuple(fmap.shape)}")
    device = fmap.device
    peak_max = torch.empty((B, 2), dtype=torch.int64, device=device)
    peak_min = torch.empty((B, 2), dtype=torch.int64, device=device)
    energy = torch.empty((B, h, w), dtype=torch.float32, device=device)
    if B == 0:
        return peak_max, peak_min, energy
    with device_guard(fmap):
        _activation_peaks_kernel[(B,)](
            fmap, *fmap.stride(), K, h, w, height, width, float(band),
            raw_energy_buffer(energy, fmap), energy, peak_max, peak_min,
            ACC64=fmap.dtype == torch.float64, **peak_blocks(h, w, height, width), num_warps=4,
            **NO_FMA)
    return peak_max, peak_min, energy
