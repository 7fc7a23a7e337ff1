// Stage 1 for one sample on the CPU: energy map, L2 normalisation and the peaks of its bilinear
// resize. Used by activation_peaks (activation_peaks_cpu.cpp) and by the fused anm_mask
// (anm_mask_cpu.cpp), so the peak search exists once on the CPU. The H x W resized map is never
// stored: each output row is interpolated from the horizontally resized source rows (h x W floats)
// and reduced to its max and min on the fly; only the first row reaching each peak's threshold is
// interpolated again to locate the pixel.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "../anm_common.h"

namespace anm_fast {
namespace cpu {

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
// copied instead of recomputed. On x86-64 the row is interpolated and reduced with SSE: the same
// IEEE operations per pixel as lerp() (sub, mul, add, no contraction), and max_ps / min_ps
// compute exactly `v > m ? v : m` / `v < m ? v : m`, so the values are those of the scalar loop.
// A run of output columns [begin, end) whose bilinear taps read source columns i0 and i1.
struct ColumnRun {
  int64_t begin, end, i0, i1;
};

// rows[y, j] = lerp(e[y, i0(j)], e[y, i1(j)], lambda(j)) for the h source rows: the same values
// as a per-column gather, computed run by run.
inline void horizontal_resize(const float* __restrict__ e, int64_t h, int64_t w, int64_t W,
                       const ColumnRun* runs, int64_t n_runs, const float* __restrict__ lambda,
                       float* __restrict__ rows) {
  for (int64_t y = 0; y < h; ++y) {
    const float* er = e + y * w;
    float* out = rows + y * W;
    for (int64_t r = 0; r < n_runs; ++r) {
      const float a = er[runs[r].i0], b = er[runs[r].i1];
      for (int64_t j = runs[r].begin; j < runs[r].end; ++j) out[j] = lerp(a, b, lambda[j]);
    }
  }
}

inline void rows_extremes(const float* __restrict__ rows, const LinearTap* row_taps, int64_t H, int64_t W,
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
    const float inf = std::numeric_limits<float>::infinity();
    float hi = -inf, lo = inf;
    int64_t j = 0;
#if defined(__SSE2__)
    {
      const __m128 vl = _mm_set1_ps(lambda);
      __m128 mx0 = _mm_set1_ps(-inf), mx1 = mx0, mn0 = _mm_set1_ps(inf), mn1 = mn0;
      for (; j + 8 <= W; j += 8) {
        const __m128 a0 = _mm_loadu_ps(r0 + j), b0 = _mm_loadu_ps(r1 + j);
        const __m128 a1 = _mm_loadu_ps(r0 + j + 4), b1 = _mm_loadu_ps(r1 + j + 4);
        const __m128 v0 = _mm_add_ps(a0, _mm_mul_ps(_mm_sub_ps(b0, a0), vl));
        const __m128 v1 = _mm_add_ps(a1, _mm_mul_ps(_mm_sub_ps(b1, a1), vl));
        mx0 = _mm_max_ps(v0, mx0);
        mx1 = _mm_max_ps(v1, mx1);
        mn0 = _mm_min_ps(v0, mn0);
        mn1 = _mm_min_ps(v1, mn1);
      }
      alignas(16) float m[8], n[8];
      _mm_store_ps(m, mx0);
      _mm_store_ps(m + 4, mx1);
      _mm_store_ps(n, mn0);
      _mm_store_ps(n + 4, mn1);
      for (int l = 0; l < 8; ++l) {
        hi = m[l] > hi ? m[l] : hi;
        lo = n[l] < lo ? n[l] : lo;
      }
    }
#endif
    for (; j < W; ++j) {
      const float v = lerp(r0[j], r1[j], lambda);
      hi = v > hi ? v : hi;
      lo = v < lo ? v : lo;
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

// Everything about the resize that depends only on the shapes: built once per call.
struct PeakPlan {
  int64_t h, w, H, W;
  float band;
  std::vector<LinearTap> row_taps;
  std::vector<ColumnRun> col_runs;  // output columns sharing the same two source columns
  std::vector<float> col_lambda;

  PeakPlan(int64_t h_, int64_t w_, int64_t H_, int64_t W_, double band_)
      : h(h_), w(w_), H(H_), W(W_), band(static_cast<float>(band_)), row_taps(H_),
        col_lambda(W_) {
    for (int64_t i = 0; i < H; ++i) row_taps[i] = linear_tap(i, h, H);
    // The horizontal pass broadcasts the two source values over each run (vectorised) instead
    // of gathering per column.
    for (int64_t j = 0; j < W; ++j) {
      const LinearTap t = linear_tap(j, w, W);
      col_lambda[j] = t.lambda;
      if (col_runs.empty() || col_runs.back().i0 != t.i0 || col_runs.back().i1 != t.i1)
        col_runs.push_back(ColumnRun{j, j + 1, t.i0, t.i1});
      else
        col_runs.back().end = j + 1;
    }
  }
};

// Scratch buffers of one thread.
template <typename acc_t>
struct PeakWorkspace {
  std::vector<acc_t> e;
  std::vector<float> rows, line, row_hi, row_lo;
  explicit PeakWorkspace(const PeakPlan& p)
      : e(p.h * p.w), rows(p.h * p.W), line(p.W), row_hi(p.H), row_lo(p.H) {}
};

template <typename scalar_t>
using peak_acc_t =
    typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;

// One sample: writes its h*w normalised energies to `energy` and its peaks, (row, col), to
// peak_max[0..1] and peak_min[0..1]. Returns false when the energy is not finite (NaN or Inf in
// the feature map, or squares overflowing float32); the peaks are then meaningless.
template <typename scalar_t>
bool sample_peaks(const PeakPlan& p, const scalar_t* f, int64_t K, int64_t sK, int64_t sH,
                  int64_t sW, PeakWorkspace<peak_acc_t<scalar_t>>& ws, float* energy,
                  int64_t* peak_max, int64_t* peak_min) {
  using acc_t = peak_acc_t<scalar_t>;
  const int64_t h = p.h, w = p.w, H = p.H, W = p.W;
  acc_t* e = ws.e.data();
  sample_energy<scalar_t, acc_t>(f, K, h, w, sK, sH, sW, e);
  acc_t sq = 0;
  for (int64_t i = 0; i < h * w; ++i) sq += e[i] * e[i];
  acc_t norm = std::sqrt(sq);
  if (norm < acc_t(1e-12)) norm = acc_t(1e-12);
  bool finite = true;
  for (int64_t i = 0; i < h * w; ++i) {
    energy[i] = static_cast<float>(e[i] / norm);
    finite = finite && std::isfinite(energy[i]);
  }
  horizontal_resize(energy, h, w, W, p.col_runs.data(), static_cast<int64_t>(p.col_runs.size()),
                    p.col_lambda.data(), ws.rows.data());
  auto resized_row = [&](int64_t i) {
    const LinearTap& t = p.row_taps[i];
    const float* r0 = ws.rows.data() + t.i0 * W;
    const float* r1 = ws.rows.data() + t.i1 * W;
    for (int64_t j = 0; j < W; ++j) ws.line[j] = lerp(r0[j], r1[j], t.lambda);
  };
  // Pass 1: every resized row's max and min (vectorised), then the map's extremes.
  rows_extremes(ws.rows.data(), p.row_taps.data(), H, W, ws.row_hi.data(), ws.row_lo.data());
  PeakScan scan;
  for (int64_t i = 0; i < H; ++i) {
    if (ws.row_hi[i] > scan.hi) scan.hi = ws.row_hi[i];
    if (ws.row_lo[i] < scan.lo) scan.lo = ws.row_lo[i];
  }
  // Pass 2: the peak is the first row-major pixel at or beyond the threshold (the extreme itself
  // when band = 0, so the first occurrence of the max / min). Only the first row whose extreme
  // reaches the threshold is recomputed and scanned.
  float thr_hi = scan.hi, thr_lo = scan.lo;
  if (p.band > 0.f) {
    const float spread = (scan.hi - scan.lo) * p.band;
    thr_hi = scan.hi - spread;
    thr_lo = scan.lo + spread;
  }
  scan.first_hi = 0;
  scan.first_lo = 0;
  for (int64_t i = 0; i < H; ++i)
    if (ws.row_hi[i] >= thr_hi) {
      resized_row(i);
      for (int64_t j = 0; j < W; ++j)
        if (ws.line[j] >= thr_hi) { scan.first_hi = i * W + j; break; }
      break;
    }
  for (int64_t i = 0; i < H; ++i)
    if (ws.row_lo[i] <= thr_lo) {
      resized_row(i);
      for (int64_t j = 0; j < W; ++j)
        if (ws.line[j] <= thr_lo) { scan.first_lo = i * W + j; break; }
      break;
    }
  peak_max[0] = scan.first_hi / W;
  peak_max[1] = scan.first_hi % W;
  peak_min[0] = scan.first_lo / W;
  peak_min[1] = scan.first_lo % W;
  return finite;
}

}  // namespace cpu
}  // namespace anm_fast
