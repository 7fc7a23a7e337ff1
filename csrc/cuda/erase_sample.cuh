// The erase of one sample, shared by the erase_and_modulate kernels and the fused anm_mask kernel:
// element coordinates inside a sample, the box test, and one vector of both erased copies (or of
// the gradient) per call. Offsets inside a sample are 32-bit (images of at most 2^31 - 1
// elements, checked on the host); the sample's base offset is 64-bit, so the batch may be of any
// size without 64-bit division.
#pragma once

#include <ATen/cuda/detail/IntegerDivider.cuh>

#include "cuda_utils.cuh"

namespace anm_fast {
namespace cuda {

using at::cuda::detail::IntDivider;

// The largest image (C * H * W elements) the 32-bit in-sample offsets address.
constexpr int64_t kMaxSampleElements = INT32_MAX;

// (c, y, x) of element i of one sample, i counted in the erased output's memory order:
// NCHW i = (c * H + y) * W + x, NHWC i = (y * W + x) * C + c.
struct SampleIndex {
  IntDivider<uint32_t> C, W, H;

  template <bool NHWC>
  __device__ __forceinline__ void at(uint32_t i, uint32_t& c, uint32_t& y, uint32_t& x) const {
    if (NHWC) {
      const auto q = C.divmod(i);
      c = q.mod;
      const auto r = W.divmod(q.div);
      x = r.mod;
      y = r.div;
    } else {
      const auto q = W.divmod(i);
      x = q.mod;
      const auto r = H.divmod(q.div);
      y = r.mod;
      c = r.div;
    }
  }
};

// Dividers for a C x H x W sample (every size >= 1).
inline SampleIndex sample_index(int64_t C, int64_t H, int64_t W) {
  return SampleIndex{IntDivider<uint32_t>(static_cast<uint32_t>(C)),
                     IntDivider<uint32_t>(static_cast<uint32_t>(W)),
                     IntDivider<uint32_t>(static_cast<uint32_t>(H))};
}

// A box as half-open row and column ranges.
struct BoxRows {
  int64_t y0, x0, y1, x1;
  __device__ __forceinline__ bool row(int64_t y) const { return y >= y0 && y < y1; }
  __device__ __forceinline__ bool col(int64_t x) const { return x >= x0 && x < x1; }
};

// Row b of a (B, 4) box tensor (y0, x0, height, width) in its own dtype and strides.
__device__ __forceinline__ BoxRows read_box(const ArgView& box, int64_t b) {
  const int64_t y0 = read_index(box, b * box.s0), x0 = read_index(box, b * box.s0 + box.s1);
  return BoxRows{y0, x0, y0 + read_index(box, b * box.s0 + 2 * box.s1),
                 x0 + read_index(box, b * box.s0 + 3 * box.s1)};
}

template <typename scalar_t, int VEC>
__device__ __forceinline__ void load_vec(const scalar_t* p, scalar_t (&out)[VEC]) {
  if (VEC == 1) {
    out[0] = p[0];
  } else {
    const AlignedVec<scalar_t, VEC> a = *reinterpret_cast<const AlignedVec<scalar_t, VEC>*>(p);
#pragma unroll
    for (int t = 0; t < VEC; ++t) out[t] = a.v[t];
  }
}

template <typename scalar_t, int VEC>
__device__ __forceinline__ void store_vec(scalar_t* p, const scalar_t (&in)[VEC]) {
  if (VEC == 1) {
    p[0] = in[0];
  } else {
    AlignedVec<scalar_t, VEC> a;
#pragma unroll
    for (int t = 0; t < VEC; ++t) a.v[t] = in[t];
    *reinterpret_cast<AlignedVec<scalar_t, VEC>*>(p) = a;
  }
}

// Strides of one (C, H, W) sample of an input (x, or a gradient copy).
struct SampleStrides {
  int64_t c, y, x;
};

// The coordinates of the VEC elements starting at element i (all in one row of the output's
// memory order) step by step: the next column in NCHW, the next channel (then column) in NHWC.
template <bool NHWC>
struct VecWalk {
  int64_t x, c;
  int64_t C;
  __device__ __forceinline__ void next() {
    if (NHWC) {
      if (++c == C) {
        c = 0;
        ++x;
      }
    } else {
      ++x;
    }
  }
};

// Elements i .. i + VEC - 1 of one sample into both erased copies: the value of x, or inside a
// box that box's fill for the channel (fill_max / fill_min are the sample's C fills).
template <typename scalar_t, int VEC, bool NHWC, typename FillFn>
__device__ __forceinline__ void erase_vector(const SampleIndex& idx, const SampleStrides& st,
                                             int64_t C, const scalar_t* __restrict__ xs,
                                             scalar_t* __restrict__ out_max,
                                             scalar_t* __restrict__ out_min, uint32_t i,
                                             const BoxRows& bm, const BoxRows& bn,
                                             FillFn&& fill) {
  uint32_t c0, y, x0;
  idx.at<NHWC>(i, c0, y, x0);
  const int64_t yy = y;
  const bool row_m = bm.row(yy), row_n = bn.row(yy);
  scalar_t val[VEC], om[VEC], on[VEC];
  load_vec<scalar_t, VEC>(xs + static_cast<int64_t>(c0) * st.c + yy * st.y +
                              static_cast<int64_t>(x0) * st.x,
                          val);
  VecWalk<NHWC> w{x0, c0, C};
#pragma unroll
  for (int t = 0; t < VEC; ++t) {
    om[t] = row_m && bm.col(w.x) ? static_cast<scalar_t>(fill(0, w.c)) : val[t];
    on[t] = row_n && bn.col(w.x) ? static_cast<scalar_t>(fill(1, w.c)) : val[t];
    w.next();
  }
  store_vec<scalar_t, VEC>(out_max + i, om);
  store_vec<scalar_t, VEC>(out_min + i, on);
}

// Elements i .. i + VEC - 1 of grad_x for one sample: g_max outside box_max plus g_min outside
// box_min, accumulated as (0 + g_max) + g_min in opmath with the terms inside a box left out.
template <typename scalar_t, int VEC, bool NHWC>
__device__ __forceinline__ void erase_backward_vector(const SampleIndex& idx,
                                                      const SampleStrides& st, int64_t C,
                                                      const scalar_t* __restrict__ g_max,
                                                      const scalar_t* __restrict__ g_min,
                                                      scalar_t* __restrict__ gx, uint32_t i,
                                                      const BoxRows& bm, const BoxRows& bn) {
  using opmath_t = typename std::conditional<std::is_same<scalar_t, double>::value, double,
                                             float>::type;
  uint32_t c0, y, x0;
  idx.at<NHWC>(i, c0, y, x0);
  const int64_t yy = y;
  const bool row_m = bm.row(yy), row_n = bn.row(yy);
  const int64_t off = static_cast<int64_t>(c0) * st.c + yy * st.y + static_cast<int64_t>(x0) * st.x;
  scalar_t a[VEC], an[VEC], o[VEC];
  load_vec<scalar_t, VEC>(g_max + off, a);
  load_vec<scalar_t, VEC>(g_min + off, an);
  VecWalk<NHWC> w{x0, c0, C};
#pragma unroll
  for (int t = 0; t < VEC; ++t) {
    opmath_t acc = opmath_t(0);
    if (!(row_m && bm.col(w.x))) acc += static_cast<opmath_t>(a[t]);
    if (!(row_n && bn.col(w.x))) acc += static_cast<opmath_t>(an[t]);
    o[t] = static_cast<scalar_t>(acc);
    w.next();
  }
  store_vec<scalar_t, VEC>(gx + i, o);
}

// A grid-stride walk over the (sample, vector) pairs of a batch, vector v of a sample being its
// elements v * VEC .. v * VEC + VEC - 1: the sample index is 64-bit, the offset inside it 32-bit,
// and a step costs additions only (the grid stride is split into whole samples and a remainder
// on the host).
struct BatchWalk {
  int64_t B;
  uint32_t per_sample;        // vectors per sample (>= 1)
  int64_t step_samples;       // the grid stride (threads of the walking blocks), in samples ...
  uint32_t step_rest;         // ... and the vectors left over (< per_sample)
};

inline BatchWalk batch_walk(int64_t B, int64_t per_sample, int64_t stride) {
  return BatchWalk{B, static_cast<uint32_t>(per_sample), stride / per_sample,
                   static_cast<uint32_t>(stride % per_sample)};
}

}  // namespace cuda
}  // namespace anm_fast
