"""Triton sample_and_erase: stages 2 and 3 in one launch.

Every program of the erase grid derives its sample's box in-kernel from the Philox stream (a
handful of scalar operations) instead of reading it from a sample_boxes output, so boxes never
round-trip through memory before the erase. Fill values are drawn per element only in tiles that
touch a box. The first tile program of each sample also writes that sample's boxes, mask ratio,
fills and modulated targets. Results are identical to sample_boxes followed by
erase_and_modulate (the same helpers compute them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from anm_fast.reference import erased_memory_format

from ._common import (NO_FMA, box_shape, device_guard, f64_arg, f64_bits, fill_draw, fills_on,
                      next_pow2, opmath_is_f64, place_box)
from ._modulate import modulate_row
from .erase import BLOCK, plane_coords


@triton.jit
def _box_fill(seed, sample_id, fv_ptr, fv_s0, c, j, touched, UNIFORM: tl.constexpr):
    """Fill value of channel c (draw j) where the tile touches the box; zeros elsewhere."""
    f = tl.zeros(c.shape, tl.float32)
    if touched:
        if UNIFORM:
            f = fill_draw(seed, sample_id, j)
        else:
            f = tl.load(fv_ptr + c * fv_s0).to(tl.float32)
    return f


@triton.jit(do_not_specialize=["lo_bits", "hi_bits", "gain_bits", "aspect_bits",
                               "hi_aspect_bits", "scale_bits", "label_gain_bits"])
def _sample_and_erase_kernel(x_ptr, xs0, xs1, xs2, xs3, out_ptr, t_ptr, ts0, ts1, t_out_ptr,
                             pmax_ptr, pmax_s0, pmax_s1, pmin_ptr, pmin_s0, pmin_s1, q_ptr, q_s0,
                             id_ptr, id_s0, seed_ptr, fv_ptr, fv_s0,
                             box_max_ptr, box_min_ptr, ratio_ptr, fill_max_ptr, fill_min_ptr,
                             B, C, H, W, N, tiles, lo_bits, hi_bits, gain_bits, aspect_bits,
                             hi_aspect_bits, scale_bits, label_gain_bits,
                             CENTER: tl.constexpr, UNIFORM: tl.constexpr,
                             CHANNELS_LAST: tl.constexpr, OPM64: tl.constexpr,
                             BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // tiles).to(tl.int64)
    tile = pid % tiles
    # This sample's geometry, from its own stream (scalars).
    seed = tl.load(seed_ptr).to(tl.int64)
    sid = tl.load(id_ptr + b * id_s0).to(tl.int64)
    q = tl.load(q_ptr + b * q_s0).to(tl.float32)
    s, bh, bw = box_shape(seed, sid, q, H, W, f64_arg(lo_bits), f64_arg(hi_bits),
                          f64_arg(gain_bits), f64_arg(aspect_bits), f64_arg(hi_aspect_bits),
                          f64_arg(scale_bits))
    ya, xa = place_box(tl.load(pmax_ptr + b * pmax_s0).to(tl.int64),
                       tl.load(pmax_ptr + b * pmax_s0 + pmax_s1).to(tl.int64), bh, bw, H, W,
                       CENTER)
    yb, xb = place_box(tl.load(pmin_ptr + b * pmin_s0).to(tl.int64),
                       tl.load(pmin_ptr + b * pmin_s0 + pmin_s1).to(tl.int64), bh, bw, H, W,
                       CENTER)

    # Both erased copies of this tile of x.
    CHW = C * H * W
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CHW
    c, y, x = plane_coords(offs, C, H, W, CHANNELS_LAST)
    v = tl.load(x_ptr + b * xs0 + c.to(tl.int64) * xs1 + y.to(tl.int64) * xs2
                + x.to(tl.int64) * xs3, mask=mask)
    m_max = (y >= ya) & (y < ya + bh) & (x >= xa) & (x < xa + bw) & mask
    m_min = (y >= yb) & (y < yb + bh) & (x >= xb) & (x < xb + bw) & mask
    f_max = _box_fill(seed, sid, fv_ptr, fv_s0, c, c, tl.max(m_max.to(tl.int32), axis=0) > 0,
                      UNIFORM)
    f_min = _box_fill(seed, sid, fv_ptr, fv_s0, c, c + C, tl.max(m_min.to(tl.int32), axis=0) > 0,
                      UNIFORM)
    tl.store(out_ptr + b * CHW + offs, tl.where(m_max, f_max.to(v.dtype), v), mask=mask)
    tl.store(out_ptr + (b + B) * CHW + offs, tl.where(m_min, f_min.to(v.dtype), v), mask=mask)

    if tile == 0:  # the sample's parameters and targets, once
        tl.store(box_max_ptr + b * 4 + 0, ya)
        tl.store(box_max_ptr + b * 4 + 1, xa)
        tl.store(box_max_ptr + b * 4 + 2, bh)
        tl.store(box_max_ptr + b * 4 + 3, bw)
        tl.store(box_min_ptr + b * 4 + 0, yb)
        tl.store(box_min_ptr + b * 4 + 1, xb)
        tl.store(box_min_ptr + b * 4 + 2, bh)
        tl.store(box_min_ptr + b * 4 + 3, bw)
        ratio = s.to(tl.float32)
        tl.store(ratio_ptr + b, ratio)
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            mc = cc < C
            tl.store(fill_max_ptr + b * C + cc, _box_fill(seed, sid, fv_ptr, fv_s0, cc, cc, True,
                                                          UNIFORM), mask=mc)
            tl.store(fill_min_ptr + b * C + cc, _box_fill(seed, sid, fv_ptr, fv_s0, cc, cc + C,
                                                          True, UNIFORM), mask=mc)
        modulate_row(t_ptr, ts0, ts1, t_out_ptr, ratio, b, N, f64_arg(label_gain_bits), OPM64,
                     BLOCK_N)


def sample_and_erase(x, targets, peak_max, peak_min, quality, sample_ids, seed, area_lo: float,
                     area_hi: float, quality_gain: float, aspect_lo: float, area_scale: float,
                     center_anchor: bool, uniform_fill: bool, fill_value, label_gain: float):
    """sample_boxes(peaks, ..., H, W, C, ...) followed by erase_and_modulate(x, targets, ...) in
    one launch (H, W, C from x). Returns (erased, targets_out, box_max, box_min, ratio, fill_max,
    fill_min), identical to the two ops run one after the other."""
    if x.dim() != 4:
        raise ValueError(f"sample_and_erase: x must be (B, C, H, W), got {tuple(x.shape)}")
    B, C, H, W = x.shape
    if targets.dim() != 2 or targets.shape[0] != B or targets.shape[1] < 2:
        raise ValueError("sample_and_erase: targets must be (B, N) with N >= 2")
    if tuple(peak_max.shape) != (B, 2) or tuple(peak_min.shape) != (B, 2):
        raise ValueError("sample_and_erase: peak_max and peak_min must be (B, 2)")
    if tuple(quality.shape) != (B,) or tuple(sample_ids.shape) != (B,) or seed.numel() != 1:
        raise ValueError("sample_and_erase: quality and sample_ids must be (B,), seed one integer")
    if not uniform_fill and fill_value.numel() != C:
        raise ValueError("sample_and_erase: fill_value must hold one value per channel")
    device = x.device
    fmt = erased_memory_format(x)
    erased = torch.empty((2 * B, C, H, W), dtype=x.dtype, device=device, memory_format=fmt)
    t_out = torch.empty(targets.shape, dtype=targets.dtype, device=device)
    box_max = torch.empty((B, 4), dtype=torch.int64, device=device)
    box_min = torch.empty((B, 4), dtype=torch.int64, device=device)
    ratio = torch.empty((B,), dtype=torch.float32, device=device)
    fill_max = torch.empty((B, C), dtype=torch.float32, device=device)
    fill_min = torch.empty((B, C), dtype=torch.float32, device=device)
    outs = (erased, t_out, box_max, box_min, ratio, fill_max, fill_min)
    if B == 0 or C * H * W == 0:
        return outs
    seed = seed.reshape(1)
    if seed.device != device:
        seed = seed.to(device)
    # constant fills may come as a CPU tensor (the API keeps them there): moved only then
    fv = fills_on(fill_value, device) if not uniform_fill else ratio  # unused when uniform
    N = targets.shape[1]
    tiles = triton.cdiv(C * H * W, BLOCK)
    with device_guard(x):
        _sample_and_erase_kernel[(B * tiles,)](
            x, *x.stride(), erased, targets, *targets.stride(), t_out,
            peak_max, *peak_max.stride(), peak_min, *peak_min.stride(), quality,
            quality.stride(0), sample_ids, sample_ids.stride(0), seed, fv, fv.stride(0),
            box_max, box_min, ratio, fill_max, fill_min,
            B, C, H, W, N, tiles, f64_bits(area_lo), f64_bits(area_hi), f64_bits(quality_gain),
            f64_bits(aspect_lo), f64_bits(1.0 / aspect_lo), f64_bits(area_scale),
            f64_bits(label_gain), CENTER=bool(center_anchor), UNIFORM=bool(uniform_fill),
            CHANNELS_LAST=fmt == torch.channels_last, OPM64=opmath_is_f64(targets.dtype),
            BLOCK=BLOCK, BLOCK_N=min(next_pow2(N), 1024), BLOCK_C=min(next_pow2(C), 64),
            num_warps=4, **NO_FMA)
    return outs
