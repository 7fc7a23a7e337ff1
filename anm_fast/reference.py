"""Pure-PyTorch reference of every ANM op: readable, vectorised over the batch, the test oracle.

It is also what serves the ops when the compiled extension is missing. Each function here has the
exact signature of the corresponding `torch.ops.anm_fast.*` operator (see `csrc/ops.cpp`).

The random stream and the box geometry follow the rules in `csrc/anm_common.h` operation by
operation (same float64 expression order, no fused multiply-add, round half to even), so the
reference, the C++ kernels and the GPU kernels give bit-identical boxes and fills.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .config import BoxParams

# ------------------------------------------------------------------------------------------------
# Philox4x32-10 on int64 tensors holding uint32 values (torch has no full uint32 arithmetic).
_MASK32 = 0xFFFFFFFF
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85

# Counter word 2 of the stream: block 0 holds the geometry draws, blocks 1.. the fills.
GEOMETRY_BLOCK = 0
FILL_BLOCK0 = 1


def _mulhilo(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * b for a constant a < 2**32 and uint32 values b."""
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    x = b_lo * a  # < 2**48
    y = b_hi * a  # < 2**48
    lo = (((y & 0xFFFF) << 16) + x) & _MASK32
    hi = ((y + (x >> 16)) >> 16) & _MASK32
    return hi, lo


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32 (Salmon et al. 2011) on int64 tensors of uint32 values; returns 4 words."""
    k0 = torch.as_tensor(k0, dtype=torch.int64)
    k1 = torch.as_tensor(k1, dtype=torch.int64)
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _MASK32
        k1 = (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def split_seed(seed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    seed = seed.to(torch.int64)
    return seed & _MASK32, (seed >> 32) & _MASK32


def sample_stream(seed: torch.Tensor, sample_ids: torch.Tensor, block: int):
    """The 4 uint32 words of block `block` of each sample's stream (key = seed, counter = id)."""
    ids = sample_ids.to(torch.int64)
    k0, k1 = split_seed(seed)
    zeros = torch.zeros_like(ids)
    return philox4x32(ids & _MASK32, (ids >> 32) & _MASK32, zeros + block, zeros, k0, k1)


def uniform_f64(word: torch.Tensor) -> torch.Tensor:
    """uint32 -> [0, 1) in float64, exactly word * 2**-32."""
    return word.to(torch.float64) * (2.0 ** -32)


def uniform_f32(word: torch.Tensor) -> torch.Tensor:
    """uint32 -> [0, 1) in float32 from the top 24 bits, exact."""
    return (word >> 8).to(torch.float32) * (2.0 ** -24)


# ------------------------------------------------------------------------------------------------
# Stage 1: activation energy and peaks.
def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root, what every kernel computes (std::sqrt, sqrt.rn).
    torch's CPU sqrt is not always correctly rounded (its vectorised loop can be one ulp off,
    float32 and float64 alike); NumPy's is, and so is torch's on CUDA."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sqrt(x.numpy()))
    return x.sqrt()


def energy_map(fmap: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) -> (B, h, w) float32: sum of squares over channels, L2-normalised per sample.

    Summed in the one order every backend follows (csrc/anm_common.h, "energy summation order"),
    so the energies are the same bits on every backend and device: each position's squares in
    one chain over the channels k = 0, 1, ..., the norm's squares in one chain over the positions
    in row-major order, then e / norm rounded once to float32. (torch's sum would add in a tree
    whose shape depends on the device and the layout.)"""
    acc = torch.float64 if fmap.dtype == torch.float64 else torch.float32
    B, K, h, w = fmap.shape
    energy = torch.zeros((B, h, w), dtype=acc, device=fmap.device)
    for k in range(K):
        v = fmap[:, k].to(acc)
        energy = energy + v * v
    flat = energy.reshape(B, h * w)
    sq = torch.zeros((B,), dtype=acc, device=fmap.device)
    for p in range(h * w):
        sq = sq + flat[:, p] * flat[:, p]
    norm = sqrt_rn(sq)
    norm = torch.where(norm < 1e-12, torch.full_like(norm, 1e-12), norm)  # NaN stays NaN
    return (energy / norm[:, None, None]).to(torch.float32)


def peaks_of_map(resized: torch.Tensor, band: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """First row-major pixel within band * range of the max (resp. min) of each (B, H, W) map."""
    B, H, W = resized.shape
    flat = resized.reshape(B, H * W)
    hi = flat.amax(dim=1, keepdim=True)
    lo = flat.amin(dim=1, keepdim=True)
    spread = (hi - lo) * float(band)
    # argmax of a boolean mask returns the first True: first occurrence on ties.
    idx_max = (flat >= hi - spread).to(torch.uint8).argmax(dim=1)
    idx_min = (flat <= lo + spread).to(torch.uint8).argmax(dim=1)

    def to_rc(idx):
        return torch.stack((idx // W, idx % W), dim=1).to(torch.int64)

    return to_rc(idx_max), to_rc(idx_min)


def linear_taps(in_size: int, out_size: int, device=None):
    """Source indices (i0, i1) and weight lambda of each output index, half-pixel centres and
    edge clamping (interpolate(bilinear, align_corners=False)), in float32 step by step."""
    # Divided by a tensor, not a Python number: on CUDA, ATen turns a division by a number into a
    # multiplication by its reciprocal, which differs from the kernels' quotient in the last bit.
    scale = (torch.tensor(float(in_size), dtype=torch.float32, device=device)
             / torch.tensor(float(out_size), dtype=torch.float32, device=device))
    dst = torch.arange(out_size, dtype=torch.float32, device=device)
    src = (scale * (dst + 0.5) - 0.5).clamp_min(0.0)
    i0 = src.floor().to(torch.int64).clamp_max(in_size - 1)
    lam = (src - i0.to(torch.float32)).clamp(0.0, 1.0)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, lam


def lerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # a + (b - a) * w rather than w0 * a + w1 * b: exact where a == b (clamped borders), so the
    # plateaus of the resized map hold equal values and every backend breaks their ties alike.
    return a + (b - a) * w


def bilinear_resize(energy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h, w) -> (B, H, W): the numbers of F.interpolate(bilinear, align_corners=False) up to
    float rounding, written out so that the kernels can reproduce them bit for bit."""
    _, h, w = energy.shape
    y0, y1, ly = linear_taps(h, height, energy.device)
    x0, x1, lx = linear_taps(w, width, energy.device)
    rows = lerp(energy[:, :, x0], energy[:, :, x1], lx)       # (B, h, W)
    return lerp(rows[:, y0, :], rows[:, y1, :], ly[:, None])   # (B, H, W)


def activation_peaks(fmap: torch.Tensor, height: int, width: int, band: float):
    energy = energy_map(fmap)
    resized = bilinear_resize(energy, height, width)
    peak_max, peak_min = peaks_of_map(resized, band)
    return peak_max, peak_min, energy


# ------------------------------------------------------------------------------------------------
# Stage 2: label-quality guided box sampling.
def round_half_even(v: torch.Tensor) -> torch.Tensor:
    """Round half to even written with floor only, as the kernels do it (no libm rint needed)."""
    f = torch.floor(v)
    diff = v - f
    odd = torch.remainder(f, 2.0) == 1.0
    up = (diff > 0.5) | ((diff == 0.5) & odd)
    return f + up.to(v.dtype)


def box_geometry(u_area, u_aspect, quality, height, width, p: BoxParams):
    """Mask ratio s (float64) and box height/width (int64) from two uniform draws per sample."""
    s = ((p.area_lo + (p.area_hi - p.area_lo) * u_area)
         + p.quality_gain * (1.0 - quality.to(torch.float64)))
    hi_aspect = 1.0 / p.aspect_lo
    rho = p.aspect_lo + (hi_aspect - p.aspect_lo) * u_aspect
    area = p.area_scale * s * float(height) * float(width)
    bh = round_half_even(sqrt_rn(area * rho)).clamp(1.0, float(height)).to(torch.int64)
    bw = round_half_even(sqrt_rn(area / rho)).clamp(1.0, float(width)).to(torch.int64)
    return s, bh, bw


def place_box(peak: torch.Tensor, bh: torch.Tensor, bw: torch.Tensor, height: int, width: int,
              center_anchor: bool) -> torch.Tensor:
    y0, x0 = peak[:, 0], peak[:, 1]
    if center_anchor:
        y0 = y0 - bh // 2
        x0 = x0 - bw // 2
    y0 = torch.minimum(torch.clamp(y0, min=0), height - bh)
    x0 = torch.minimum(torch.clamp(x0, min=0), width - bw)
    return torch.stack((y0, x0, bh, bw), dim=1)


def sample_boxes(peak_max, peak_min, quality, sample_ids, seed, height: int, width: int,
                 channels: int, box_params, fill_value):
    p = BoxParams.unpack(box_params)
    device = peak_max.device
    ids = sample_ids.to(device=device, dtype=torch.int64)
    seed = seed.to(device)
    w0, w1, _, _ = sample_stream(seed, ids, GEOMETRY_BLOCK)
    s, bh, bw = box_geometry(uniform_f64(w0), uniform_f64(w1), quality, height, width, p)
    box_max = place_box(peak_max.to(torch.int64), bh, bw, height, width, p.center_anchor)
    box_min = place_box(peak_min.to(torch.int64), bh, bw, height, width, p.center_anchor)
    B = ids.shape[0]
    if p.uniform_fill:
        n_blocks = (2 * channels + 3) // 4
        words = [torch.stack(sample_stream(seed, ids, FILL_BLOCK0 + j), dim=1)
                 for j in range(n_blocks)]
        draws = uniform_f32(torch.cat(words, dim=1)) if words else torch.zeros(B, 0, device=device)
        fill_max = draws[:, :channels].contiguous()
        fill_min = draws[:, channels:2 * channels].contiguous()
    else:
        value = fill_value.to(device=device, dtype=torch.float32).reshape(1, channels)
        fill_max = value.expand(B, channels).clone()
        fill_min = value.expand(B, channels).clone()
    return box_max, box_min, s.to(torch.float32), fill_max, fill_min


# ------------------------------------------------------------------------------------------------
# Stage 3: input and label modulation.
def box_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4) boxes -> (B, 1, H, W) boolean indicator."""
    ys = torch.arange(height, device=box.device)
    xs = torch.arange(width, device=box.device)
    y0, x0, bh, bw = (box[:, i, None] for i in range(4))
    in_y = (ys >= y0) & (ys < y0 + bh)
    in_x = (xs >= x0) & (xs < x0 + bw)
    return (in_y[:, :, None] & in_x[:, None, :])[:, None]


def erased_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The erased batch keeps a channels_last input channels_last; everything else is contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _classes_but_one(t: torch.Tensor) -> torch.Tensor:
    """N - 1 for (B, N) targets as a 0-d tensor on their device: a division by it is a true
    division on every device (a Python divisor is a reciprocal multiply on CUDA, see
    linear_taps)."""
    return torch.tensor(float(t.shape[1] - 1), dtype=t.dtype, device=t.device)


def label_shift(targets: torch.Tensor, ratio: torch.Tensor, label_gain: float):
    """Top class k, the shift d = min(label_gain * s, t_k) and whether the clamp is active, in
    the targets' opmath type (s read as float32, as the kernels do)."""
    t = targets.to(_opmath(targets.dtype))
    k = t.argmax(dim=1)
    t_k = t.gather(1, k[:, None])[:, 0]
    want = ratio.to(torch.float32).to(t.dtype) * label_gain
    clamped = want > t_k
    d = torch.where(clamped, t_k, want)
    return t, k, d, clamped


def modulate_targets(targets: torch.Tensor, ratio: torch.Tensor, label_gain: float) -> torch.Tensor:
    t, k, d, _ = label_shift(targets, ratio, label_gain)
    out = t + (d / _classes_but_one(t))[:, None]
    out.scatter_(1, k[:, None], (t.gather(1, k[:, None])[:, 0] - d)[:, None])
    return out.to(targets.dtype)


def erase_and_modulate(x, targets, box_max, box_min, fill_max, fill_min, ratio,
                       label_gain: float):
    B, C, H, W = x.shape
    boxes = torch.cat((box_max, box_min), dim=0)
    fills = torch.cat((fill_max, fill_min), dim=0).to(x.dtype)[:, :, None, None]
    mask = box_mask(boxes, H, W)
    erased = torch.where(mask, fills, x.repeat(2, 1, 1, 1))
    erased = erased.contiguous(memory_format=erased_memory_format(x))
    return erased, modulate_targets(targets, ratio, label_gain)


def erase_and_modulate_backward(grad_erased, grad_targets, targets, box_max, box_min, ratio,
                                label_gain: float):
    twoB, C, H, W = grad_erased.shape
    B = twoB // 2
    boxes = torch.cat((box_max, box_min), dim=0)
    keep = ~box_mask(boxes, H, W)
    g = torch.where(keep, grad_erased, torch.zeros((), dtype=grad_erased.dtype,
                                                   device=grad_erased.device))
    grad_x = (g[:B] + g[B:]).contiguous(memory_format=erased_memory_format(grad_erased))
    # Label shift: t'_c = t_c + d/(N-1), t'_k = t_k - d. Only where the clamp d = t_k is active
    # does t_k reach the output: then t'_k = 0 and every other class gains t_k / (N-1).
    # The arg-max and clamp in the targets' opmath type, the sum in the gradient's.
    _, k, _, clamped = label_shift(targets, ratio, label_gain)
    g_t = grad_targets.to(_opmath(grad_targets.dtype))
    g_k = g_t.gather(1, k[:, None])[:, 0]
    others = g_t.scatter(1, k[:, None], torch.zeros_like(g_k)[:, None]).sum(dim=1)
    spread = others / _classes_but_one(g_t)
    new_k = torch.where(clamped, spread, g_k)
    grad_t = g_t.scatter(1, k[:, None], new_k[:, None]).to(grad_targets.dtype)
    return grad_x, grad_t


# ------------------------------------------------------------------------------------------------
# Stages 1-3 in one call.
def anm_mask(x, fmap, targets, quality, sample_ids, seed, band: float, box_params, fill_value,
             label_gain: float, check_values: bool):
    """activation_peaks -> sample_boxes -> erase_and_modulate, with the outputs of
    torch.ops.anm_fast.anm_mask (sample_ids None: the batch positions). The value checks
    (`check_values`) are the caller's."""
    B, C, H, W = x.shape
    if sample_ids is None:
        sample_ids = torch.arange(B, device=x.device)
    peak_max, peak_min, energy = activation_peaks(fmap, H, W, band)
    boxes = sample_boxes(peak_max, peak_min, quality, sample_ids, seed, H, W, C, box_params,
                         fill_value)
    box_max, box_min, ratio, fill_max, fill_min = boxes
    erased, targets_out = erase_and_modulate(x, targets, box_max, box_min, fill_max, fill_min,
                                             ratio, label_gain)
    return (erased, targets_out, *boxes, peak_max, peak_min, energy)
