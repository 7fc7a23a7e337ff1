// Stage 1 on the CPU: energy map, L2 normalisation and the peaks of its bilinear resize, one
// sample per task. The H x W resized map is never stored: each output row is interpolated from
// the horizontally resized source rows (h x W floats) and scanned on the fly.
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
template <typename scalar_t, typename acc_t>
void sample_energy(const scalar_t* f, int64_t K, int64_t h, int64_t w, int64_t sK, int64_t sH,
                   int64_t sW, acc_t* e) {
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
      // Pass 1: extremes. Pass 2 (only when band > 0): first pixel inside each band.
      PeakScan scan;
      for (int64_t i = 0; i < H; ++i) {
        resized_row(i);
        for (int64_t j = 0; j < W; ++j) {
          const float v = line[j];
          if (v > scan.hi || scan.first_hi < 0) { scan.hi = v; scan.first_hi = i * W + j; }
          if (v < scan.lo || scan.first_lo < 0) { scan.lo = v; scan.first_lo = i * W + j; }
        }
      }
      if (bandf > 0.f) {
        const float spread = (scan.hi - scan.lo) * bandf;
        const float thr_hi = scan.hi - spread, thr_lo = scan.lo + spread;
        int64_t found_hi = -1, found_lo = -1;
        for (int64_t i = 0; i < H && (found_hi < 0 || found_lo < 0); ++i) {
          resized_row(i);
          for (int64_t j = 0; j < W; ++j) {
            if (found_hi < 0 && line[j] >= thr_hi) found_hi = i * W + j;
            if (found_lo < 0 && line[j] <= thr_lo) found_lo = i * W + j;
          }
        }
        // The extremes themselves always qualify, so both searches succeed.
        scan.first_hi = found_hi;
        scan.first_lo = found_lo;
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
