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

template <typename V>
constexpr int lanes() {
  return static_cast<int>(sizeof(V) / sizeof(float));
}

template <typename V>
ANM_INLINE V load(const float* p) {  // unaligned
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// A constant in every lane. (Vector-scalar arithmetic broadcasts a run-time scalar; a run-time
// splat written like this makes GCC 12 build the vector lane by lane.)
template <typename V>
ANM_INLINE V splat(float x) {
  return x - V{};  // x - (+0) is x for every x
}

// `v > m ? v : m` and `v < m ? v : m` lane by lane: the scalar loops' comparisons.
template <typename V>
ANM_INLINE V vmax(V v, V m) {
  return v > m ? v : m;
}
template <typename V>
ANM_INLINE V vmin(V v, V m) {
  return v < m ? v : m;
}

// Lanes reduced by halving: the same max / min value as a sequential scan (see the header).
ANM_INLINE float reduce_max(float v) { return v; }
ANM_INLINE float reduce_min(float v) { return v; }
#if defined(ANM_FAST_VECTOR_TYPES)
ANM_INLINE float reduce_max(v4f v) {
  float m = v[0];
  for (int i = 1; i < 4; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
ANM_INLINE float reduce_min(v4f v) {
  float m = v[0];
  for (int i = 1; i < 4; ++i) m = v[i] < m ? v[i] : m;
  return m;
}
template <typename V, typename Half>
ANM_INLINE void halves(V v, Half* a, Half* b) {
  std::memcpy(a, &v, sizeof(Half));
  std::memcpy(b, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
}
ANM_INLINE float reduce_max(v8f v) {
  v4f a, b;
  halves(v, &a, &b);
  return reduce_max(vmax(b, a));
}
ANM_INLINE float reduce_min(v8f v) {
  v4f a, b;
  halves(v, &a, &b);
  return reduce_min(vmin(b, a));
}
ANM_INLINE float reduce_max(v16f v) {
  v8f a, b;
  halves(v, &a, &b);
  return reduce_max(vmax(b, a));
}
ANM_INLINE float reduce_min(v16f v) {
  v8f a, b;
  halves(v, &a, &b);
  return reduce_min(vmin(b, a));
}
#endif

// ------------------------------------------------------------------------------ energies
// Sums chunks off[0..NC) (16 positions each) of G samples over all K channels, with the G * NC
// partial sums held in registers for the whole channel loop. A chunk may overlap the previous one
// (the last chunk of a plane starts at P - 16): its overlapping lanes compute the same operations
// on the same values, so writing them twice is harmless.
template <typename V, int NC, int G>
ANM_INLINE void energy_block(const float* f, int64_t sB, int64_t K, int64_t sK,
                             const int64_t* off, int64_t P, float* e) {
  constexpr int kVec = 16 / lanes<V>();  // vectors per 16-position chunk
  V acc[G][NC][kVec];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < kVec; ++v) acc[g][c][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    const float* fk = f + k * sK;
    for (int g = 0; g < G; ++g)
      for (int c = 0; c < NC; ++c)
        for (int v = 0; v < kVec; ++v) {
          const V x = load<V>(fk + g * sB + off[c] + v * lanes<V>());
          acc[g][c][v] += x * x;  // multiply, then add: -ffp-contract=off keeps them separate
        }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < kVec; ++v)
        std::memcpy(e + g * P + off[c] + v * lanes<V>(), &acc[g][c][v], sizeof(V));
}

// One sample's chunks, four at a time (a plane of more than 64 positions is read once per group).
template <typename V>
ANM_INLINE void energy_one_sample(const float* f, int64_t K, int64_t sK, const int64_t* off,
                                  int64_t nc, int64_t P, float* e) {
  int64_t c = 0;
  for (; c + 4 <= nc; c += 4) energy_block<V, 4, 1>(f, 0, K, sK, off + c, P, e);
  switch (nc - c) {
    case 3: energy_block<V, 3, 1>(f, 0, K, sK, off + c, P, e); break;
    case 2: energy_block<V, 2, 1>(f, 0, K, sK, off + c, P, e); break;
    case 1: energy_block<V, 1, 1>(f, 0, K, sK, off + c, P, e); break;
    default: break;
  }
}

// Enough independent sums for the vector units: four samples side by side when a plane is one
// chunk (the CIFAR case, 4 x 4), two when it is two chunks, else one sample at a time.
template <typename V>
ANM_INLINE void energy_planes(const float* f, int64_t G, int64_t sB, int64_t K, int64_t sK,
                              int64_t P, float* e) {
  const int64_t nc = (P + 15) / 16;
  int64_t off_buf[64];
  int64_t* off = nc <= 64 ? off_buf : new int64_t[nc];
  for (int64_t c = 0; c < nc; ++c) off[c] = c + 1 < nc ? c * 16 : P - 16;
  int64_t g = 0;
  if (nc == 1 && lanes<V>() == 4) {  // 16 accumulators would not leave SSE registers free
    for (; g + 2 <= G; g += 2) energy_block<V, 1, 2>(f + g * sB, sB, K, sK, off, P, e + g * P);
  } else if (nc == 1) {
    for (; g + 4 <= G; g += 4) energy_block<V, 1, 4>(f + g * sB, sB, K, sK, off, P, e + g * P);
  } else if (nc == 2) {
    for (; g + 2 <= G; g += 2) energy_block<V, 2, 2>(f + g * sB, sB, K, sK, off, P, e + g * P);
  }
  for (; g < G; ++g) energy_one_sample<V>(f + g * sB, K, sK, off, nc, P, e + g * P);
  if (off != off_buf) delete[] off;
}

// ------------------------------------------------------------------------------ peak search
// Row i of the resize repeats row i - 1 (same values): same taps, or both clamped to one row.
ANM_INLINE bool repeats_previous_row(const LinearTap* taps, int64_t i) {
  if (i == 0) return false;
  const LinearTap& t = taps[i];
  const LinearTap& p = taps[i - 1];
  const bool same_taps = t.i0 == p.i0 && t.i1 == p.i1 && t.lambda == p.lambda;
  const bool both_clamped = t.i0 == t.i1 && p.i0 == p.i1 && t.i0 == p.i0;  // lerp(a, a, l) == a
  return same_taps || both_clamped;
}

// Pass 1 takes each row's lane-wise max and min vectors (no reduction per row) and the map's
// extremes; pass 2 reduces rows only until the first one that reaches the threshold, and scans
// that row for its first pixel. Columns past the last full vector are a scalar tail.
template <typename V>
ANM_INLINE void resized_peaks_v(const float* rows, const LinearTap* taps, int64_t H, int64_t W,
                                float band, float* scratch, int64_t* first_hi,
                                int64_t* first_lo) {
  constexpr int L = lanes<V>();
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t nv = W / L, jt = nv * L;
  float* row_hi = scratch;           // H x L: lane-wise max of each row's vector part
  float* row_lo = row_hi + H * L;    // H x L: lane-wise min
  float* tail_hi = row_lo + H * L;   // H: max of each row's scalar tail
  float* tail_lo = tail_hi + H;      // H
  V ghi = splat<V>(-inf), glo = splat<V>(inf);
  float thi = -inf, tlo = inf;
  for (int64_t i = 0; i < H; ++i) {
    if (repeats_previous_row(taps, i)) continue;
    const float* r0 = rows + taps[i].i0 * W;
    const float* r1 = rows + taps[i].i1 * W;
    const float l = taps[i].lambda;
    V mx = splat<V>(-inf), mn = splat<V>(inf);
    for (int64_t k = 0; k < nv; ++k) {
      const V a = load<V>(r0 + k * L), b = load<V>(r1 + k * L);
      const V v = a + (b - a) * l;  // lerp(), lane by lane
      mx = vmax(v, mx);
      mn = vmin(v, mn);
    }
    std::memcpy(row_hi + i * L, &mx, sizeof(V));
    std::memcpy(row_lo + i * L, &mn, sizeof(V));
    ghi = vmax(mx, ghi);
    glo = vmin(mn, glo);
    float th = -inf, tl = inf;
    for (int64_t j = jt; j < W; ++j) {
      const float v = lerp(r0[j], r1[j], l);
      th = v > th ? v : th;
      tl = v < tl ? v : tl;
    }
    tail_hi[i] = th;
    tail_lo[i] = tl;
    thi = th > thi ? th : thi;
    tlo = tl < tlo ? tl : tlo;
  }
  float hi = reduce_max(ghi), lo = reduce_min(glo);
  hi = thi > hi ? thi : hi;
  lo = tlo < lo ? tlo : lo;
  // The peak is the first row-major pixel at or beyond the threshold (the extreme itself when
  // band = 0, so the first occurrence of the max / min).
  float thr_hi = hi, thr_lo = lo;
  if (band > 0.f) {
    const float spread = (hi - lo) * band;
    thr_hi = hi - spread;
    thr_lo = lo + spread;
  }
  *first_hi = 0;
  *first_lo = 0;
  bool found_hi = false, found_lo = false;
  for (int64_t i = 0; i < H && !(found_hi && found_lo); ++i) {
    if (repeats_previous_row(taps, i)) continue;  // cannot hold the first pixel
    const float* r0 = rows + taps[i].i0 * W;
    const float* r1 = rows + taps[i].i1 * W;
    const float l = taps[i].lambda;
    if (!found_hi && (reduce_max(load<V>(row_hi + i * L)) >= thr_hi || tail_hi[i] >= thr_hi)) {
      for (int64_t j = 0; j < W; ++j)
        if (lerp(r0[j], r1[j], l) >= thr_hi) { *first_hi = i * W + j; break; }
      found_hi = true;
    }
    if (!found_lo && (reduce_min(load<V>(row_lo + i * L)) <= thr_lo || tail_lo[i] <= thr_lo)) {
      for (int64_t j = 0; j < W; ++j)
        if (lerp(r0[j], r1[j], l) <= thr_lo) { *first_lo = i * W + j; break; }
      found_lo = true;
    }
  }
}

// ------------------------------------------------------------------------------ per-ISA builds
struct Kernels {
  void (*energy)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*);
  void (*peaks)(const float*, const LinearTap*, int64_t, int64_t, float, float*, int64_t*,
                int64_t*);
};

#define ANM_DEFINE_KERNELS(NAME, TARGET, V)                                                   \
  TARGET void NAME##_energy(const float* f, int64_t G, int64_t sB, int64_t K, int64_t sK,     \
                            int64_t P, float* e) {                                            \
    energy_planes<V>(f, G, sB, K, sK, P, e);                                                  \
  }                                                                                           \
  TARGET void NAME##_peaks(const float* rows, const LinearTap* taps, int64_t H, int64_t W,    \
                           float band, float* scratch, int64_t* first_hi, int64_t* first_lo) { \
    resized_peaks_v<V>(rows, taps, H, W, band, scratch, first_hi, first_lo);                  \
  }

#define ANM_NO_TARGET
#if defined(ANM_FAST_VECTOR_TYPES)
ANM_DEFINE_KERNELS(baseline, ANM_NO_TARGET, v4f)
#else
ANM_DEFINE_KERNELS(baseline, ANM_NO_TARGET, float)
#endif
#if defined(ANM_FAST_VECTOR_TYPES) && defined(__x86_64__)
ANM_DEFINE_KERNELS(avx2, __attribute__((target("avx2"))), v8f)
// The AVX-512 subsets every AVX-512 server CPU since Skylake has (with AVX512F alone GCC builds a
// broadcast lane by lane).
ANM_DEFINE_KERNELS(avx512, __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"))), v16f)
#endif

Kernels pick_kernels() {
#if defined(ANM_FAST_VECTOR_TYPES) && defined(__x86_64__)
  const char* cap_env = std::getenv("ATEN_CPU_CAPABILITY");
  const std::string cap = cap_env ? cap_env : "";
  __builtin_cpu_init();
  if (cap != "default" && cap != "avx2" && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw"))
    return Kernels{avx512_energy, avx512_peaks};
  if (cap != "default" && __builtin_cpu_supports("avx2")) return Kernels{avx2_energy, avx2_peaks};
#endif
  return Kernels{baseline_energy, baseline_peaks};
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

int64_t resized_peaks_scratch(int64_t H) { return 2 * H * kMaxLanes + 2 * H; }

void resized_peaks(const float* rows, const LinearTap* row_taps, int64_t H, int64_t W, float band,
                   float* scratch, int64_t* first_hi, int64_t* first_lo) {
  kernels().peaks(rows, row_taps, H, W, band, scratch, first_hi, first_lo);
}

}  // namespace cpu
}  // namespace anm_fast
