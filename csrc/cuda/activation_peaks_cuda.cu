// Stage 1 on the GPU: one block per sample reads the feature map once, reduces the channel
// energy and its L2 norm, writes the normalised energy map, and finds the peaks of its bilinear
// resize to H x W without storing the resized map: every resized pixel is interpolated on the fly
// from the h x w map (kept in shared memory when it fits, else in a global scratch buffer whose
// size depends only on the shapes). The interpolation uses anm_common.h's linear_tap and the
// CPU kernel's exact float steps (lerp), so each resized value is bit-identical to the CPU's for
// the same energy map.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cfloat>
#include <cmath>
#include <type_traits>

#include "../anm_common.h"
#include "../op_checks.h"
#include "cuda_utils.cuh"

namespace anm_fast {
namespace cuda {
namespace {

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

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPeakThreads) activation_peaks_kernel(
    const scalar_t* __restrict__ fmap, int64_t K, int h, int w, int64_t sB, int64_t sK,
    int64_t sH, int64_t sW, int H, int W, float band, bool map_in_smem, bool taps_in_smem,
    acc_t* __restrict__ scratch, float* __restrict__ energy, int64_t* __restrict__ peak_max,
    int64_t* __restrict__ peak_min) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ acc_t partial[kPeakThreads];
  __shared__ acc_t red[kPeakThreads / kWarp];
  __shared__ float vred[kPeakThreads / kWarp];
  __shared__ int ired[kPeakThreads / kWarp];

  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x, T = blockDim.x;
  const int lane = tid % kWarp, warp = tid / kWarp, nwarps = T / kWarp;
  const int P = h * w;
  const int64_t HW = static_cast<int64_t>(H) * W;

  // Layout of the dynamic shared memory: [taps (H + W)] [map (P acc_t)], each part optional.
  Tap* taps = reinterpret_cast<Tap*>(smem_raw);
  unsigned char* after_taps = smem_raw + (taps_in_smem ? tap_table_bytes(H, W) : 0);
  acc_t* e = map_in_smem ? reinterpret_cast<acc_t*>(after_taps) : scratch + b * P;

  if (taps_in_smem) {
    for (int k = tid; k < H; k += T) taps[k] = make_tap(k, h, H);
    for (int k = tid; k < W; k += T) taps[H + k] = make_tap(k, w, W);
  }

  // ---- 1. energy e[p] = sum_k f[k, p]^2, accumulated in acc_t.
  const scalar_t* f = fmap + b * sB;
  if (sK == 1 && K > 1) {
    // Channels are the contiguous axis (channels_last): one warp per position, lanes over k.
    for (int p = warp; p < P; p += nwarps) {
      const int y = p / w, x = p - y * w;
      const scalar_t* fp = f + y * sH + x * sW;
      acc_t acc = acc_t(0);
      for (int64_t k = lane; k < K; k += kWarp) {
        const acc_t v = static_cast<acc_t>(fp[k]);
        acc += v * v;
      }
      acc = warp_sum(acc);
      if (lane == 0) e[p] = acc;
    }
  } else if (P >= T) {
    // One thread per position, looping over the channels (coalesced along the positions).
    for (int p = tid; p < P; p += T) {
      const int y = p / w, x = p - y * w;
      const scalar_t* fp = f + y * sH + x * sW;
      acc_t acc = acc_t(0);
      for (int64_t k = 0; k < K; ++k) {
        const acc_t v = static_cast<acc_t>(fp[k * sK]);
        acc += v * v;
      }
      e[p] = acc;
    }
  } else {
    // Few positions (e.g. 4x4, 7x7): G groups of P threads split the channels, then reduce.
    const int G = T / P;
    const int p = tid % P, g = tid / P;
    acc_t acc = acc_t(0);
    if (g < G) {
      const int y = p / w, x = p - y * w;
      const scalar_t* fp = f + y * sH + x * sW;
      for (int64_t k = g; k < K; k += G) {
        const acc_t v = static_cast<acc_t>(fp[k * sK]);
        acc += v * v;
      }
    }
    partial[tid] = acc;
    __syncthreads();
    if (tid < P) {
      acc_t s = acc_t(0);
      for (int gg = 0; gg < G; ++gg) s += partial[gg * P + tid];
      e[tid] = s;
    }
  }
  __syncthreads();

  // ---- 2. L2 normalisation; the normalised float map is the energy output and is kept (as
  // acc_t holding the exact float) in e for the resize.
  acc_t sq = acc_t(0);
  for (int p = tid; p < P; p += T) sq += e[p] * e[p];
  sq = block_sum(sq, red);
  acc_t norm = sqrt(sq);
  if (norm < acc_t(1e-12)) norm = acc_t(1e-12);
  float* eb = energy + b * P;
  for (int p = tid; p < P; p += T) {
    const float v = static_cast<float>(e[p] / norm);
    eb[p] = v;
    e[p] = static_cast<acc_t>(v);
  }
  __syncthreads();

  // ---- 3. extremes of the resized map (first occurrence on ties).
  float hi = -INFINITY, lo = INFINITY;
  int ihi = INT_MAX, ilo = INT_MAX;
  if (tid < HW) {
    PixelWalk pw(tid, T, W);
    for (int p = tid; p < HW; p += T, pw.next()) {
      const Tap rt = taps_in_smem ? taps[pw.i] : make_tap(pw.i, h, H);
      const Tap ct = taps_in_smem ? taps[H + pw.j] : make_tap(pw.j, w, W);
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
        const Tap rt = taps_in_smem ? taps[pw.i] : make_tap(pw.i, h, H);
        const Tap ct = taps_in_smem ? taps[H + pw.j] : make_tap(pw.j, w, W);
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
  if (tid == 0) {
    if (ihi == INT_MAX) ihi = 0;
    if (ilo == INT_MAX) ilo = 0;
    peak_max[2 * b] = ihi / W;
    peak_max[2 * b + 1] = ihi % W;
    peak_min[2 * b] = ilo / W;
    peak_min[2 * b + 1] = ilo % W;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> activation_peaks_cuda(const at::Tensor& fmap,
                                                                     int64_t height,
                                                                     int64_t width, double band) {
  TORCH_CHECK(fmap.is_cuda(), "activation_peaks (CUDA): fmap must be a CUDA tensor");
  check_activation_peaks_args(fmap, height, width);
  const int64_t B = fmap.size(0), K = fmap.size(1), h = fmap.size(2), w = fmap.size(3);
  TORCH_CHECK(h * w <= INT_MAX && height * width <= INT_MAX - 2 * kPeakThreads,
              "activation_peaks (CUDA): feature map or image too large");
  c10::cuda::CUDAGuard guard(fmap.device());

  auto long_opts = fmap.options().dtype(at::kLong);
  at::Tensor peak_max = at::empty({B, 2}, long_opts);
  at::Tensor peak_min = at::empty({B, 2}, long_opts);
  at::Tensor energy = at::empty({B, h, w}, fmap.options().dtype(at::kFloat));
  if (B == 0) return {peak_max, peak_min, energy};

  const bool f64 = fmap.scalar_type() == at::kDouble;
  const int64_t acc_size = f64 ? 8 : 4;
  const int64_t map_bytes = h * w * acc_size;
  const int64_t tap_bytes = tap_table_bytes(height, width);
  bool map_in_smem, taps_in_smem;
  if (map_bytes + tap_bytes <= kDynSmemLimit) {
    map_in_smem = taps_in_smem = true;
  } else if (tap_bytes <= kDynSmemLimit) {
    taps_in_smem = true;
    map_in_smem = false;
  } else {
    taps_in_smem = false;
    map_in_smem = map_bytes <= kDynSmemLimit;
  }
  const int64_t smem = (taps_in_smem ? tap_bytes : 0) + (map_in_smem ? map_bytes : 0);
  at::Tensor scratch;  // (B, h*w) accumulator map when it does not fit in shared memory
  if (!map_in_smem)
    scratch = at::empty({B * h * w}, fmap.options().dtype(f64 ? at::kDouble : at::kFloat));

  const float bandf = static_cast<float>(band);
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fmap.scalar_type(),
                                  "activation_peaks_cuda", [&] {
    using acc_t = typename std::conditional<std::is_same<scalar_t, double>::value, double,
                                            float>::type;
    activation_peaks_kernel<scalar_t, acc_t><<<B, kPeakThreads, smem, stream>>>(
        fmap.const_data_ptr<scalar_t>(), K, static_cast<int>(h), static_cast<int>(w),
        fmap.stride(0), fmap.stride(1), fmap.stride(2), fmap.stride(3),
        static_cast<int>(height), static_cast<int>(width), bandf, map_in_smem, taps_in_smem,
        map_in_smem ? nullptr : scratch.data_ptr<acc_t>(), energy.data_ptr<float>(),
        peak_max.data_ptr<int64_t>(), peak_min.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {peak_max, peak_min, energy};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(anm_fast, CUDA, m) { m.impl("activation_peaks", &cuda::activation_peaks_cuda); }

}  // namespace anm_fast
