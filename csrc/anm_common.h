// Per-sample math shared by the CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda):
// the Philox random stream, uniform draws, box geometry and placement, bilinear source weights.
//
// Everything here is written so that the CPU, the CUDA kernels, the Triton kernels
// (kernels/) and the pure-PyTorch reference (anm_fast/reference.py) give bit-identical boxes:
//  * random bits come from Philox4x32-10 keyed by the seed, counter = (sample id, block, 0);
//  * the geometry is evaluated in float64 in one fixed order with explicit rounding (no fused
//    multiply-add: the CPU build uses -ffp-contract=off, device code uses the __d*_rn intrinsics);
//  * rounding is round-half-to-even written with floor only, so no libm/libdevice rint differences.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ANM_HD __host__ __device__ __forceinline__
#else
#define ANM_HD inline
#endif

namespace anm_fast {

// ---------------------------------------------------------------------------------- Philox4x32
struct Words4 {
  uint32_t w[4];
};

ANM_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Philox4x32-10, the same rounds as Random123 and Triton's tl.philox.
ANM_HD Words4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                            uint32_t k1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(M0, c0), lo0 = M0 * c0;
    const uint32_t hi1 = mulhi32(M1, c2), lo1 = M1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  Words4 out;
  out.w[0] = c0;
  out.w[1] = c1;
  out.w[2] = c2;
  out.w[3] = c3;
  return out;
}

// Counter word 2 of a sample's stream: block 0 = geometry draws, blocks 1.. = fill draws.
constexpr uint32_t kGeometryBlock = 0;
constexpr uint32_t kFillBlock0 = 1;

ANM_HD Words4 sample_stream(int64_t seed, int64_t sample_id, uint32_t block) {
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint64_t id = static_cast<uint64_t>(sample_id);
  return philox4x32_10(static_cast<uint32_t>(id), static_cast<uint32_t>(id >> 32), block, 0u,
                       static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32));
}

// uint32 -> [0, 1): exact in both cases (x * 2^-32 in double, top 24 bits in float).
ANM_HD double uniform_f64(uint32_t x) { return static_cast<double>(x) * 2.3283064365386963e-10; }
ANM_HD float uniform_f32(uint32_t x) {
  return static_cast<float>(x >> 8) * 5.9604644775390625e-08f;
}

// Fill draw j (0..2C-1) of a sample: j < C is the max box's channel j, else the min box's.
ANM_HD float fill_draw(int64_t seed, int64_t sample_id, int64_t j) {
  const Words4 r = sample_stream(seed, sample_id, kFillBlock0 + static_cast<uint32_t>(j / 4));
  return uniform_f32(r.w[j % 4]);
}

// ------------------------------------------------------------------- float64 without contraction
#if defined(__CUDA_ARCH__)
ANM_HD double dmul(double a, double b) { return __dmul_rn(a, b); }
ANM_HD double dadd(double a, double b) { return __dadd_rn(a, b); }
ANM_HD double dsub(double a, double b) { return __dsub_rn(a, b); }
ANM_HD double ddiv(double a, double b) { return __ddiv_rn(a, b); }
ANM_HD double dsqrt(double a) { return __dsqrt_rn(a); }
ANM_HD double dfloor(double a) { return floor(a); }
#else
ANM_HD double dmul(double a, double b) { return a * b; }
ANM_HD double dadd(double a, double b) { return a + b; }
ANM_HD double dsub(double a, double b) { return a - b; }
ANM_HD double ddiv(double a, double b) { return a / b; }
ANM_HD double dsqrt(double a) { return std::sqrt(a); }
ANM_HD double dfloor(double a) { return std::floor(a); }
#endif

ANM_HD double round_half_even(double v) {
  const double f = dfloor(v);
  const double diff = dsub(v, f);
  const bool odd = dsub(f, dmul(2.0, dfloor(dmul(f, 0.5)))) == 1.0;
  return (diff > 0.5 || (diff == 0.5 && odd)) ? dadd(f, 1.0) : f;
}

ANM_HD int64_t clamp_i64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// ------------------------------------------------------------------------------- box geometry
// The box parameters of sample_boxes and anm_mask. The ops take them as ONE `float[] box_params`
// list, in the order of the fields below (the flags as 1.0 / 0.0): anm_fast/config.py's BoxParams
// packs it from an ANMConfig, and the Python kernels (reference, Triton) unpack it there. A new
// box knob is a field here, there, and where it is used.
struct BoxParams {
  double area_lo, area_hi, quality_gain, aspect_lo, area_scale;
  bool center_anchor;  // the box is centred on the peak (else the peak is its top-left corner)
  bool uniform_fill;   // fills drawn from U(0, 1) (else the op's fill_value)
};

// The list's length, its names (for messages), and where the flags begin (they come last).
constexpr int kBoxParamCount = 7;
constexpr const char* kBoxParamNames =
    "area_lo, area_hi, quality_gain, aspect_lo, area_scale, center_anchor, uniform_fill";
constexpr int kBoxParamFirstFlag = 5;

// `v` holds kBoxParamCount values (the ops check the length on the host, op_checks.h).
ANM_HD BoxParams unpack_box_params(const double* v) {
  BoxParams p;
  p.area_lo = v[0];
  p.area_hi = v[1];
  p.quality_gain = v[2];
  p.aspect_lo = v[3];
  p.area_scale = v[4];
  p.center_anchor = v[5] != 0.0;
  p.uniform_fill = v[6] != 0.0;
  return p;
}

struct BoxShape {
  double ratio;  // the mask ratio s
  int64_t bh, bw;
};

// s = U(area_lo, area_hi) + quality_gain * (1 - q); rho = U(aspect_lo, 1 / aspect_lo);
// bh = round(sqrt(area_scale * s * H * W * rho)), bw = round(sqrt(... / rho)), clamped to the image.
ANM_HD BoxShape box_shape(int64_t seed, int64_t sample_id, float quality, int64_t H, int64_t W,
                          const BoxParams& p) {
  const Words4 r = sample_stream(seed, sample_id, kGeometryBlock);
  const double u_area = uniform_f64(r.w[0]);
  const double u_aspect = uniform_f64(r.w[1]);
  const double s = dadd(dadd(p.area_lo, dmul(dsub(p.area_hi, p.area_lo), u_area)),
                        dmul(p.quality_gain, dsub(1.0, static_cast<double>(quality))));
  const double hi_aspect = ddiv(1.0, p.aspect_lo);
  const double rho = dadd(p.aspect_lo, dmul(dsub(hi_aspect, p.aspect_lo), u_aspect));
  const double area =
      dmul(dmul(dmul(p.area_scale, s), static_cast<double>(H)), static_cast<double>(W));
  double bh = round_half_even(dsqrt(dmul(area, rho)));
  double bw = round_half_even(dsqrt(ddiv(area, rho)));
  bh = bh < 1.0 ? 1.0 : (bh > static_cast<double>(H) ? static_cast<double>(H) : bh);
  bw = bw < 1.0 ? 1.0 : (bw > static_cast<double>(W) ? static_cast<double>(W) : bw);
  BoxShape out;
  out.ratio = s;
  out.bh = static_cast<int64_t>(bh);
  out.bw = static_cast<int64_t>(bw);
  return out;
}

// Top-left corner of a bh x bw box at peak (r, c), shifted to lie inside the H x W image.
ANM_HD void place_box(int64_t r, int64_t c, int64_t bh, int64_t bw, int64_t H, int64_t W,
                      bool center_anchor, int64_t* y0, int64_t* x0) {
  int64_t y = r, x = c;
  if (center_anchor) {
    y -= bh / 2;
    x -= bw / 2;
  }
  *y0 = clamp_i64(y, 0, H - bh);
  *x0 = clamp_i64(x, 0, W - bw);
}

// One sample's boxes and fills: the box shape from the sample's Philox stream, its placement at
// both peaks, the C fills of each box. The CPU kernels (sample_boxes, the fused anm_mask) and the
// CUDA kernels (one thread per sample) all call this function, so the sampling exists once.
// Writes box_max[0..3] and box_min[0..3] as (y0, x0, height, width), the fills of each box
// (uniform draws, or fill_value[c] when !params.uniform_fill), and returns the mask ratio s.
ANM_HD float sample_box_and_fills(int64_t seed, int64_t sample_id, float quality, int64_t H,
                                  int64_t W, int64_t C, const BoxParams& params,
                                  const int64_t* peak_max, const int64_t* peak_min,
                                  const float* fill_value, int64_t* box_max, int64_t* box_min,
                                  float* fill_max, float* fill_min) {
  const BoxShape shape = box_shape(seed, sample_id, quality, H, W, params);
  int64_t* out[2] = {box_max, box_min};
  const int64_t* peak[2] = {peak_max, peak_min};
  for (int which = 0; which < 2; ++which) {
    place_box(peak[which][0], peak[which][1], shape.bh, shape.bw, H, W, params.center_anchor,
              &out[which][0], &out[which][1]);
    out[which][2] = shape.bh;
    out[which][3] = shape.bw;
  }
  if (params.uniform_fill) {
    // Draw j of 0..2C-1 is word j % 4 of fill block j / 4 (the same bits as fill_draw): each
    // Philox block is computed once for its four draws.
    for (int64_t j0 = 0; j0 < 2 * C; j0 += 4) {
      const Words4 words =
          sample_stream(seed, sample_id, kFillBlock0 + static_cast<uint32_t>(j0 / 4));
      for (int64_t j = j0; j < j0 + 4 && j < 2 * C; ++j) {
        const float u = uniform_f32(words.w[j - j0]);
        if (j < C) fill_max[j] = u; else fill_min[j - C] = u;
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      fill_max[c] = fill_value[c];
      fill_min[c] = fill_value[c];
    }
  }
  return static_cast<float>(shape.ratio);
}

// ------------------------------------------------------------------- energy summation order
// The one order in which every backend (C++ CPU, CUDA, Triton, the reference) sums the activation
// energy, so that energies, and with them peaks and boxes, are the same bits everywhere:
//  * position p's raw energy is sum_k f[k, p]^2 in the accumulator type (float; double for
//    double maps), ONE sequential chain over the channels k = 0, 1, ..., K - 1 starting from 0
//    (each square rounded, then added: no fused multiply-add), whatever the memory layout;
//  * the L2 norm's square sum is sum_p e[p]^2, one sequential chain over the positions in
//    row-major order p = 0, 1, ..., h * w - 1; norm = max(sqrt(sum), 1e-12), each energy e[p] / norm
//    rounded to float.
// Vectorised code may sum several positions (or samples) side by side, never split one chain.
// A parallel tree over k would be faster on a GPU for small maps with many channels, but its
// result depends on the tree: a fixed sequential chain is the order every backend can follow.
template <typename acc_t, typename scalar_t>
ANM_HD acc_t position_energy(const scalar_t* fp, int64_t K, int64_t sK) {
  acc_t acc = acc_t(0);
  for (int64_t k = 0; k < K; ++k) {
    const acc_t v = static_cast<acc_t>(fp[k * sK]);
    acc += v * v;
  }
  return acc;
}

template <typename acc_t>
ANM_HD acc_t energy_square_sum(const acc_t* e, int64_t P) {
  acc_t sq = acc_t(0);
  for (int64_t p = 0; p < P; ++p) sq += e[p] * e[p];
  return sq;
}

// ------------------------------------------------------------------ bilinear (align_corners=0)
// Source taps of output index `dst` when resizing `in_size` -> `out_size` with half-pixel centres
// and edge clamping: PyTorch's interpolate(bilinear, align_corners=False) up to rounding.
// The value is interpolated as a + (b - a) * lambda (see lerp below), not w0 * a + w1 * b: where
// the taps are clamped (a == b) the result is exactly a, so the plateaus that bilinear resizing
// leaves at the borders hold exactly equal values, first-occurrence ties are decided the same
// way by every backend, and the peaks agree exactly instead of "up to rounding".
struct LinearTap {
  int64_t i0, i1;
  float lambda;
};

#if defined(__CUDA_ARCH__)
ANM_HD float fmul_exact(float a, float b) { return __fmul_rn(a, b); }
ANM_HD float fadd_exact(float a, float b) { return __fadd_rn(a, b); }
ANM_HD float fsub_exact(float a, float b) { return __fsub_rn(a, b); }
#else
ANM_HD float fmul_exact(float a, float b) { return a * b; }
ANM_HD float fadd_exact(float a, float b) { return a + b; }
ANM_HD float fsub_exact(float a, float b) { return a - b; }
#endif

ANM_HD LinearTap linear_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float src = fsub_exact(fmul_exact(scale, fadd_exact(static_cast<float>(dst), 0.5f)), 0.5f);
  if (src < 0.f) src = 0.f;
  int64_t i0 = static_cast<int64_t>(src);  // src >= 0: truncation is floor
  if (i0 > in_size - 1) i0 = in_size - 1;
  float lambda = fsub_exact(src, static_cast<float>(i0));
  lambda = lambda < 0.f ? 0.f : (lambda > 1.f ? 1.f : lambda);
  LinearTap t;
  t.i0 = i0;
  t.i1 = i0 < in_size - 1 ? i0 + 1 : i0;
  t.lambda = lambda;
  return t;
}

// a + (b - a) * w, rounded step by step (no fused multiply-add) on every backend.
ANM_HD float lerp(float a, float b, float w) { return fadd_exact(a, fmul_exact(fsub_exact(b, a), w)); }

// Label modulation shift for one sample: d = min(gain * s, t_k); `clamped` when t_k limits it.
template <typename T>
ANM_HD T label_shift(T t_k, float ratio, double label_gain, bool* clamped) {
  const T want = static_cast<T>(ratio) * static_cast<T>(label_gain);
  *clamped = want > t_k;
  return *clamped ? t_k : want;
}

}  // namespace anm_fast
