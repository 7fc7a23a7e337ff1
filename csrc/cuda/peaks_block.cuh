// Stage 1 for one sample by one thread block: the feature map read once, the channel energy and
// its L2 norm in anm_common.h's summation order (the CPU's), the normalised energy map written,
// and the peaks of its bilinear resize to H x W found without storing the resized map: every
// resized pixel is interpolated on the fly from the h x w map (kept in shared memory when it fits,
// else in a global scratch buffer whose size depends only on the shapes). The interpolation uses
// anm_common.h's linear_tap and the CPU kernel's exact float steps (lerp), so every value compared
// is bit-identical to the CPU's. Used by activation_peaks and by the fused anm_mask kernel.
#pragma once

#include <cfloat>
#include <cmath>

#include "../anm_common.h"
#include "cuda_utils.cuh"

namespace anm_fast {
namespace cuda {

constexpr int kPeakThreads = 256;
// Dynamic shared memory used per block, kept below the 48 KiB that needs no opt-in (the static
// reduction buffers take the rest).
constexpr int64_t kDynSmemLimit = 40 * 1024;

struct Tap {
  int i0, i1;
  float lambda;
};

// Bytes of the tap table for an H x W output, rounded up so the map after it stays aligned.
__host__ __device__ __forceinline__ int64_t tap_table_bytes(int64_t H, int64_t W) {
  return (static_cast<int64_t>(sizeof(Tap)) * (H + W) + 15) / 16 * 16;
}

__device__ __forceinline__ Tap make_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const LinearTap t = linear_tap(dst, in_size, out_size);
  Tap o;
  o.i0 = static_cast<int>(t.i0);
  o.i1 = static_cast<int>(t.i1);
  o.lambda = t.lambda;
  return o;
}

// Resized pixel (i, j): the CPU first resizes every source row horizontally, then blends two of
// those rows vertically, each step with anm_common.h's lerp; the same steps here.
template <typename acc_t>
__device__ __forceinline__ float resized_pixel(const acc_t* e, int w, const Tap& rt,
                                               const Tap& ct) {
  const acc_t* r0 = e + static_cast<int64_t>(rt.i0) * w;
  const acc_t* r1 = e + static_cast<int64_t>(rt.i1) * w;
  const float a = lerp(static_cast<float>(r0[ct.i0]), static_cast<float>(r0[ct.i1]), ct.lambda);
  const float b = lerp(static_cast<float>(r1[ct.i0]), static_cast<float>(r1[ct.i1]), ct.lambda);
  return lerp(a, b, rt.lambda);
}

// Walks this thread's pixels p = tid, tid + T, ... in increasing row-major order, keeping the
// row/column indices without a division per pixel.
struct PixelWalk {
  int i, j, di, dj, W;
  __device__ PixelWalk(int start, int step, int W_) : W(W_) {
    i = start / W_;
    j = start - i * W_;
    di = step / W_;
    dj = step - di * W_;
  }
  __device__ __forceinline__ void next() {
    i += di;
    j += dj;
    if (j >= W) {
      j -= W;
      ++i;
    }
  }
};

// Where a block keeps the tap table and the energy map: decided on the host from the shapes.
struct PeakSmem {
  bool map_in_smem, taps_in_smem;
  int64_t bytes;  // dynamic shared memory per block
};

inline PeakSmem plan_peak_smem(int64_t h, int64_t w, int64_t H, int64_t W, int64_t acc_size) {
  const int64_t map_bytes = h * w * acc_size;
  const int64_t tap_bytes = tap_table_bytes(H, W);
  PeakSmem s;
  if (map_bytes + tap_bytes <= kDynSmemLimit) {
    s.map_in_smem = s.taps_in_smem = true;
  } else if (tap_bytes <= kDynSmemLimit) {
    s.taps_in_smem = true;
    s.map_in_smem = false;
  } else {
    s.taps_in_smem = false;
    s.map_in_smem = map_bytes <= kDynSmemLimit;
  }
  s.bytes = (s.taps_in_smem ? tap_bytes : 0) + (s.map_in_smem ? map_bytes : 0);
  return s;
}

// Peaks of one sample, computed by the whole block (kPeakThreads threads, a multiple of 32; every
// thread must call it): `f` is the sample's (K, h, w) map at strides sK, sH, sW; `smem` the
// block's dynamic shared memory laid out by plan_peak_smem, `scratch` the sample's h * w
// accumulator map when it is not in shared memory. Writes the normalised energies to `energy`
// (h * w floats) and returns the row-major indices of the max and min peaks to every thread.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void block_peaks(const scalar_t* __restrict__ f, int64_t K, int h,
                                            int w, int64_t sK, int64_t sH, int64_t sW, int H,
                                            int W, float band, PeakSmem plan,
                                            unsigned char* smem, acc_t* scratch,
                                            float* __restrict__ energy, int* peak_hi,
                                            int* peak_lo) {
  __shared__ acc_t norm_sh;
  __shared__ float vred[kPeakThreads / kWarp];
  __shared__ int ired[kPeakThreads / kWarp];

  const int tid = threadIdx.x, T = blockDim.x;
  const int P = h * w;
  const int64_t HW = static_cast<int64_t>(H) * W;

  // Layout of the dynamic shared memory: [taps (H + W)] [map (P acc_t)], each part optional.
  Tap* taps = reinterpret_cast<Tap*>(smem);
  unsigned char* after_taps = smem + (plan.taps_in_smem ? tap_table_bytes(H, W) : 0);
  acc_t* e = plan.map_in_smem ? reinterpret_cast<acc_t*>(after_taps) : scratch;

  if (plan.taps_in_smem) {
    for (int k = tid; k < H; k += T) taps[k] = make_tap(k, h, H);
    for (int k = tid; k < W; k += T) taps[H + k] = make_tap(k, w, W);
  }

  // ---- 1. raw energies: one thread per position, one chain over the channels (anm_common.h).
  for (int p = tid; p < P; p += T) {
    const int y = p / w, x = p - y * w;
    e[p] = position_energy<acc_t>(f + y * sH + x * sW, K, sK);
  }
  __syncthreads();

  // ---- 2. L2 normalisation: the square sum is one chain over the positions (thread 0), so it
  // is the CPU's; the normalised float map is the energy output and is kept (as acc_t holding
  // the exact float) in e for the resize.
  if (tid == 0) {
    acc_t norm = sqrt(energy_square_sum(e, P));
    norm_sh = norm < acc_t(1e-12) ? acc_t(1e-12) : norm;
  }
  __syncthreads();
  const acc_t norm = norm_sh;
  for (int p = tid; p < P; p += T) {
    const float v = static_cast<float>(e[p] / norm);
    energy[p] = v;
    e[p] = static_cast<acc_t>(v);
  }
  __syncthreads();

  // ---- 3. extremes of the resized map (first occurrence on ties).
  float hi = -INFINITY, lo = INFINITY;
  int ihi = INT_MAX, ilo = INT_MAX;
  if (tid < HW) {
    PixelWalk pw(tid, T, W);
    for (int p = tid; p < HW; p += T, pw.next()) {
      const Tap rt = plan.taps_in_smem ? taps[pw.i] : make_tap(pw.i, h, H);
      const Tap ct = plan.taps_in_smem ? taps[H + pw.j] : make_tap(pw.j, w, W);
      const float v = resized_pixel(e, w, rt, ct);
      if (ihi == INT_MAX || v > hi) { hi = v; ihi = p; }
      if (ilo == INT_MAX || v < lo) { lo = v; ilo = p; }
    }
  }
  block_arg<true>(hi, ihi, vred, ired);
  block_arg<false>(lo, ilo, vred, ired);

  // ---- 4. band rule: the first pixel within band * range of each extreme.
  if (band > 0.f) {
    const float spread = __fmul_rn(__fsub_rn(hi, lo), band);
    const float thr_hi = __fsub_rn(hi, spread), thr_lo = __fadd_rn(lo, spread);
    int fh = INT_MAX, fl = INT_MAX;
    if (tid < HW) {
      PixelWalk pw(tid, T, W);
      for (int p = tid; p < HW && (fh == INT_MAX || fl == INT_MAX); p += T, pw.next()) {
        const Tap rt = plan.taps_in_smem ? taps[pw.i] : make_tap(pw.i, h, H);
        const Tap ct = plan.taps_in_smem ? taps[H + pw.j] : make_tap(pw.j, w, W);
        const float v = resized_pixel(e, w, rt, ct);
        if (fh == INT_MAX && v >= thr_hi) fh = p;
        if (fl == INT_MAX && v <= thr_lo) fl = p;
      }
    }
    fh = block_min(fh, ired);
    fl = block_min(fl, ired);
    // The extremes always qualify; only a NaN map leaves a search empty.
    if (fh != INT_MAX) ihi = fh;
    if (fl != INT_MAX) ilo = fl;
  }
  *peak_hi = ihi == INT_MAX ? 0 : ihi;
  *peak_lo = ilo == INT_MAX ? 0 : ilo;
}

// The row-major pixel indices of block_peaks as (row, column) pairs of an image W pixels wide.
__device__ __forceinline__ void write_peaks(int hi, int lo, int W, int64_t* peak_max,
                                            int64_t* peak_min) {
  peak_max[0] = hi / W;
  peak_max[1] = hi % W;
  peak_min[0] = lo / W;
  peak_min[1] = lo % W;
}

}  // namespace cuda
}  // namespace anm_fast
