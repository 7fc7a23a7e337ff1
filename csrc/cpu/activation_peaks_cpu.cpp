// Stage 1 on the CPU: energy map, L2 normalisation and the peaks of its bilinear resize, one
// sample per task. The H x W resized map is never stored: each output row is interpolated from
// the horizontally resized source rows (h x W floats) and reduced to its max and min on the fly;
// only the first row reaching each peak's threshold is interpolated again to locate the pixel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../anm_common.h"

namespace anm_fast {
namespace {

// Sum over channels of f^2 for every position of one sample, in accumulator type acc_t.
// Every path adds the channels to each position in the same order (k = 0, 1, ...), so the
// energies are the same whichever path runs.
template <typename scalar_t, typename acc_t>
void sample_energy(const scalar_t* f, int64_t K, int64_t h, int64_t w, int64_t sK, int64_t sH,
                   int64_t sW, acc_t* __restrict__ e) {
  const int64_t P = h * w;
  for (int64_t p = 0; p < P; ++p) e[p] = acc_t(0);
  if (sK == 1 && K > 1) {  // channels_last: channels are the contiguous axis
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) {
        const scalar_t* fp = f + y * sH + x * sW;
        acc_t acc = 0;
        for (int64_t k = 0; k < K; ++k) {
          const acc_t v = static_cast<acc_t>(fp[k]);
          acc += v * v;
        }
        e[y * w + x] = acc;
      }
  } else if (sW == 1 && sH == w) {
    // Each channel's h x w plane is contiguous: one unit-stride loop over the P positions,
    // four channels per sweep so e[] is loaded and stored a quarter as often (vectorised).
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
      const scalar_t* __restrict__ f0 = f + k * sK;
      const scalar_t* __restrict__ f1 = f0 + sK;
      const scalar_t* __restrict__ f2 = f1 + sK;
      const scalar_t* __restrict__ f3 = f2 + sK;
      for (int64_t p = 0; p < P; ++p) {
        const acc_t v0 = static_cast<acc_t>(f0[p]), v1 = static_cast<acc_t>(f1[p]);
        const acc_t v2 = static_cast<acc_t>(f2[p]), v3 = static_cast<acc_t>(f3[p]);
        acc_t acc = e[p];
        acc += v0 * v0;
        acc += v1 * v1;
        acc += v2 * v2;
        acc += v3 * v3;
        e[p] = acc;
      }
    }
    for (; k < K; ++k) {
      const scalar_t* __restrict__ fk = f + k * sK;
      for (int64_t p = 0; p < P; ++p) {
        const acc_t v = static_cast<acc_t>(fk[p]);
        e[p] += v * v;
      }
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* fk = f + k * sK;
      for (int64_t y = 0; y < h; ++y) {
        const scalar_t* fr = fk + y * sH;
        acc_t* er = e + y * w;
        for (int64_t x = 0; x < w; ++x) {
          const acc_t v = static_cast<acc_t>(fr[x * sW]);
          er[x] += v * v;
        }
      }
    }
  }
}

// Pass 1 of the peak search for one sample: the max and min of every resized row, without
// storing the H x W map. `rows` holds the h source rows resized horizontally to W. A row whose
// taps repeat the previous row's (the clamped borders) has the same values: its extremes are
// copied instead of recomputed. The lane loop is written so the compiler emits vector max/min;
// on x86-64 with GCC it is also compiled for AVX2 and picked at load time (same results: the same
// IEEE operations in the same order per pixel, no contraction).
constexpr int kLanes = 16;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define ANM_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ANM_CPU_CLONES
#endif

ANM_CPU_CLONES
void rows_extremes(const float* __restrict__ rows, const LinearTap* row_taps, int64_t H, int64_t W,
                   float* __restrict__ row_hi, float* __restrict__ row_lo) {
  for (int64_t i = 0; i < H; ++i) {
    const LinearTap& t = row_taps[i];
    if (i > 0) {
      const LinearTap& p = row_taps[i - 1];
      const bool same_taps = t.i0 == p.i0 && t.i1 == p.i1 && t.lambda == p.lambda;
      // lerp(a, a, l) == a: two clamped rows on the same source row are equal too.
      const bool both_clamped = t.i0 == t.i1 && p.i0 == p.i1 && t.i0 == p.i0;
      if (same_taps || both_clamped) {
        row_hi[i] = row_hi[i - 1];
        row_lo[i] = row_lo[i - 1];
        continue;
      }
    }
    const float* __restrict__ r0 = rows + t.i0 * W;
    const float* __restrict__ r1 = rows + t.i1 * W;
    const float lambda = t.lambda;
    float mx[kLanes], mn[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      mx[l] = -std::numeric_limits<float>::infinity();
      mn[l] = std::numeric_limits<float>::infinity();
    }
    int64_t j = 0;
    for (; j + kLanes <= W; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const float v = lerp(r0[j + l], r1[j + l], lambda);
        mx[l] = v > mx[l] ? v : mx[l];
        mn[l] = v < mn[l] ? v : mn[l];
      }
    }
    for (; j < W; ++j) {
      const float v = lerp(r0[j], r1[j], lambda);
      mx[0] = v > mx[0] ? v : mx[0];
      mn[0] = v < mn[0] ? v : mn[0];
    }
    float hi = mx[0], lo = mn[0];
    for (int l = 1; l < kLanes; ++l) {
      hi = mx[l] > hi ? mx[l] : hi;
      lo = mn[l] < lo ? mn[l] : lo;
    }
    row_hi[i] = hi;
    row_lo[i] = lo;
  }
}

struct PeakScan {
  float hi = -std::numeric_limits<float>::infinity();
  float lo = std::numeric_limits<float>::infinity();
  int64_t first_hi = -1, first_lo = -1;
};

template <typename scalar_t>
void activation_peaks_kernel(const at::Tensor& fmap, int64_t H, int64_t W, double band,
                             at::Tensor& peak_max, at::Tensor& peak_min, at::Tensor& energy) {
  using acc_t = typename std::conditional<std::is_same<scalar_t, double>::value, double,
                                          float>::type;
  const int64_t B = fmap.size(0), K = fmap.size(1), h = fmap.size(2), w = fmap.size(3);
  const int64_t sB = fmap.stride(0), sK = fmap.stride(1), sH = fmap.stride(2),
                sW = fmap.stride(3);
  const scalar_t* fptr = fmap.const_data_ptr<scalar_t>();
  float* eptr = energy.data_ptr<float>();
  int64_t* pmax = peak_max.data_ptr<int64_t>();
  int64_t* pmin = peak_min.data_ptr<int64_t>();
  const float bandf = static_cast<float>(band);

  // Bilinear taps depend only on the shapes: computed once for all samples.
  std::vector<LinearTap> row_taps(H), col_taps(W);
  for (int64_t i = 0; i < H; ++i) row_taps[i] = linear_tap(i, h, H);
  for (int64_t j = 0; j < W; ++j) col_taps[j] = linear_tap(j, w, W);

  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> e(h * w);
    std::vector<float> rows(h * W);  // source rows resized horizontally to W
    std::vector<float> line(W);
    std::vector<float> row_hi(H), row_lo(H);
    for (int64_t b = begin; b < end; ++b) {
      sample_energy<scalar_t, acc_t>(fptr + b * sB, K, h, w, sK, sH, sW, e.data());
      acc_t sq = 0;
      for (int64_t p = 0; p < h * w; ++p) sq += e[p] * e[p];
      acc_t norm = std::sqrt(sq);
      if (norm < acc_t(1e-12)) norm = acc_t(1e-12);
      float* eb = eptr + b * h * w;
      for (int64_t p = 0; p < h * w; ++p) eb[p] = static_cast<float>(e[p] / norm);
      for (int64_t y = 0; y < h; ++y)
        for (int64_t j = 0; j < W; ++j) {
          const LinearTap& t = col_taps[j];
          rows[y * W + j] = lerp(eb[y * w + t.i0], eb[y * w + t.i1], t.lambda);
        }
      auto resized_row = [&](int64_t i) {
        const LinearTap& t = row_taps[i];
        const float* r0 = rows.data() + t.i0 * W;
        const float* r1 = rows.data() + t.i1 * W;
        for (int64_t j = 0; j < W; ++j) line[j] = lerp(r0[j], r1[j], t.lambda);
      };
      // Pass 1: every resized row's max and min (vectorised), then the map's extremes.
      rows_extremes(rows.data(), row_taps.data(), H, W, row_hi.data(), row_lo.data());
      PeakScan scan;
      for (int64_t i = 0; i < H; ++i) {
        if (row_hi[i] > scan.hi) scan.hi = row_hi[i];
        if (row_lo[i] < scan.lo) scan.lo = row_lo[i];
      }
      // Pass 2: the peak is the first row-major pixel at or beyond the threshold (the extreme
      // itself when band = 0, so the first occurrence of the max / min). Only the first row whose
      // extreme reaches the threshold is recomputed and scanned.
      float thr_hi = scan.hi, thr_lo = scan.lo;
      if (bandf > 0.f) {
        const float spread = (scan.hi - scan.lo) * bandf;
        thr_hi = scan.hi - spread;
        thr_lo = scan.lo + spread;
      }
      scan.first_hi = 0;
      scan.first_lo = 0;
      for (int64_t i = 0; i < H; ++i)
        if (row_hi[i] >= thr_hi) {
          resized_row(i);
          for (int64_t j = 0; j < W; ++j)
            if (line[j] >= thr_hi) { scan.first_hi = i * W + j; break; }
          break;
        }
      for (int64_t i = 0; i < H; ++i)
        if (row_lo[i] <= thr_lo) {
          resized_row(i);
          for (int64_t j = 0; j < W; ++j)
            if (line[j] <= thr_lo) { scan.first_lo = i * W + j; break; }
          break;
        }
      pmax[2 * b] = scan.first_hi / W;
      pmax[2 * b + 1] = scan.first_hi % W;
      pmin[2 * b] = scan.first_lo / W;
      pmin[2 * b + 1] = scan.first_lo % W;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> activation_peaks_cpu(const at::Tensor& fmap,
                                                                    int64_t height, int64_t width,
                                                                    double band) {
  TORCH_CHECK(fmap.dim() == 4, "activation_peaks: fmap must be (B, K, h, w), got ",
              fmap.sizes());
  TORCH_CHECK(height > 0 && width > 0, "activation_peaks: image size must be positive");
  TORCH_CHECK(fmap.size(1) > 0 && fmap.size(2) > 0 && fmap.size(3) > 0,
              "activation_peaks: fmap has an empty dimension: ", fmap.sizes());
  const int64_t B = fmap.size(0);
  auto long_opts = fmap.options().dtype(at::kLong);
  at::Tensor peak_max = at::empty({B, 2}, long_opts);
  at::Tensor peak_min = at::empty({B, 2}, long_opts);
  at::Tensor energy = at::empty({B, fmap.size(2), fmap.size(3)}, fmap.options().dtype(at::kFloat));
  if (B == 0) return {peak_max, peak_min, energy};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fmap.scalar_type(),
                                  "activation_peaks_cpu", [&] {
    activation_peaks_kernel<scalar_t>(fmap, height, width, band, peak_max, peak_min, energy);
  });
  return {peak_max, peak_min, energy};
}

}  // namespace

TORCH_LIBRARY_IMPL(anm_fast, CPU, m) { m.impl("activation_peaks", &activation_peaks_cpu); }

}  // namespace anm_fast
