// Wide-vector CPU loops (see vector_kernels.h for what and why). Each kernel is written once,
// templated on a vector type from GCC's vector extensions (GCC and Clang), and compiled three
// times on x86-64: for AVX-512 (16 lanes), AVX2 (8 lanes) and the baseline ISA (4 lanes, SSE2);
// elsewhere once, with 4 lanes (NEON on aarch64), or with plain floats by other compilers. The
// widest build the CPU supports is picked once, at the first call; ATEN_CPU_CAPABILITY=default or
// =avx2 lowers the choice, as it does for torch's own kernels.
#include "vector_kernels.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define ANM_FAST_VECTOR_TYPES 1
// Vectors wider than the baseline are passed only between always-inline functions that end up
// inside a function built for an ISA that has them.
#pragma GCC diagnostic ignored "-Wpsabi"
#define ANM_INLINE inline __attribute__((always_inline))
#else
#define ANM_INLINE inline
#endif

namespace anm_fast {
namespace cpu {
namespace {

#if defined(ANM_FAST_VECTOR_TYPES)
typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
#endif

constexpr int64_t kMaxLanes = 16;

// Bit l of a mask is set where lane l is >= t (resp. <= t); NaN lanes never are, as in the scalar
// code. These are the only ISA-specific lines: the rest is vector_kernels_impl.h.
#define ANM_SCALAR_MASKS                                                      \
  ANM_INLINE uint32_t mask_ge(float v, float t) { return v >= t ? 1u : 0u; } \
  ANM_INLINE uint32_t mask_le(float v, float t) { return v <= t ? 1u : 0u; }

#if defined(ANM_FAST_VECTOR_TYPES) && defined(__x86_64__)
namespace isa_baseline {  // SSE2, every x86-64 CPU
typedef v4f Vec;
constexpr bool kVarPermute = false;  // SSE2 has no variable lane permute
ANM_SCALAR_MASKS
ANM_INLINE uint32_t mask_ge(v4f v, float t) {
  return static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpge_ps(v, _mm_set1_ps(t))));
}
ANM_INLINE uint32_t mask_le(v4f v, float t) {
  return static_cast<uint32_t>(_mm_movemask_ps(_mm_cmple_ps(v, _mm_set1_ps(t))));
}
#include "vector_kernels_impl.h"
}  // namespace isa_baseline

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
namespace isa_avx2 {
typedef v8f Vec;
constexpr bool kVarPermute = true;  // vpermps
ANM_SCALAR_MASKS
ANM_INLINE uint32_t mask_ge(v8f v, float t) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(t), _CMP_GE_OQ)));
}
ANM_INLINE uint32_t mask_le(v8f v, float t) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(t), _CMP_LE_OQ)));
}
#include "vector_kernels_impl.h"
}  // namespace isa_avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// The AVX-512 subsets every AVX-512 server CPU since Skylake has (with AVX512F alone GCC builds a
// broadcast lane by lane).
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw")
#endif
namespace isa_avx512 {
typedef v16f Vec;
constexpr bool kVarPermute = true;  // vpermps
ANM_SCALAR_MASKS
ANM_INLINE uint32_t mask_ge(v16f v, float t) {
  return _mm512_cmp_ps_mask(v, _mm512_set1_ps(t), _CMP_GE_OQ);
}
ANM_INLINE uint32_t mask_le(v16f v, float t) {
  return _mm512_cmp_ps_mask(v, _mm512_set1_ps(t), _CMP_LE_OQ);
}
#include "vector_kernels_impl.h"
}  // namespace isa_avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#elif defined(ANM_FAST_VECTOR_TYPES)
namespace isa_baseline {  // 4 lanes (NEON on aarch64)
typedef v4f Vec;
constexpr bool kVarPermute = false;
ANM_SCALAR_MASKS
ANM_INLINE uint32_t mask_ge(v4f v, float t) {
  uint32_t m = 0;
  for (int l = 0; l < 4; ++l) m |= (v[l] >= t ? 1u : 0u) << l;
  return m;
}
ANM_INLINE uint32_t mask_le(v4f v, float t) {
  uint32_t m = 0;
  for (int l = 0; l < 4; ++l) m |= (v[l] <= t ? 1u : 0u) << l;
  return m;
}
#include "vector_kernels_impl.h"
}  // namespace isa_baseline

#else
namespace isa_baseline {  // no vector extensions: plain floats
typedef float Vec;
constexpr bool kVarPermute = false;
ANM_SCALAR_MASKS
#include "vector_kernels_impl.h"
}  // namespace isa_baseline
#endif

// ------------------------------------------------------------------------------ per-ISA builds
struct Kernels {
  void (*energy)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*);
  void (*peaks)(const float*, const LinearTap*, const RowRun*, int64_t, int64_t, float, float*,
                int64_t*, int64_t*);
  bool (*hresize)(const float*, int64_t, int64_t, int64_t, const int32_t*, const int32_t*,
                  const float*, float*);
};

Kernels pick_kernels() {
#if defined(ANM_FAST_VECTOR_TYPES) && defined(__x86_64__)
  const char* cap_env = std::getenv("ATEN_CPU_CAPABILITY");
  const std::string cap = cap_env ? cap_env : "";
  __builtin_cpu_init();
  if (cap != "default" && cap != "avx2" && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw"))
    return Kernels{isa_avx512::energy, isa_avx512::peaks, isa_avx512::hresize};
  if (cap != "default" && __builtin_cpu_supports("avx2")) return Kernels{isa_avx2::energy, isa_avx2::peaks, isa_avx2::hresize};
#endif
  return Kernels{isa_baseline::energy, isa_baseline::peaks, isa_baseline::hresize};
}

const Kernels& kernels() {
  static const Kernels k = pick_kernels();
  return k;
}

}  // namespace

bool energy_planes_f32(const float* f, int64_t G, int64_t sB, int64_t K, int64_t sK, int64_t P,
                       float* e) {
#if defined(ANM_FAST_VECTOR_TYPES)
  if (P < 16) return false;
  kernels().energy(f, G, sB, K, sK, P, e);
  return true;
#else
  (void)f, (void)G, (void)sB, (void)K, (void)sK, (void)P, (void)e;
  return false;  // scalar builds: the portable loop in peaks_per_sample.h is as good
#endif
}

std::vector<RowRun> row_runs(const LinearTap* taps, int64_t H) {
  std::vector<RowRun> runs;
  for (int64_t i = 0; i < H; ++i) {
    const LinearTap& t = taps[i];
    if (!runs.empty()) {
      RowRun& run = runs.back();
      const LinearTap& prev = taps[run.last];
      if (t.i0 == run.i0 && t.i1 == run.i1 && t.lambda >= prev.lambda) {
        run.last = i;
        continue;
      }
    }
    runs.push_back(RowRun{i, i, t.i0, t.i1});
  }
  return runs;
}

bool horizontal_resize_wide(const float* e, int64_t h, int64_t w, int64_t W, const int32_t* col_i0,
                           const int32_t* col_i1, const float* col_lambda, float* rows) {
  return kernels().hresize(e, h, w, W, col_i0, col_i1, col_lambda, rows);
}

int64_t resized_peaks_scratch(int64_t n_runs) { return 2 * n_runs * kMaxLanes + 2 * n_runs; }

void resized_peaks(const float* rows, const LinearTap* row_taps, const RowRun* runs,
                   int64_t n_runs, int64_t W, float band, float* scratch, int64_t* first_hi,
                   int64_t* first_lo) {
  kernels().peaks(rows, row_taps, runs, n_runs, W, band, scratch, first_hi, first_lo);
}

}  // namespace cpu
}  // namespace anm_fast
