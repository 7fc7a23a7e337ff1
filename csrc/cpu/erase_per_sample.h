// Stage 3 for one sample (or one plane / row) on the CPU: the erased copies and the label shift.
// Used by erase_and_modulate (erase_and_modulate_cpu.cpp) and the fused anm_mask
// (anm_mask_cpu.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../anm_common.h"

namespace anm_fast {
namespace cpu {

struct Box {
  int64_t y0, x0, y1, x1;
};

inline Box read_box(const int64_t* boxes, int64_t b) {
  const int64_t* p = boxes + 4 * b;
  return Box{p[0], p[1], p[0] + p[2], p[1] + p[3]};
}

// Copy one H x W plane (source strides sH, sW) into a contiguous-row destination (row stride dH),
// then fill the box's rectangle with f.
template <typename scalar_t>
inline void copy_plane_and_fill(const scalar_t* __restrict__ src, int64_t sH, int64_t sW,
                                scalar_t* __restrict__ dst, int64_t dH, int64_t H, int64_t W,
                                const Box& box, scalar_t f) {
  if (sW == 1 && sH == W && dH == W) {
    std::memcpy(dst, src, sizeof(scalar_t) * H * W);
  } else {
    for (int64_t y = 0; y < H; ++y) {
      const scalar_t* s = src + y * sH;
      scalar_t* d = dst + y * dH;
      if (sW == 1) {
        std::memcpy(d, s, sizeof(scalar_t) * W);
      } else {
        for (int64_t j = 0; j < W; ++j) d[j] = s[j * sW];
      }
    }
  }
  const int64_t y0 = std::max<int64_t>(box.y0, 0), y1 = std::min<int64_t>(box.y1, H);
  const int64_t x0 = std::max<int64_t>(box.x0, 0), x1 = std::min<int64_t>(box.x1, W);
  for (int64_t y = y0; y < y1; ++y) {
    scalar_t* d = dst + y * dH;
    for (int64_t j = x0; j < x1; ++j) d[j] = f;
  }
}

// channels_last: copy source row y of one image (W pixels of C channels, strides sW, sC) into a
// destination row (strides oW, oC), then fill the box's pixels of that row.
template <typename scalar_t>
inline void copy_row_and_fill(const scalar_t* __restrict__ src, int64_t sW, int64_t sC,
                              scalar_t* __restrict__ dst, int64_t oW, int64_t oC, int64_t y,
                              int64_t W, int64_t C, const Box& box, const float* fills) {
  if (sC == 1 && sW == C && oC == 1 && oW == C) {
    std::memcpy(dst, src, sizeof(scalar_t) * W * C);
  } else {
    for (int64_t j = 0; j < W; ++j)
      for (int64_t c = 0; c < C; ++c) dst[j * oW + c * oC] = src[j * sW + c * sC];
  }
  if (y >= box.y0 && y < box.y1) {
    const int64_t j0 = std::max<int64_t>(box.x0, 0), j1 = std::min<int64_t>(box.x1, W);
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t c = 0; c < C; ++c) dst[j * oW + c * oC] = static_cast<scalar_t>(fills[c]);
  }
}

// Strides of x (B, C, H, W) and of the (2B, C, H, W) output, and whether the output is
// channels_last (then it is written row by row, else plane by plane).
struct EraseLayout {
  int64_t B, C, H, W;
  int64_t sB, sC, sH, sW;
  int64_t oN, oC, oH, oW;
  bool nhwc;
};

// Both erased copies of sample b: out[b] with box_max (fills_max), out[B + b] with box_min.
template <typename scalar_t>
inline void erase_sample(const EraseLayout& l, const scalar_t* x, scalar_t* out, int64_t b,
                         const Box& box_max, const Box& box_min, const float* fills_max,
                         const float* fills_min) {
  const Box* box[2] = {&box_max, &box_min};
  const float* fills[2] = {fills_max, fills_min};
  const int64_t plane = l.H * l.W;
  if (!l.nhwc && l.sW == 1 && l.sH == l.W && l.sC == plane && l.oW == 1 && l.oH == l.W &&
      l.oC == plane) {
    // Dense sample: one copy of the whole C x H x W image per erased copy (a long memcpy runs
    // at the machine's copy speed, C short ones do not), then the box's rows of each channel.
    for (int which = 0; which < 2; ++which) {
      scalar_t* dst = out + (b + which * l.B) * l.oN;
      std::memcpy(dst, x + b * l.sB, sizeof(scalar_t) * l.C * plane);
      const Box& bx = *box[which];
      const int64_t y0 = std::max<int64_t>(bx.y0, 0), y1 = std::min<int64_t>(bx.y1, l.H);
      const int64_t x0 = std::max<int64_t>(bx.x0, 0), x1 = std::min<int64_t>(bx.x1, l.W);
      for (int64_t c = 0; c < l.C; ++c) {
        const scalar_t f = static_cast<scalar_t>(fills[which][c]);
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t j = x0; j < x1; ++j) dst[c * plane + y * l.W + j] = f;
      }
    }
  } else if (!l.nhwc) {
    for (int64_t c = 0; c < l.C; ++c)
      for (int which = 0; which < 2; ++which)
        copy_plane_and_fill<scalar_t>(x + b * l.sB + c * l.sC, l.sH, l.sW,
                                      out + (b + which * l.B) * l.oN + c * l.oC, l.oH, l.H, l.W,
                                      *box[which], static_cast<scalar_t>(fills[which][c]));
  } else {
    for (int64_t y = 0; y < l.H; ++y)
      for (int which = 0; which < 2; ++which)
        copy_row_and_fill<scalar_t>(x + b * l.sB + y * l.sH, l.sW, l.sC,
                                    out + (b + which * l.B) * l.oN + y * l.oH, l.oW, l.oC, y, l.W,
                                    l.C, *box[which], fills[which]);
  }
}

template <typename scalar_t>
using opmath_of = typename std::conditional<std::is_same<scalar_t, double>::value, double,
                                            float>::type;

// The first arg-max k of a row of N values (stride s1), compared in opmath_t; returns t_k.
template <typename opmath_t, typename scalar_t>
inline opmath_t row_argmax(const scalar_t* row, int64_t s1, int64_t N, int64_t* k) {
  *k = 0;
  opmath_t best = static_cast<opmath_t>(row[0]);
  for (int64_t c = 1; c < N; ++c) {
    const opmath_t v = static_cast<opmath_t>(row[c * s1]);
    if (v > best) { best = v; *k = c; }  // first occurrence on ties
  }
  return best;
}

// Label shift of one row of N soft targets (stride s1): the arg-max class k (first on ties)
// gives d = min(gain * ratio, t_k), shared equally by the other N - 1 classes; the arithmetic in
// the targets' opmath type (float; double for double targets).
template <typename scalar_t>
inline void modulate_row(const scalar_t* row, int64_t s1, int64_t N, float ratio,
                         double label_gain, scalar_t* out) {
  using opmath_t = opmath_of<scalar_t>;
  int64_t k;
  const opmath_t best = row_argmax<opmath_t>(row, s1, N, &k);
  bool clamped;
  const opmath_t d = label_shift<opmath_t>(best, ratio, label_gain, &clamped);
  const opmath_t share = d / static_cast<opmath_t>(N - 1);
  for (int64_t c = 0; c < N; ++c) {
    const opmath_t v = static_cast<opmath_t>(row[c * s1]);
    out[c] = static_cast<scalar_t>(c == k ? v - d : v + share);
  }
}

}  // namespace cpu
}  // namespace anm_fast
