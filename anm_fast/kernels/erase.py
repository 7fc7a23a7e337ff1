"""Triton erase_and_modulate and its backward: one launch each.

Forward: every program reads one tile of x (in the output's memory order, any input strides) and
writes it twice, into the max-erased copy n = b and the min-erased copy n = B + b of the
(2B, C, H, W) output, with the box pixels replaced by the box's per-channel fill. The first tile
program of each sample also writes that sample's modulated targets.
Backward: grad_x = g[b] outside box_max[b] + g[B + b] outside box_min[b], one read of each.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from anm_fast.reference import erased_memory_format

from ._common import NO_FMA, device_guard, f64_arg, f64_bits, next_pow2, opmath_is_f64
from ._modulate import modulate_row, modulate_row_backward

BLOCK = 1024


@triton.jit
def _sample_tile(tiles, C, H, W, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """This program's tile: sample b (int64), the tile's flat offsets inside the sample (in the
    output's memory order, NCHW or NHWC), their mask, their (c, y, x) and the sample size."""
    pid = tl.program_id(0)
    b = (pid // tiles).to(tl.int64)
    tile = pid % tiles
    CHW = C * H * W
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    if CHANNELS_LAST:
        c = offs % C
        x = (offs // C) % W
        y = offs // (C * W)
    else:
        x = offs % W
        y = (offs // W) % H
        c = offs // (H * W)
    return b, tile, offs, offs < CHW, c, y, x, CHW


@triton.jit
def in_box(box_ptr, bs0, bs1, b, y, x):
    row = box_ptr + b * bs0
    y0 = tl.load(row).to(tl.int64)
    x0 = tl.load(row + bs1).to(tl.int64)
    bh = tl.load(row + 2 * bs1).to(tl.int64)
    bw = tl.load(row + 3 * bs1).to(tl.int64)
    return (y >= y0) & (y < y0 + bh) & (x >= x0) & (x < x0 + bw)


@triton.jit(do_not_specialize=["B", "gain_bits"])
def _erase_kernel(x_ptr, xs0, xs1, xs2, xs3, out_ptr, t_ptr, ts0, ts1, t_out_ptr,
                  bmax_ptr, bmax_s0, bmax_s1, bmin_ptr, bmin_s0, bmin_s1,
                  fmax_ptr, fmax_s0, fmax_s1, fmin_ptr, fmin_s0, fmin_s1, ratio_ptr, rs0,
                  B, C, H, W, N, gain_bits, tiles,
                  CHANNELS_LAST: tl.constexpr, OPM64: tl.constexpr, MODULATE: tl.constexpr,
                  BLOCK: tl.constexpr, BLOCK_N: tl.constexpr):
    b, tile, offs, mask, c, y, x, CHW = _sample_tile(tiles, C, H, W, CHANNELS_LAST, BLOCK)
    src = (x_ptr + b * xs0 + c.to(tl.int64) * xs1 + y.to(tl.int64) * xs2
           + x.to(tl.int64) * xs3)
    v = tl.load(src, mask=mask)
    m_max = in_box(bmax_ptr, bmax_s0, bmax_s1, b, y, x)
    m_min = in_box(bmin_ptr, bmin_s0, bmin_s1, b, y, x)
    f_max = tl.load(fmax_ptr + b * fmax_s0 + c * fmax_s1, mask=mask & m_max, other=0.0)
    f_min = tl.load(fmin_ptr + b * fmin_s0 + c * fmin_s1, mask=mask & m_min, other=0.0)
    f_max = f_max.to(tl.float32).to(v.dtype)
    f_min = f_min.to(tl.float32).to(v.dtype)
    dst = out_ptr + b * CHW + offs
    tl.store(dst, tl.where(m_max, f_max, v), mask=mask)
    tl.store(out_ptr + (b + B) * CHW + offs, tl.where(m_min, f_min, v), mask=mask)  # int64
    if MODULATE and tile == 0:
        ratio = tl.load(ratio_ptr + b * rs0).to(tl.float32)
        modulate_row(t_ptr, ts0, ts1, t_out_ptr, ratio, b, N, f64_arg(gain_bits), OPM64, BLOCK_N)


@triton.jit(do_not_specialize=["B", "gain_bits"])
def _erase_backward_kernel(g_ptr, gs0, gs1, gs2, gs3, gx_ptr, gt_ptr, gts0, gts1,
                           t_ptr, ts0, ts1, gt_out_ptr,
                           bmax_ptr, bmax_s0, bmax_s1, bmin_ptr, bmin_s0, bmin_s1, ratio_ptr, rs0,
                           B, C, H, W, N, gain_bits, tiles,
                           CHANNELS_LAST: tl.constexpr, X64: tl.constexpr, T64: tl.constexpr,
                           G64: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr):
    # X64 / T64 / G64: grad_erased / targets / grad_targets are float64 (their opmath types).
    b, tile, offs, mask, c, y, x, CHW = _sample_tile(tiles, C, H, W, CHANNELS_LAST, BLOCK)
    inner = c.to(tl.int64) * gs1 + y.to(tl.int64) * gs2 + x.to(tl.int64) * gs3
    keep_max = (~in_box(bmax_ptr, bmax_s0, bmax_s1, b, y, x)) & mask
    keep_min = (~in_box(bmin_ptr, bmin_s0, bmin_s1, b, y, x)) & mask
    g0 = tl.load(g_ptr + b * gs0 + inner, mask=keep_max, other=0.0)
    g1 = tl.load(g_ptr + (b + B) * gs0 + inner, mask=keep_min, other=0.0)  # int64 offsets
    if X64:
        acc = g0.to(tl.float64) + g1.to(tl.float64)
    else:
        acc = g0.to(tl.float32) + g1.to(tl.float32)
    tl.store(gx_ptr + b * CHW + offs, acc.to(g0.dtype), mask=mask)
    if tile == 0:
        modulate_row_backward(gt_ptr, gts0, gts1, t_ptr, ts0, ts1, gt_out_ptr, ratio_ptr, rs0, b,
                              N, f64_arg(gain_bits), T64, G64, BLOCK_N)


def _check_common(B, C, targets, box_max, box_min, ratio, name):
    if targets.dim() != 2 or targets.shape[0] != B or targets.shape[1] < 2:
        raise ValueError(f"{name}: targets must be (B, N) with N >= 2, got {tuple(targets.shape)}")
    for bname, box in (("box_max", box_max), ("box_min", box_min)):
        if tuple(box.shape) != (B, 4):
            raise ValueError(f"{name}: {bname} must be (B, 4), got {tuple(box.shape)}")
    if tuple(ratio.shape) != (B,):
        raise ValueError(f"{name}: ratio must be (B,)")


def erase_and_modulate(x, targets, box_max, box_min, fill_max, fill_min, ratio,
                       label_gain: float):
    """Launcher with the signature of torch.ops.anm_fast.erase_and_modulate."""
    if x.dim() != 4:
        raise ValueError(f"erase_and_modulate: x must be (B, C, H, W), got {tuple(x.shape)}")
    B, C, H, W = x.shape
    _check_common(B, C, targets, box_max, box_min, ratio, "erase_and_modulate")
    if tuple(fill_max.shape) != (B, C) or fill_min.shape != fill_max.shape:
        raise ValueError("erase_and_modulate: fills must be (B, C)")
    erased = torch.empty((2 * B, C, H, W), dtype=x.dtype, device=x.device,
                         memory_format=erased_memory_format(x))
    t_out = torch.empty(targets.shape, dtype=targets.dtype, device=targets.device)
    if B == 0:
        return erased, t_out
    with device_guard(x):
        launch_erase(x, erased, targets, t_out, box_max, box_min, fill_max, fill_min, ratio,
                     label_gain, modulate=True)
    return erased, t_out


def launch_erase(x, erased, targets, t_out, box_max, box_min, fill_max, fill_min, ratio,
                 label_gain: float, modulate: bool) -> None:
    """The erase launch into `erased` (allocated by the caller in erased_memory_format(x));
    with `modulate`, the first tile program of each sample also writes its targets to t_out."""
    B, C, H, W = x.shape
    N = targets.shape[1]
    tiles = max(triton.cdiv(C * H * W, BLOCK), 1)
    _erase_kernel[(B * tiles,)](
        x, *x.stride(), erased, targets, *targets.stride(), t_out,
        box_max, *box_max.stride(), box_min, *box_min.stride(),
        fill_max, *fill_max.stride(), fill_min, *fill_min.stride(), ratio, ratio.stride(0),
        B, C, H, W, N, f64_bits(label_gain), tiles,
        CHANNELS_LAST=erased_memory_format(x) == torch.channels_last,
        OPM64=opmath_is_f64(targets.dtype), MODULATE=bool(modulate),
        BLOCK=BLOCK, BLOCK_N=min(next_pow2(N), 1024), num_warps=4, **NO_FMA)


def erase_and_modulate_backward(grad_erased, grad_targets, targets, box_max, box_min, ratio,
                                label_gain: float):
    """Launcher with the signature of torch.ops.anm_fast.erase_and_modulate_backward."""
    if grad_erased.dim() != 4 or grad_erased.shape[0] % 2:
        raise ValueError("erase_and_modulate_backward: grad_erased must be (2B, C, H, W)")
    twoB, C, H, W = grad_erased.shape
    B = twoB // 2
    _check_common(B, C, targets, box_max, box_min, ratio, "erase_and_modulate_backward")
    if grad_targets.shape != targets.shape:
        raise ValueError("erase_and_modulate_backward: grad_targets must be (B, N)")
    fmt = erased_memory_format(grad_erased)
    grad_x = torch.empty((B, C, H, W), dtype=grad_erased.dtype, device=grad_erased.device,
                         memory_format=fmt)
    grad_t = torch.empty(targets.shape, dtype=grad_targets.dtype, device=grad_targets.device)
    if B == 0:
        return grad_x, grad_t
    N = targets.shape[1]
    tiles = max(triton.cdiv(C * H * W, BLOCK), 1)
    with device_guard(grad_erased):
        _erase_backward_kernel[(B * tiles,)](
            grad_erased, *grad_erased.stride(), grad_x, grad_targets, *grad_targets.stride(),
            targets, *targets.stride(), grad_t,
            box_max, *box_max.stride(), box_min, *box_min.stride(), ratio, ratio.stride(0),
            B, C, H, W, N, f64_bits(label_gain), tiles,
            CHANNELS_LAST=fmt == torch.channels_last, X64=opmath_is_f64(grad_erased.dtype),
            T64=opmath_is_f64(targets.dtype), G64=opmath_is_f64(grad_targets.dtype),
            BLOCK=BLOCK, BLOCK_N=min(next_pow2(N), 1024), num_warps=4, **NO_FMA)
    return grad_x, grad_t
