// The label shift of one sample's targets by one warp, the CPU's modulate_row
// (csrc/cpu/erase_per_sample.h) step for step: k = first arg-max, d = min(gain * s, t_k),
// t_k -= d, every other class += d / (N - 1), in float (double for double targets). Used by the
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

// Every lane of the calling warp must call it (it shuffles with the full mask).
template <typename scalar_t>
__device__ __forceinline__ void modulate_row_warp(const scalar_t* __restrict__ row, int64_t s1,
                                                  int64_t N, float ratio, double label_gain,
                                                  scalar_t* __restrict__ out) {
  using opmath_t = opmath_of<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  opmath_t best = opmath_t(0);
  int64_t k = LLONG_MAX;
  for (int64_t c = lane; c < N; c += kWarp) {
    const opmath_t v = static_cast<opmath_t>(row[c * s1]);
    if (k == LLONG_MAX || v > best) {
      best = v;
      k = c;
    }
  }
  warp_arg<true>(best, k);
  best = __shfl_sync(kFullMask, best, 0);
  k = __shfl_sync(kFullMask, k, 0);
  bool clamped;
  const opmath_t d = label_shift<opmath_t>(best, ratio, label_gain, &clamped);
  const opmath_t share = d / static_cast<opmath_t>(N - 1);
  for (int64_t c = lane; c < N; c += kWarp) {
    const opmath_t v = static_cast<opmath_t>(row[c * s1]);
    out[c] = static_cast<scalar_t>(c == k ? v - d : v + share);
  }
}

}  // namespace cuda
}  // namespace anm_fast
