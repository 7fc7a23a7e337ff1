"""Triton anm_mask: peaks, boxes and erasing of ANM (torch.ops.anm_fast.anm_mask) in two launches.

Launch 1, one program per sample: the feature map read once (energy, L2 norm and the peak search
over the resized map with the band rule, the resized map never written), the box and both fill
vectors from the sample's Philox stream, the mask ratio and the modulated targets.
Launch 2, one program per tile of one sample's image: x read once, both erased copies written
once (kernels/erase.py, reading the box and fills that launch 1 wrote: 6 int64 and 2C floats).

Why two launches and not one: every tile of a sample needs that sample's box, which needs the
whole feature map of the sample, and Triton has no grid-wide barrier. One program per sample
streaming its whole image would leave the GPU with B programs (256 at ImageNet shapes for ~130
SMs: too few loads in flight to approach the copy bandwidth); recomputing the peak search in
every tile program would read each feature map once per tile. The second launch reads a few
bytes per sample that the first one wrote; both are queued back to back on the current stream
(no host synchronisation between them).

The results are those of activation_peaks -> sample_boxes -> erase_and_modulate, bit for bit:
the same device functions compute them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from anm_fast.reference import erased_memory_format

from anm_fast.config import BoxParams

from ._common import (BOX_BITS, NO_FMA, box_kernel_args, box_shape, device_guard, f64_arg,
                      f64_bits, fill_draw, fills_on, next_pow2, opmath_is_f64, place_box,
                      seed_args, seed_key)
from ._modulate import modulate_row
from .activation_peaks import peak_blocks, raw_energy_buffer, sample_peaks
from .erase import launch_erase


@triton.jit
def _store_box(box_ptr, b, y0, x0, bh, bw):
    tl.store(box_ptr + b * 4 + 0, y0)
    tl.store(box_ptr + b * 4 + 1, x0)
    tl.store(box_ptr + b * 4 + 2, bh)
    tl.store(box_ptr + b * 4 + 3, bw)


@triton.jit(do_not_specialize=["key_lo", "key_hi", *BOX_BITS, "label_gain_bits"])
def _mask_params_kernel(f_ptr, fsB, fsK, fsH, fsW, K, h, w, H, W, C, band, raw_ptr, energy_ptr,
                        q_ptr, q_s0, id_ptr, id_s0, seed_ptr, key_lo, key_hi, fv_ptr, fv_s0,
                        t_ptr, ts0, ts1, t_out_ptr, N,
                        pmax_ptr, pmin_ptr, bmax_ptr, bmin_ptr, ratio_ptr, fmax_ptr, fmin_ptr,
                        label_gain_bits, lo_bits, hi_bits, gain_bits, aspect_bits,
                        hi_aspect_bits, scale_bits, HAS_IDS: tl.constexpr,
                        ACC64: tl.constexpr, CENTER: tl.constexpr, UNIFORM: tl.constexpr,
                        SEED_ON_HOST: tl.constexpr, OPM64: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    P = h * w
    # Stage 1: peaks (flat indices into the H x W resized map).
    idx_hi, idx_lo = sample_peaks(f_ptr + b * fsB, fsK, fsH, fsW, K, h, w, H, W, band,
                                  raw_ptr + b * P, energy_ptr + b * P, ACC64, BLOCK_P, BLOCK_HW)
    r_hi = (idx_hi // W).to(tl.int64)
    c_hi = (idx_hi % W).to(tl.int64)
    r_lo = (idx_lo // W).to(tl.int64)
    c_lo = (idx_lo % W).to(tl.int64)
    tl.store(pmax_ptr + b * 2, r_hi)
    tl.store(pmax_ptr + b * 2 + 1, c_hi)
    tl.store(pmin_ptr + b * 2, r_lo)
    tl.store(pmin_ptr + b * 2 + 1, c_lo)

    # Stage 2: the box shape from the sample's stream, placed at both peaks; the fills.
    k0, k1 = seed_key(seed_ptr, key_lo, key_hi, SEED_ON_HOST)
    if HAS_IDS:
        sid = tl.load(id_ptr + b * id_s0).to(tl.int64)
    else:  # no ids given: the batch position
        sid = b
    q = tl.load(q_ptr + b * q_s0).to(tl.float32)
    s, bh, bw = box_shape(k0, k1, sid, q, H, W, lo_bits, hi_bits, gain_bits, aspect_bits,
                          hi_aspect_bits, scale_bits)
    ya, xa = place_box(r_hi, c_hi, bh, bw, H, W, CENTER)
    yb, xb = place_box(r_lo, c_lo, bh, bw, H, W, CENTER)
    _store_box(bmax_ptr, b, ya, xa, bh, bw)
    _store_box(bmin_ptr, b, yb, xb, bh, bw)
    ratio = s.to(tl.float32)
    tl.store(ratio_ptr + b, ratio)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        mc = cc < C
        if UNIFORM:  # draw j < C: the max box's channel j; C + j: the min box's
            f_max = fill_draw(k0, k1, sid, cc)
            f_min = fill_draw(k0, k1, sid, cc + C)
        else:
            f_max = tl.load(fv_ptr + cc * fv_s0, mask=mc, other=0.0).to(tl.float32)
            f_min = f_max
        tl.store(fmax_ptr + b * C + cc, f_max, mask=mc)
        tl.store(fmin_ptr + b * C + cc, f_min, mask=mc)

    # Stage 3, the labels: this sample's modulated targets.
    modulate_row(t_ptr, ts0, ts1, t_out_ptr, ratio, b, N, f64_arg(label_gain_bits), OPM64,
                 BLOCK_N)


def anm_mask(x, fmap, targets, quality, sample_ids, seed, band: float, box_params, fill_value,
             label_gain: float, check_values: bool):
    """Launcher with the signature of torch.ops.anm_fast.anm_mask. The value checks
    (`check_values`) are made by the caller (anm_fast/backend.py) from the outputs."""
    params = BoxParams.unpack(box_params)
    uniform_fill = params.uniform_fill
    if x.dim() != 4 or fmap.dim() != 4:
        raise ValueError(f"anm_mask: x and fmap must be 4-D, got {tuple(x.shape)} and "
                         f"{tuple(fmap.shape)}")
    B, C, H, W = x.shape
    _, K, h, w = fmap.shape
    if fmap.shape[0] != B or K == 0 or h == 0 or w == 0:
        raise ValueError(f"anm_mask: fmap must be (B={B}, K, h, w) and non-empty, got "
                         f"{tuple(fmap.shape)}")
    if targets.dim() != 2 or targets.shape[0] != B or targets.shape[1] < 2:
        raise ValueError(f"anm_mask: targets must be (B, N) with N >= 2, got "
                         f"{tuple(targets.shape)}")
    if (tuple(quality.shape) != (B,) or seed.numel() != 1
            or (sample_ids is not None and tuple(sample_ids.shape) != (B,))):
        raise ValueError("anm_mask: quality and sample_ids must be (B,), seed one integer")
    if not uniform_fill and fill_value.numel() != C:
        raise ValueError("anm_mask: fill_value must hold one value per channel")
    device = x.device
    opt = {"device": device}
    erased = torch.empty((2 * B, C, H, W), dtype=x.dtype, memory_format=erased_memory_format(x),
                         **opt)
    t_out = torch.empty(targets.shape, dtype=targets.dtype, **opt)
    box_max = torch.empty((B, 4), dtype=torch.int64, **opt)
    box_min = torch.empty((B, 4), dtype=torch.int64, **opt)
    ratio = torch.empty((B,), dtype=torch.float32, **opt)
    fill_max = torch.empty((B, C), dtype=torch.float32, **opt)
    fill_min = torch.empty((B, C), dtype=torch.float32, **opt)
    peak_max = torch.empty((B, 2), dtype=torch.int64, **opt)
    peak_min = torch.empty((B, 2), dtype=torch.int64, **opt)
    energy = torch.empty((B, h, w), dtype=torch.float32, **opt)
    seed, key_lo, key_hi, seed_on_host = seed_args(seed, device)
    outs = (erased, t_out, box_max, box_min, ratio, fill_max, fill_min, peak_max, peak_min,
            energy)
    if B == 0:
        return outs
    if H <= 0 or W <= 0 or C <= 0:
        raise ValueError(f"anm_mask: x must have a non-empty image, got {tuple(x.shape)}")
    # constant fills may come as a CPU tensor (the API keeps them there): moved once, then cached
    fv = fills_on(fill_value, device) if not uniform_fill else ratio  # unused when uniform
    N = targets.shape[1]
    ids = ratio if sample_ids is None else sample_ids  # unused without ids
    with device_guard(x):
        _mask_params_kernel[(B,)](
            fmap, *fmap.stride(), K, h, w, H, W, C, float(band), raw_energy_buffer(energy, fmap),
            energy, quality, quality.stride(0), ids, ids.stride(0), seed, key_lo,
            key_hi, fv, fv.stride(0), targets, *targets.stride(), t_out, N,
            peak_max, peak_min, box_max, box_min, ratio, fill_max, fill_min,
            f64_bits(label_gain), **box_kernel_args(params), HAS_IDS=sample_ids is not None,
            ACC64=fmap.dtype == torch.float64, SEED_ON_HOST=seed_on_host,
            OPM64=opmath_is_f64(targets.dtype), **peak_blocks(h, w, H, W),
            BLOCK_C=min(next_pow2(C), 64), BLOCK_N=min(next_pow2(N), 1024), num_warps=4,
            **NO_FMA)
        launch_erase(x, erased, targets, t_out, box_max, box_min, fill_max, fill_min, ratio,
                     label_gain, modulate=False)
    return outs
