// Stage 1 for one sample on the CPU: energy map, L2 normalisation and the peaks of its bilinear
// resize. Used by activation_peaks (activation_peaks_cpu.cpp) and by the fused anm_mask
// (anm_mask_cpu.cpp), so the peak search exists once on the CPU. The H x W resized map is never
// stored: the h source rows are resized horizontally (h x W floats), and the peak search
// (vector_kernels.cpp) interpolates output rows from them only where it needs to: the two end
// rows of each run of rows sharing their source rows, then the rows of the first run that reaches
// the threshold.
#pragma once

#include <cmath>
#include <type_traits>
#include <vector>

#include "../anm_common.h"
#include "vector_kernels.h"

namespace anm_fast {
namespace cpu {

// Sum over channels of f^2 for every position of one sample, in accumulator type acc_t.
// Every path adds the channels to each position in anm_common.h's order (one chain k = 0, 1, ...),
// so the energies are the same whichever path runs, and the same as the other backends'.
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

// Everything about the resize that depends only on the shapes: built once per call.
struct PeakPlan {
  int64_t h, w, H, W;
  float band;
  std::vector<LinearTap> row_taps;
  std::vector<RowRun> row_runs;     // output rows sharing the same two source rows
  std::vector<ColumnRun> col_runs;  // output columns sharing the same two source columns
  std::vector<float> col_lambda;
  std::vector<int32_t> col_i0, col_i1;  // each output column's two source columns

  PeakPlan(int64_t h_, int64_t w_, int64_t H_, int64_t W_, double band_)
      : h(h_), w(w_), H(H_), W(W_), band(static_cast<float>(band_)), row_taps(H_),
        col_lambda(W_), col_i0(W_), col_i1(W_) {
    for (int64_t i = 0; i < H; ++i) row_taps[i] = linear_tap(i, h, H);
    row_runs = cpu::row_runs(row_taps.data(), H);
    // The horizontal pass broadcasts the two source values over each run (vectorised) instead
    // of gathering per column.
    for (int64_t j = 0; j < W; ++j) {
      const LinearTap t = linear_tap(j, w, W);
      col_lambda[j] = t.lambda;
      col_i0[j] = static_cast<int32_t>(t.i0);
      col_i1[j] = static_cast<int32_t>(t.i1);
      if (col_runs.empty() || col_runs.back().i0 != t.i0 || col_runs.back().i1 != t.i1)
        col_runs.push_back(ColumnRun{j, j + 1, t.i0, t.i1});
      else
        col_runs.back().end = j + 1;
    }
  }
};

// Samples whose energies are computed together (group_energy); the scratch buffer holds this many
// energy maps.
constexpr int64_t kEnergyGroup = 4;

// Scratch buffers of one thread.
template <typename acc_t>
struct PeakWorkspace {
  std::vector<acc_t> e;
  std::vector<float> rows, scratch;
  explicit PeakWorkspace(const PeakPlan& p)
      : e(kEnergyGroup * p.h * p.w), rows(p.h * p.W),
        scratch(resized_peaks_scratch(static_cast<int64_t>(p.row_runs.size()))) {}
};

template <typename scalar_t>
using peak_acc_t =
    typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;

// Raw energies (sum over channels of f^2) of G consecutive samples into e[g * h * w + p]: the wide
// vector path (vector_kernels.cpp) for fp32 maps whose channel planes are contiguous, the portable
// loop otherwise. Both add each position's squares in the same order, so the values are the same.
template <typename scalar_t>
void group_energy(const scalar_t* f, int64_t G, int64_t sB, int64_t K, int64_t sK, int64_t sH,
                  int64_t sW, int64_t h, int64_t w, peak_acc_t<scalar_t>* e) {
  if (std::is_same<scalar_t, float>::value && sW == 1 && sH == w &&
      energy_planes_f32(reinterpret_cast<const float*>(f), G, sB, K, sK, h * w,
                        reinterpret_cast<float*>(e)))
    return;
  for (int64_t g = 0; g < G; ++g)
    sample_energy<scalar_t, peak_acc_t<scalar_t>>(f + g * sB, K, h, w, sK, sH, sW, e + g * h * w);
}

// One sample from its raw energies `e`: writes its h*w normalised energies to `energy` and its
// peaks, (row, col), to peak_max[0..1] and peak_min[0..1]. Returns false when the energy is not
// finite (NaN or Inf in the feature map, or squares overflowing float32); the peaks are then
// meaningless.
template <typename acc_t>
bool peaks_from_energy(const PeakPlan& p, const acc_t* e, PeakWorkspace<acc_t>& ws,
                       float* energy, int64_t* peak_max, int64_t* peak_min) {
  const int64_t h = p.h, w = p.w, W = p.W;
  const acc_t sq = energy_square_sum(e, h * w);  // anm_common.h: the one summation order
  acc_t norm = std::sqrt(sq);
  if (norm < acc_t(1e-12)) norm = acc_t(1e-12);
  bool finite = true;
  for (int64_t i = 0; i < h * w; ++i) {
    energy[i] = static_cast<float>(e[i] / norm);
    finite = finite && std::isfinite(energy[i]);
  }
  if (!horizontal_resize_wide(energy, h, w, W, p.col_i0.data(), p.col_i1.data(),
                              p.col_lambda.data(), ws.rows.data()))
    horizontal_resize(energy, h, w, W, p.col_runs.data(),
                      static_cast<int64_t>(p.col_runs.size()), p.col_lambda.data(),
                      ws.rows.data());
  // Both passes of the peak search (max and min of the map, then the first pixel at the
  // threshold), without storing the H x W map: vector_kernels.cpp.
  int64_t first_hi = 0, first_lo = 0;
  resized_peaks(ws.rows.data(), p.row_taps.data(), p.row_runs.data(),
                static_cast<int64_t>(p.row_runs.size()), W, p.band, ws.scratch.data(), &first_hi,
                &first_lo);
  peak_max[0] = first_hi / W;
  peak_max[1] = first_hi % W;
  peak_min[0] = first_lo / W;
  peak_min[1] = first_lo % W;
  return finite;
}

// Stage 1 for samples [0, G) (G <= kEnergyGroup) at f + g * sB: energies, then each sample's peaks
// (arrays indexed by g). Returns how many samples have a non-finite energy.
template <typename scalar_t>
int64_t group_peaks(const PeakPlan& p, const scalar_t* f, int64_t G, int64_t sB, int64_t K,
                    int64_t sK, int64_t sH, int64_t sW, PeakWorkspace<peak_acc_t<scalar_t>>& ws,
                    float* energy, int64_t* peak_max, int64_t* peak_min) {
  const int64_t P = p.h * p.w;
  group_energy<scalar_t>(f, G, sB, K, sK, sH, sW, p.h, p.w, ws.e.data());
  int64_t bad = 0;
  for (int64_t g = 0; g < G; ++g)
    if (!peaks_from_energy(p, ws.e.data() + g * P, ws, energy + g * P, peak_max + 2 * g,
                           peak_min + 2 * g))
      ++bad;
  return bad;
}

}  // namespace cpu
}  // namespace anm_fast
