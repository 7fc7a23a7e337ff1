// The vector kernels' code, included by vector_kernels.cpp once per ISA level: inside a namespace
// of its own and a region compiled for that ISA, after `Vec` (the vector type of that level) and
// mask_ge / mask_le (Vec, float) -> bit mask of lanes have been defined. Everything here is generic
// in the vector type; only those two masks need the ISA's own instructions. (No include guard.)

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

// lerp() lane by lane: a + (b - a) * w as separate rounded operations (-ffp-contract=off), with w
// one weight for every lane or a vector of weights.
template <typename V, typename Wt>
ANM_INLINE V vlerp(V a, V b, Wt w) {
  return a + (b - a) * w;
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
// A vector's max (min) is the max (min) of its two halves' lane-wise max (min).
ANM_INLINE float reduce_max(v8f v);
ANM_INLINE float reduce_min(v8f v);
template <typename Half, typename V>
ANM_INLINE void halves(V v, Half* a, Half* b) {
  std::memcpy(a, &v, sizeof(Half));
  std::memcpy(b, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
}
template <typename Half, bool MAX, typename V>
ANM_INLINE float reduce_halves(V v) {
  Half a, b;
  halves(v, &a, &b);
  return MAX ? reduce_max(vmax(b, a)) : reduce_min(vmin(b, a));
}
ANM_INLINE float reduce_max(v8f v) { return reduce_halves<v4f, true>(v); }
ANM_INLINE float reduce_min(v8f v) { return reduce_halves<v4f, false>(v); }
ANM_INLINE float reduce_max(v16f v) { return reduce_halves<v8f, true>(v); }
ANM_INLINE float reduce_min(v16f v) { return reduce_halves<v8f, false>(v); }
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
// The first column of row lerp(r0, r1, l) at or above (HI) / at or below (!HI) the threshold, or
// -1 if none.
template <typename V, bool HI>
ANM_INLINE int64_t first_in_row(const float* r0, const float* r1, float l, int64_t W, float thr) {
  constexpr int L = lanes<V>();
  int64_t j = 0;
  for (; j + L <= W; j += L) {
    const V v = vlerp(load<V>(r0 + j), load<V>(r1 + j), l);
    const uint32_t m = HI ? mask_ge(v, thr) : mask_le(v, thr);
    if (m) return j + __builtin_ctz(m);
  }
  for (; j < W; ++j) {
    const float v = lerp(r0[j], r1[j], l);
    if (HI ? v >= thr : v <= thr) return j;
  }
  return -1;
}

// Lane-wise max and min of one row over its full vectors, and of its scalar tail (columns from
// nv * L on), merged into the running values.
template <typename V>
ANM_INLINE void row_extremes(const float* r0, const float* r1, float l, int64_t nv, int64_t W,
                             V* mx, V* mn, float* th, float* tl) {
  constexpr int L = lanes<V>();
  for (int64_t k = 0; k < nv; ++k) {
    const V v = vlerp(load<V>(r0 + k * L), load<V>(r1 + k * L), l);
    *mx = vmax(v, *mx);
    *mn = vmin(v, *mn);
  }
  for (int64_t j = nv * L; j < W; ++j) {
    const float v = lerp(r0[j], r1[j], l);
    *th = v > *th ? v : *th;
    *tl = v < *tl ? v : *tl;
  }
}

// The first row of run r holding a pixel at or beyond the threshold, and that pixel's column.
template <typename V, bool HI>
ANM_INLINE int64_t first_in_run(const float* rows, const LinearTap* taps, const RowRun& run,
                                int64_t W, float thr) {
  const float* r0 = rows + run.i0 * W;
  const float* r1 = rows + run.i1 * W;
  for (int64_t i = run.first; i <= run.last; ++i) {
    const int64_t j = first_in_row<V, HI>(r0, r1, taps[i].lambda, W, thr);
    if (j >= 0) return i * W + j;
  }
  return -1;  // only when the map holds NaN
}

// Why runs: within a run of rows sharing their two source rows, lambda grows with the row, and
// lerp(a, b, lambda) = a + (b - a) * lambda is monotonic in lambda even as rounded float operations
// (a fixed (b - a) times a growing lambda, rounded, then plus a fixed a, rounded). So each column's
// values over the run's rows lie between those of its first and last row: the run's max and min
// are those of its two end rows, and a run whose end rows stay short of a threshold holds no pixel
// reaching it. Pass 1 therefore interpolates two rows per run (8 of 32 rows for a 4 -> 32 resize)
// and keeps their lane-wise extremes; pass 2 scans rows only inside the first run that reaches the
// threshold. The values compared are lerp()'s throughout, so the peaks are those of a full scan.
template <typename V>
ANM_INLINE void resized_peaks_v(const float* rows, const LinearTap* taps, const RowRun* runs,
                                int64_t n_runs, int64_t W, float band, float* scratch,
                                int64_t* first_hi, int64_t* first_lo) {
  constexpr int L = lanes<V>();
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t nv = W / L;
  float* run_hi = scratch;                // n_runs x L: lane-wise max of each run's end rows
  float* run_lo = run_hi + n_runs * L;    // n_runs x L: lane-wise min
  float* tail_hi = run_lo + n_runs * L;   // n_runs: max of their scalar tails
  float* tail_lo = tail_hi + n_runs;      // n_runs
  V ghi = splat<V>(-inf), glo = splat<V>(inf);
  float thi = -inf, tlo = inf;
  for (int64_t r = 0; r < n_runs; ++r) {
    const RowRun& run = runs[r];
    const float* r0 = rows + run.i0 * W;
    const float* r1 = rows + run.i1 * W;
    V mx = splat<V>(-inf), mn = splat<V>(inf);
    float th = -inf, tl = inf;
    row_extremes<V>(r0, r1, taps[run.first].lambda, nv, W, &mx, &mn, &th, &tl);
    if (run.last != run.first && run.i0 != run.i1)  // a clamped run's rows are all equal
      row_extremes<V>(r0, r1, taps[run.last].lambda, nv, W, &mx, &mn, &th, &tl);
    std::memcpy(run_hi + r * L, &mx, sizeof(V));
    std::memcpy(run_lo + r * L, &mn, sizeof(V));
    tail_hi[r] = th;
    tail_lo[r] = tl;
    ghi = vmax(mx, ghi);
    glo = vmin(mn, glo);
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
  for (int64_t r = 0; r < n_runs; ++r)
    if (mask_ge(load<V>(run_hi + r * L), thr_hi) || tail_hi[r] >= thr_hi) {
      const int64_t at = first_in_run<V, true>(rows, taps, runs[r], W, thr_hi);
      if (at >= 0) *first_hi = at;
      break;
    }
  for (int64_t r = 0; r < n_runs; ++r)
    if (mask_le(load<V>(run_lo + r * L), thr_lo) || tail_lo[r] <= thr_lo) {
      const int64_t at = first_in_run<V, false>(rows, taps, runs[r], W, thr_lo);
      if (at >= 0) *first_lo = at;
      break;
    }
}

// ------------------------------------------------------------------------------ horizontal resize
// rows[y, j] = lerp(e[y, i0[j]], e[y, i1[j]], lambda[j]) for the h source rows, when a source row
// fits in one vector and the ISA permutes lanes by a variable index (kVarPermute): each output
// vector is then two in-register permutes of the source row, one lerp and one store. Returns
// false, writing nothing, otherwise (the caller's run-by-run loop does it).
template <typename V>
ANM_INLINE bool hresize_v(const float* e, int64_t h, int64_t w, int64_t W, const int32_t* i0,
                          const int32_t* i1, const float* lam, float* rows) {
#if defined(ANM_FAST_VECTOR_TYPES) && !defined(__clang__)
  constexpr int L = lanes<V>();
  if (!kVarPermute || w > L) return false;
  typedef int32_t VI __attribute__((vector_size(sizeof(V))));
  const int64_t nv = W / L;
  for (int64_t y = 0; y < h; ++y) {
    const float* er = e + y * w;
    V src = V{};
    std::memcpy(&src, er, sizeof(float) * w);  // lanes past w stay 0 (never selected)
    float* out = rows + y * W;
    for (int64_t k = 0; k < nv; ++k) {
      VI ia, ib;
      std::memcpy(&ia, i0 + k * L, sizeof(VI));
      std::memcpy(&ib, i1 + k * L, sizeof(VI));
      const V v = vlerp<V>(__builtin_shuffle(src, ia), __builtin_shuffle(src, ib),
                           load<V>(lam + k * L));
      std::memcpy(out + k * L, &v, sizeof(V));
    }
    for (int64_t j = nv * L; j < W; ++j) out[j] = lerp(er[i0[j]], er[i1[j]], lam[j]);
  }
  return true;
#else
  (void)e, (void)h, (void)w, (void)W, (void)i0, (void)i1, (void)lam, (void)rows;
  return false;
#endif
}

// ------------------------------------------------------------------------------ entry points
void energy(const float* f, int64_t G, int64_t sB, int64_t K, int64_t sK, int64_t P, float* e) {
  energy_planes<Vec>(f, G, sB, K, sK, P, e);
}

void peaks(const float* rows, const LinearTap* taps, const RowRun* runs, int64_t n_runs, int64_t W,
           float band, float* scratch, int64_t* first_hi, int64_t* first_lo) {
  resized_peaks_v<Vec>(rows, taps, runs, n_runs, W, band, scratch, first_hi, first_lo);
}

bool hresize(const float* e, int64_t h, int64_t w, int64_t W, const int32_t* i0, const int32_t* i1,
             const float* lam, float* rows) {
  return hresize_v<Vec>(e, h, w, W, i0, i1, lam, rows);
}
