"""Triton sample_boxes: each sample's box shape, placement and fills from its Philox stream.

One lane per sample; a CPU seed is read on the host, a device seed inside the kernel (either way no
host-device copy or sync: CUDA-graph safe; kernels/_common.py seed_args). Bit-identical to
anm_fast/reference.py and the C++ kernels (see kernels/_common.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from anm_fast.config import BoxParams

from ._common import (BOX_BITS, NO_FMA, box_kernel_args, box_shape, device_guard, fill_draw,
                      fills_on, next_pow2, place_box, seed_args, seed_key)


@triton.jit
def _store_box(out_ptr, offs_b, mask, y0, x0, bh, bw):
    base = out_ptr + offs_b * 4
    tl.store(base + 0, y0, mask=mask)
    tl.store(base + 1, x0, mask=mask)
    tl.store(base + 2, bh, mask=mask)
    tl.store(base + 3, bw, mask=mask)


# B and the seed vary from call to call (a last partial batch, a new seed each step): not
# specialised, so they never cause a recompilation. The float64 parameters travel as their bits.
@triton.jit(do_not_specialize=["B", "key_lo", "key_hi", *BOX_BITS])
def _sample_boxes_kernel(pmax_ptr, pmax_s0, pmax_s1, pmin_ptr, pmin_s0, pmin_s1, q_ptr, q_s0,
                         id_ptr, id_s0, seed_ptr, key_lo, key_hi, fv_ptr, fv_s0,
                         box_max_ptr, box_min_ptr, ratio_ptr, fill_max_ptr, fill_min_ptr,
                         B, H, W, C, lo_bits, hi_bits, gain_bits, aspect_bits, hi_aspect_bits,
                         scale_bits, CENTER: tl.constexpr, UNIFORM: tl.constexpr,
                         SEED_ON_HOST: tl.constexpr, BLOCK_B: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    k0, k1 = seed_key(seed_ptr, key_lo, key_hi, SEED_ON_HOST)
    ids = tl.load(id_ptr + offs_b * id_s0, mask=mask_b, other=0).to(tl.int64)
    q = tl.load(q_ptr + offs_b * q_s0, mask=mask_b, other=1.0).to(tl.float32)
    s, bh, bw = box_shape(k0, k1, ids, q, H, W, lo_bits, hi_bits, gain_bits, aspect_bits,
                          hi_aspect_bits, scale_bits)
    tl.store(ratio_ptr + offs_b, s.to(tl.float32), mask=mask_b)
    r = tl.load(pmax_ptr + offs_b * pmax_s0, mask=mask_b, other=0).to(tl.int64)
    c = tl.load(pmax_ptr + offs_b * pmax_s0 + pmax_s1, mask=mask_b, other=0).to(tl.int64)
    y0, x0 = place_box(r, c, bh, bw, H, W, CENTER)
    _store_box(box_max_ptr, offs_b, mask_b, y0, x0, bh, bw)
    r = tl.load(pmin_ptr + offs_b * pmin_s0, mask=mask_b, other=0).to(tl.int64)
    c = tl.load(pmin_ptr + offs_b * pmin_s0 + pmin_s1, mask=mask_b, other=0).to(tl.int64)
    y0, x0 = place_box(r, c, bh, bw, H, W, CENTER)
    _store_box(box_min_ptr, offs_b, mask_b, y0, x0, bh, bw)

    # Fills: (BLOCK_B, BLOCK_C) tiles; draw j < C is the max box's channel j, C + j the min box's.
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        m = mask_b[:, None] & (offs_c < C)[None, :]
        out_off = offs_b[:, None] * C + offs_c[None, :]
        if UNIFORM:
            j = offs_c[None, :] + tl.zeros([BLOCK_B, BLOCK_C], tl.int32)
            f_max = fill_draw(k0, k1, ids[:, None], j)
            f_min = fill_draw(k0, k1, ids[:, None], j + C)
        else:
            v = tl.load(fv_ptr + offs_c * fv_s0, mask=offs_c < C, other=0.0).to(tl.float32)
            f_max = v[None, :] + tl.zeros([BLOCK_B, BLOCK_C], tl.float32)
            f_min = f_max
        tl.store(fill_max_ptr + out_off, f_max, mask=m)
        tl.store(fill_min_ptr + out_off, f_min, mask=m)


def sample_boxes(peak_max, peak_min, quality, sample_ids, seed, height: int, width: int,
                 channels: int, box_params, fill_value):
    """Launcher with the signature of torch.ops.anm_fast.sample_boxes."""
    params = BoxParams.unpack(box_params)
    uniform_fill = params.uniform_fill
    if peak_max.dim() != 2 or peak_max.shape[1] != 2 or peak_min.shape != peak_max.shape:
        raise ValueError("sample_boxes: peak_max and peak_min must be (B, 2)")
    B = peak_max.shape[0]
    if quality.shape != (B,) or sample_ids.shape != (B,):
        raise ValueError("sample_boxes: quality and sample_ids must be (B,)")
    if seed.numel() != 1:
        raise ValueError("sample_boxes: seed must hold one integer")
    if height <= 0 or width <= 0 or channels <= 0:
        raise ValueError("sample_boxes: image size and channels must be positive")
    if not uniform_fill and fill_value.numel() != channels:
        raise ValueError("sample_boxes: fill_value must hold one value per channel")
    device = peak_max.device
    box_max = torch.empty((B, 4), dtype=torch.int64, device=device)
    box_min = torch.empty((B, 4), dtype=torch.int64, device=device)
    ratio = torch.empty((B,), dtype=torch.float32, device=device)
    fill_max = torch.empty((B, channels), dtype=torch.float32, device=device)
    fill_min = torch.empty((B, channels), dtype=torch.float32, device=device)
    if B == 0:
        return box_max, box_min, ratio, fill_max, fill_min
    seed, key_lo, key_hi, seed_on_host = seed_args(seed, device)
    # constant fills may come as a CPU tensor (the API keeps them there): moved only then
    fv = fills_on(fill_value, device) if not uniform_fill else ratio  # unused when uniform
    BLOCK_B = 128  # fixed: a block size following B would recompile for a last partial batch
    BLOCK_C = min(next_pow2(channels), 16)
    grid = (triton.cdiv(B, BLOCK_B),)
    with device_guard(peak_max):
        _sample_boxes_kernel[grid](
            peak_max, peak_max.stride(0), peak_max.stride(1),
            peak_min, peak_min.stride(0), peak_min.stride(1),
            quality, quality.stride(0), sample_ids, sample_ids.stride(0), seed, key_lo, key_hi,
            fv, fv.stride(0) if fv.dim() else 1,
            box_max, box_min, ratio, fill_max, fill_min,
            B, height, width, channels, **box_kernel_args(params), SEED_ON_HOST=seed_on_host, BLOCK_B=BLOCK_B, BLOCK_C=BLOCK_C, num_warps=4, **NO_FMA)
    return box_max, box_min, ratio, fill_max, fill_min
