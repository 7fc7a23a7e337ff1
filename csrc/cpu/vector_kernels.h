// The CPU's hot loops with wide vectors picked at run time (vector_kernels.cpp): AVX-512 or AVX2
// where the CPU has them, the baseline ISA otherwise. The package is built for the baseline x86-64
// ISA (SSE2) so that one build runs everywhere; these loops are where that costs the most.
// Each computes the same IEEE operations in the same order as the portable code it replaces
// (separate multiply and add, no fused multiply-add), so the choice of ISA changes the speed, never
// a result.
#pragma once

#include <cstdint>
#include <vector>

#include "../anm_common.h"

namespace anm_fast {
namespace cpu {

// Raw energies of samples g = 0 .. G-1 at f + g * sB (K channels at stride sK, each a contiguous
// plane of P positions) into e[g * P + p], each position adding its squares in the order
// k = 0, 1, .... Returns false, writing nothing, when this path does not apply (P < 16, or a build
// without vector extensions); the caller then uses the portable loop.
// Why: the portable loop is bound by its add chains (a 4 x 4 map has only 16 independent sums)
// and by SSE's 4 lanes; here 16 positions fill one vector and up to four samples are summed side
// by side, so the vector units have enough independent work.
bool energy_planes_f32(const float* f, int64_t G, int64_t sB, int64_t K, int64_t sK, int64_t P,
                       float* e);

// The h source rows of a bilinear resize resized horizontally to W columns:
// rows[y, j] = lerp(e[y, col_i0[j]], e[y, col_i1[j]], col_lambda[j]). Returns false, writing
// nothing, where this path does not apply (a source row wider than a vector, or an ISA without a
// variable lane permute); the caller's run-by-run loop then does it, with the same values.
bool horizontal_resize_wide(const float* e, int64_t h, int64_t w, int64_t W, const int32_t* col_i0,
                           const int32_t* col_i1, const float* col_lambda, float* rows);

// Consecutive output rows [first, last] of a bilinear resize that read the same two source rows
// (i0, i1) with non-decreasing weights: see vector_kernels_impl.h for what the peak search gets
// from them. Worked out once per shape by row_runs().
struct RowRun {
  int64_t first, last, i0, i1;
};
std::vector<RowRun> row_runs(const LinearTap* row_taps, int64_t H);

// The peaks of one sample's bilinear resize, from `rows`, its h source rows already resized
// horizontally to W columns, and the output rows' taps and runs: the first row-major pixel at or
// above max - band * (max - min) (the first maximum when band = 0) into *first_hi, and the first at
// or below min + band * (max - min) into *first_lo (0 when nothing qualifies: non-finite energies).
// The values compared are exactly lerp()'s, so the result is that of a scalar scan of the map.
// `scratch` holds resized_peaks_scratch(n_runs) floats.
void resized_peaks(const float* rows, const LinearTap* row_taps, const RowRun* runs,
                   int64_t n_runs, int64_t W, float band, float* scratch, int64_t* first_hi,
                   int64_t* first_lo);
int64_t resized_peaks_scratch(int64_t n_runs);

}  // namespace cpu
}  // namespace anm_fast
