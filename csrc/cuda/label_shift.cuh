// The label shift of one sample's targets by one warp, and its backward: the CPU's modulate_row
// and modulate backward (csrc/cpu/erase_per_sample.h, erase_and_modulate_cpu.cpp) step for step.
// Forward: k = first arg-max, d = min(gain * s, t_k), t_k -= d, every other class += d / (N - 1).
// The arithmetic's dtype (docs/SPEC.md, "Erasing and labels"): the arg-max, the shift and the
// clamp in the targets' opmath type (float; double for double targets), the gradient's sums in the
// gradient's opmath type. Rows are read in their own dtype and strides (ArgView). Used by the
// erase_and_modulate and the fused anm_mask kernels.
#pragma once

#include <type_traits>

#include "../anm_common.h"
#include "cuda_utils.cuh"

namespace anm_fast {
namespace cuda {

template <typename scalar_t>
using opmath_of = typename std::conditional<std::is_same<scalar_t, double>::value, double,
                                            float>::type;

// First arg-max (k, t_k) of row b of `t` (N classes) in opmath_t, returned to every lane. Every
// lane of the calling warp must call it (it shuffles with the full mask).
template <typename opmath_t>
__device__ __forceinline__ void warp_row_argmax(const ArgView& t, int64_t b, int64_t N,
                                                opmath_t& best, int64_t& k) {
  const int lane = threadIdx.x % kWarp;
  best = opmath_t(0);
  k = LLONG_MAX;
  for (int64_t c = lane; c < N; c += kWarp) {
    const opmath_t v = read_real<opmath_t>(t, b * t.s0 + c * t.s1);
    if (k == LLONG_MAX || v > best) {
      best = v;
      k = c;
    }
  }
  warp_arg<true>(best, k);
  best = __shfl_sync(kFullMask, best, 0);
  k = __shfl_sync(kFullMask, k, 0);
}

// Row b of the modulated targets into row b of `out` (contiguous (B, N), the targets' dtype).
template <typename opmath_t>
__device__ __forceinline__ void modulate_row_warp(const ArgView& t, int64_t b, int64_t N,
                                                  float ratio, double label_gain,
                                                  const ArgView& out) {
  opmath_t best;
  int64_t k;
  warp_row_argmax<opmath_t>(t, b, N, best, k);
  bool clamped;
  const opmath_t d = label_shift<opmath_t>(best, ratio, label_gain, &clamped);
  const opmath_t share = d / static_cast<opmath_t>(N - 1);
  for (int64_t c = threadIdx.x % kWarp; c < N; c += kWarp) {
    const opmath_t v = read_real<opmath_t>(t, b * t.s0 + c * t.s1);
    write_real<opmath_t>(out, b * N + c, c == k ? v - d : v + share);
  }
}

// The forward for either targets opmath type.
__device__ __forceinline__ void modulate_row_warp(const ArgView& t, int64_t b, int64_t N,
                                                  float ratio, double label_gain,
                                                  const ArgView& out) {
  if (t.type == ElemType::kDouble)
    modulate_row_warp<double>(t, b, N, ratio, label_gain, out);
  else
    modulate_row_warp<float>(t, b, N, ratio, label_gain, out);
}

// Row b of dL/dt: dL/dt' passes through, except where the clamp d = t_k is active: then t'_k = 0
// and each other class gains t_k / (N - 1), so dL/dt_k = sum_{c != k} g_c / (N - 1). The arg-max
// and clamp in t_op (the targets' opmath), the sum in g_op (the gradient's).
template <typename t_op, typename g_op>
__device__ __forceinline__ void modulate_backward_row_warp(const ArgView& g, const ArgView& t,
                                                           int64_t b, int64_t N, float ratio,
                                                           double label_gain,
                                                           const ArgView& out) {
  const int lane = threadIdx.x % kWarp;
  t_op best;
  int64_t k;
  warp_row_argmax<t_op>(t, b, N, best, k);
  bool clamped;
  label_shift<t_op>(best, ratio, label_gain, &clamped);
  g_op others = g_op(0);
  for (int64_t c = lane; c < N; c += kWarp) {
    const g_op gc = read_real<g_op>(g, b * g.s0 + c * g.s1);
    if (c != k) others += gc;
    if (!(clamped && c == k)) write_real<g_op>(out, b * N + c, gc);
  }
  others = warp_sum(others);
  if (clamped && lane == 0) write_real<g_op>(out, b * N + k, others / static_cast<g_op>(N - 1));
}

// The backward for every pair of opmath types.
__device__ __forceinline__ void modulate_backward_row_warp(const ArgView& g, const ArgView& t,
                                                           int64_t b, int64_t N, float ratio,
                                                           double label_gain,
                                                           const ArgView& out) {
  const bool t64 = t.type == ElemType::kDouble, g64 = g.type == ElemType::kDouble;
  if (t64 && g64)
    modulate_backward_row_warp<double, double>(g, t, b, N, ratio, label_gain, out);
  else if (t64)
    modulate_backward_row_warp<double, float>(g, t, b, N, ratio, label_gain, out);
  else if (g64)
    modulate_backward_row_warp<float, double>(g, t, b, N, ratio, label_gain, out);
  else
    modulate_backward_row_warp<float, float>(g, t, b, N, ratio, label_gain, out);
}

}  // namespace cuda
}  // namespace anm_fast
