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
struct BoxParams {
  double area_lo, area_hi, quality_gain, aspect_lo, area_scale;
  bool center_anchor;
};

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
