"""Helpers shared by the Triton kernels: the Philox stream, float64 arguments, launch options.

The random stream and the box geometry repeat csrc/anm_common.h operation by operation (same
float64 expression order, round half to even via floor), so the Triton kernels, the C++/CUDA
kernels and anm_fast/reference.py give bit-identical boxes and fills. Kernels that evaluate the
geometry are launched with `enable_fp_fusion=False`: a fused multiply-add would round differently.
"""
from __future__ import annotations

import contextlib
import struct

import torch
import triton
import triton.language as tl

from anm_fast.config import BoxParams

# Launch keyword that keeps a*b+c as two rounded operations (ignored by the interpreter).
NO_FMA = {"enable_fp_fusion": False}


def f64_bits(value: float) -> int:
    """The IEEE-754 bits of a float64 as a signed int64. Triton passes Python floats as float32,
    so float64 parameters travel as their bits and are bitcast back in the kernel (`f64_arg`)."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


# The box parameters as the Triton kernels take them (box_kernel_args): the float64 values as their
# bits, and 1 / aspect_lo; the flags become the kernels' CENTER and UNIFORM constexprs.
BOX_BITS = ("lo_bits", "hi_bits", "gain_bits", "aspect_bits", "hi_aspect_bits", "scale_bits")


def box_kernel_args(p: BoxParams) -> dict:
    """Keyword arguments of a Triton kernel that calls box_shape and place_box, from the ops'
    unpacked `box_params` (anm_fast.config.BoxParams)."""
    values = (p.area_lo, p.area_hi, p.quality_gain, p.aspect_lo, 1.0 / p.aspect_lo, p.area_scale)
    args = {name: f64_bits(v) for name, v in zip(BOX_BITS, values)}
    args.update(CENTER=bool(p.center_anchor), UNIFORM=bool(p.uniform_fill))
    return args


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' device."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


_DEVICE_FILLS: dict = {}


def fills_on(fill_value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The constant fills as a float32 tensor on `device`. A CPU tensor (how anm_fast passes them)
    is copied to the device once per distinct value list and device, then reused: after the first
    call no host-to-device copy is issued, so the op can be captured in a CUDA graph."""
    if fill_value.device == torch.device(device):
        return fill_value.reshape(-1).to(torch.float32)
    key = (tuple(float(v) for v in fill_value.reshape(-1).tolist()), str(device))
    cached = _DEVICE_FILLS.get(key)
    if cached is None:
        if len(_DEVICE_FILLS) >= 64:  # a handful of configs in practice; never grows unbounded
            _DEVICE_FILLS.clear()
        cached = torch.tensor(key[0], dtype=torch.float32, device=device)
        _DEVICE_FILLS[key] = cached
    return cached


def seed_args(seed: torch.Tensor, device: torch.device) -> tuple:
    """How a kernel gets its seed: (seed tensor, key_lo, key_hi, SEED_ON_HOST).

    A CPU seed (every int or None seed of the API) is read here, on the host, and travels as the
    two 32-bit halves of the Philox key, each as a signed 32-bit launch argument (always the same
    argument types, so no recompilation per seed value). No host-to-device copy is issued, so the
    launch can be captured in a CUDA graph (the graph then replays that seed, as with the C++
    kernels). A seed tensor on the batch's device is read inside the kernel instead: a replayed
    graph then follows its current value."""
    seed = seed.reshape(())
    if seed.device.type == "cpu":
        value = int(seed.item()) & 0xFFFFFFFFFFFFFFFF
        lo, hi = value & 0xFFFFFFFF, value >> 32
        return seed, lo - (1 << 32) * (lo >> 31), hi - (1 << 32) * (hi >> 31), True
    if seed.device != torch.device(device):
        raise ValueError(f"seed is on {seed.device} but the batch is on {device}: pass it on the "
                         f"CPU or on the batch's device")
    return seed, 0, 0, False


def opmath_is_f64(*dtypes: torch.dtype) -> bool:
    return any(d == torch.float64 for d in dtypes)


# ---------------------------------------------------------------------------------------- device
@triton.jit
def as_type(v, dtype: tl.constexpr):
    """v converted to `dtype`, also when v is an int argument that Triton specialised to a
    compile-time constant (it does so for the value 1), which has no `.to`."""
    return v + tl.zeros([], dtype)


@triton.jit
def f64_arg(bits):
    """Inverse of f64_bits (bits may arrive as int32 when small, hence the widening first)."""
    return as_type(bits, tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 values, the rounds of anm_common.h (and Random123)."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        n0 = hi1 ^ c1 ^ k0
        n2 = hi0 ^ c3 ^ k1
        c0 = n0
        c1 = lo1
        c2 = n2
        c3 = lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def seed_key(seed_ptr, key_lo, key_hi, SEED_ON_HOST: tl.constexpr):
    """The Philox key (k0, k1) as uint32: from the halves read on the host (seed_args), or from
    the int64 seed tensor on the device."""
    if SEED_ON_HOST:
        k0 = as_type(key_lo, tl.int32).to(tl.uint32, bitcast=True)
        k1 = as_type(key_hi, tl.int32).to(tl.uint32, bitcast=True)
    else:
        seed = tl.load(seed_ptr).to(tl.int64)
        k0 = seed.to(tl.uint32)
        k1 = (seed >> 32).to(tl.uint32)
    return k0, k1


@triton.jit
def sample_stream(k0, k1, sample_id, block):
    """The 4 words of block `block` of each sample's stream: key = seed (k0, k1 from seed_key),
    counter = (id, block, 0). sample_id: int64 tensor; block: int32/uint32 tensor or scalar."""
    c0 = sample_id.to(tl.uint32)
    c1 = (sample_id >> 32).to(tl.uint32)
    c2 = (block + tl.zeros_like(c0)).to(tl.uint32)
    c3 = tl.zeros_like(c0)
    return philox4x32_10(c0, c1, c2, c3, k0, k1)


@triton.jit
def uniform_f64(word):
    """uint32 -> [0, 1) in float64, exactly word * 2**-32."""
    return word.to(tl.float64) * 2.3283064365386963e-10


@triton.jit
def uniform_f32(word):
    """uint32 -> [0, 1) in float32 from the top 24 bits, exact."""
    return (word >> 8).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def fill_draw(k0, k1, sample_id, j):
    """Fill draw j (0..2C-1) of a sample: block 1 + j // 4, word j % 4."""
    w0, w1, w2, w3 = sample_stream(k0, k1, sample_id, 1 + j // 4)
    r = j % 4
    word = tl.where(r == 0, w0, tl.where(r == 1, w1, tl.where(r == 2, w2, w3)))
    return uniform_f32(word)


@triton.jit
def round_half_even(v):
    f = tl.floor(v)
    diff = v - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    return tl.where((diff > 0.5) | ((diff == 0.5) & odd), f + 1.0, f)


@triton.jit
def box_shape(k0, k1, sample_id, quality, H, W, lo_bits, hi_bits, gain_bits, aspect_bits,
              hi_aspect_bits, scale_bits):
    """Mask ratio s (float64) and box height/width (int64): anm_common.h box_shape, same order.
    quality is float32; the parameters arrive as their float64 bits (BOX_BITS, box_kernel_args)."""
    area_lo = f64_arg(lo_bits)
    area_hi = f64_arg(hi_bits)
    quality_gain = f64_arg(gain_bits)
    aspect_lo = f64_arg(aspect_bits)
    hi_aspect = f64_arg(hi_aspect_bits)
    area_scale = f64_arg(scale_bits)
    w0, w1, _w2, _w3 = sample_stream(k0, k1, sample_id, 0)
    u_area = uniform_f64(w0)
    u_aspect = uniform_f64(w1)
    s = (area_lo + (area_hi - area_lo) * u_area) + quality_gain * (1.0 - quality.to(tl.float64))
    rho = aspect_lo + (hi_aspect - aspect_lo) * u_aspect
    Hf = as_type(H, tl.float64)
    Wf = as_type(W, tl.float64)
    area = ((area_scale * s) * Hf) * Wf
    bh = round_half_even(tl.sqrt(area * rho))
    bw = round_half_even(tl.sqrt(area / rho))
    bh = tl.where(bh < 1.0, 1.0, tl.where(bh > Hf, Hf, bh))
    bw = tl.where(bw < 1.0, 1.0, tl.where(bw > Wf, Wf, bw))
    return s, bh.to(tl.int64), bw.to(tl.int64)


@triton.jit
def place_box(r, c, bh, bw, H, W, CENTER: tl.constexpr):
    """Top-left corner of a bh x bw box at peak (r, c), shifted to lie inside the image."""
    y = r
    x = c
    if CENTER:
        y = y - bh // 2
        x = x - bw // 2
    y = tl.minimum(tl.maximum(y, 0), H - bh)
    x = tl.minimum(tl.maximum(x, 0), W - bw)
    return y, x
