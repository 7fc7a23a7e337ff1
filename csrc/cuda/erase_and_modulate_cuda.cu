// Stage 3 on the GPU. Forward: one pass over x that writes both erased copies (each thread reads
// a vector of x once and stores it, or the box fill, into copy b and copy B + b), in the output
// memory format the CPU chooses (channels_last input -> channels_last output, else contiguous);
// the label shift runs one warp per sample. Backward: one pass reading both gradient copies and
// writing the gradient outside the boxes, plus the label-clamp backward, one warp per sample.
// Accesses are 16-byte vectors whenever the layout and alignment allow, scalar otherwise; index
// arithmetic is 32-bit (with precomputed fast division) unless the tensor is too large for it.
#include <ATen/Dispatch.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <torch/library.h>

#include <type_traits>

#include "../anm_common.h"
#include "../op_checks.h"
#include "cuda_utils.cuh"
#include "label_shift.cuh"

namespace anm_fast {
namespace cuda {
namespace {

using at::cuda::detail::IntDivider;

constexpr int kEraseThreads = 256;
constexpr int kWarpsPerBlock = 8;  // label kernels: one warp per sample

struct BoxRows {
  int64_t y0, x0, y1, x1;
};

__device__ __forceinline__ BoxRows load_box(const int64_t* __restrict__ boxes, int64_t n) {
  const int64_t* p = boxes + 4 * n;
  const int64_t y0 = p[0], x0 = p[1];
  return BoxRows{y0, x0, y0 + p[2], x0 + p[3]};
}

// Coordinates of the first element of vector v. The output is viewed as rows of L elements in
// its memory order: NCHW rows are (n, c, y) with L = W; NHWC rows are (n, y) with L = W * C.
template <bool NHWC, typename idx_t>
struct RowCoords {
  IntDivider<idx_t> Lv, H, C;  // L / VEC, H, C
  __device__ __forceinline__ void at(idx_t v, int VEC, idx_t& b, idx_t& c0, idx_t& y,
                                     idx_t& x0) const {
    const auto rq = Lv.divmod(v);
    const idx_t q0 = rq.mod * static_cast<idx_t>(VEC);
    const auto ry = H.divmod(rq.div);
    y = ry.mod;
    if (NHWC) {
      b = ry.div;
      const auto xc = C.divmod(q0);
      x0 = xc.div;
      c0 = xc.mod;
    } else {
      const auto bc = C.divmod(ry.div);
      b = bc.div;
      c0 = bc.mod;
      x0 = q0;
    }
  }
};

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

// ------------------------------------------------------------------------------------ forward
template <typename scalar_t, int VEC, bool NHWC, typename idx_t>
__global__ void __launch_bounds__(kEraseThreads) erase_kernel(
    const scalar_t* __restrict__ x, int64_t sB, int64_t sC, int64_t sH, int64_t sW,
    scalar_t* __restrict__ out, int64_t B, int64_t C, RowCoords<NHWC, idx_t> rc, idx_t nvec,
    int64_t copy_stride, const int64_t* __restrict__ boxes, const float* __restrict__ fills) {
  const idx_t step = static_cast<idx_t>(gridDim.x) * blockDim.x;
  for (idx_t v = static_cast<idx_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec;
       v += step) {
    idx_t b, c0, y, x0;
    rc.at(v, VEC, b, c0, y, x0);
    const BoxRows bm = load_box(boxes, b), bn = load_box(boxes, B + b);
    const int64_t yy = y;
    const bool row_m = yy >= bm.y0 && yy < bm.y1, row_n = yy >= bn.y0 && yy < bn.y1;
    const float* fm = fills + static_cast<int64_t>(b) * C;
    const float* fn = fills + (B + static_cast<int64_t>(b)) * C;

    scalar_t val[VEC], om[VEC], on[VEC];
    load_vec<scalar_t, VEC>(x + static_cast<int64_t>(b) * sB + static_cast<int64_t>(c0) * sC +
                                yy * sH + static_cast<int64_t>(x0) * sW,
                            val);
    int64_t xx = x0, cc = c0;
#pragma unroll
    for (int t = 0; t < VEC; ++t) {
      const bool in_m = row_m && xx >= bm.x0 && xx < bm.x1;
      const bool in_n = row_n && xx >= bn.x0 && xx < bn.x1;
      om[t] = in_m ? static_cast<scalar_t>(fm[cc]) : val[t];
      on[t] = in_n ? static_cast<scalar_t>(fn[cc]) : val[t];
      if (NHWC) {
        if (++cc == C) {
          cc = 0;
          ++xx;
        }
      } else {
        ++xx;
      }
    }
    const int64_t o = static_cast<int64_t>(v) * VEC;
    store_vec<scalar_t, VEC>(out + o, om);
    store_vec<scalar_t, VEC>(out + copy_stride + o, on);
  }
}

// Label shift, one warp per sample (label_shift.cuh: the CPU's steps).
template <typename scalar_t>
__global__ void modulate_kernel(const scalar_t* __restrict__ t, int64_t s0, int64_t s1,
                                int64_t B, int64_t N, const float* __restrict__ ratio,
                                double label_gain, scalar_t* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (b >= B) return;  // uniform over the warp
  modulate_row_warp<scalar_t>(t + b * s0, s1, N, ratio[b], label_gain, out + b * N);
}

// ----------------------------------------------------------------------------------- backward
template <typename scalar_t, int VEC, bool NHWC, typename idx_t>
__global__ void __launch_bounds__(kEraseThreads) erase_backward_kernel(
    const scalar_t* __restrict__ g, int64_t gN, int64_t gC, int64_t gH, int64_t gW,
    scalar_t* __restrict__ gx, int64_t B, int64_t C, RowCoords<NHWC, idx_t> rc, idx_t nvec,
    const int64_t* __restrict__ boxes) {
  using opmath_t = opmath_of<scalar_t>;
  const idx_t step = static_cast<idx_t>(gridDim.x) * blockDim.x;
  for (idx_t v = static_cast<idx_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec;
       v += step) {
    idx_t b, c0, y, x0;
    rc.at(v, VEC, b, c0, y, x0);
    const BoxRows bm = load_box(boxes, b), bn = load_box(boxes, B + b);
    const int64_t yy = y;
    const bool row_m = yy >= bm.y0 && yy < bm.y1, row_n = yy >= bn.y0 && yy < bn.y1;
    const scalar_t* src = g + static_cast<int64_t>(b) * gN + static_cast<int64_t>(c0) * gC +
                          yy * gH + static_cast<int64_t>(x0) * gW;
    scalar_t a[VEC], an[VEC], o[VEC];
    load_vec<scalar_t, VEC>(src, a);
    load_vec<scalar_t, VEC>(src + B * gN, an);
    int64_t xx = x0, cc = c0;
#pragma unroll
    for (int t = 0; t < VEC; ++t) {
      opmath_t acc = opmath_t(0);
      if (!(row_m && xx >= bm.x0 && xx < bm.x1)) acc += static_cast<opmath_t>(a[t]);
      if (!(row_n && xx >= bn.x0 && xx < bn.x1)) acc += static_cast<opmath_t>(an[t]);
      o[t] = static_cast<scalar_t>(acc);
      if (NHWC) {
        if (++cc == C) {
          cc = 0;
          ++xx;
        }
      } else {
        ++xx;
      }
    }
    store_vec<scalar_t, VEC>(gx + static_cast<int64_t>(v) * VEC, o);
  }
}

// dL/dt passes through, except where the clamp d = t_k is active: then t'_k = 0 and each other
// class gains t_k / (N - 1), so dL/dt_k = sum_{c != k} g_c / (N - 1). One warp per sample.
template <typename scalar_t, typename opmath_t>
__global__ void modulate_backward_kernel(const scalar_t* __restrict__ gt,
                                         const opmath_t* __restrict__ t_op, int64_t B, int64_t N,
                                         const float* __restrict__ ratio, double label_gain,
                                         scalar_t* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (b >= B) return;  // uniform over the warp
  const int lane = threadIdx.x % kWarp;
  const opmath_t* row = t_op + b * N;
  const scalar_t* grow = gt + b * N;
  opmath_t best = opmath_t(0);
  int64_t k = LLONG_MAX;
  for (int64_t c = lane; c < N; c += kWarp) {
    const opmath_t v = row[c];
    if (k == LLONG_MAX || v > best) {
      best = v;
      k = c;
    }
  }
  warp_arg<true>(best, k);
  best = __shfl_sync(kFullMask, best, 0);
  k = __shfl_sync(kFullMask, k, 0);
  bool clamped;
  label_shift<opmath_t>(best, ratio[b], label_gain, &clamped);
  opmath_t others = opmath_t(0);
  for (int64_t c = lane; c < N; c += kWarp) {
    const scalar_t gc = grow[c];
    if (c != k) others += static_cast<opmath_t>(gc);
    if (!(clamped && c == k)) out[b * N + c] = gc;
  }
  others = warp_sum(others);
  if (clamped && lane == 0)
    out[b * N + k] = static_cast<scalar_t>(others / static_cast<opmath_t>(N - 1));
}

// ------------------------------------------------------------------------------------ launch
// Vector width usable for a pass reading `in` (strides sB, sC, sH, sW of one (B, C, H, W) view)
// and writing the dense output `out` in layout NHWC / NCHW: 16-byte accesses need every vector
// inside one row, contiguous in the input, and both sides 16-byte aligned.
int vector_width(const void* in, const int64_t* s, const void* out, bool nhwc, int64_t C,
                 int64_t L, int64_t elem) {
  const int vec = static_cast<int>(16 / elem);
  if (vec <= 1 || L % vec != 0 || !aligned_to(in, 16) || !aligned_to(out, 16)) return 1;
  const int64_t sB = s[0], sC = s[1], sH = s[2], sW = s[3];
  if (nhwc) {
    if (sC != 1 || sW != C || sB % vec != 0 || sH % vec != 0) return 1;
  } else {
    if (sW != 1 || sB % vec != 0 || sC % vec != 0 || sH % vec != 0) return 1;
  }
  return vec;
}

// Calls fn(std::integral_constant<int, VEC>, std::integral_constant<bool, NHWC>, idx_t{})
// for the chosen variant.
template <typename scalar_t, typename Fn>
void with_variant(int vec, bool nhwc, bool small, Fn&& fn) {
  constexpr int V = static_cast<int>(16 / sizeof(scalar_t));
  using One = std::integral_constant<int, 1>;
  using Wide = std::integral_constant<int, V>;
  using NHWC = std::true_type;
  using NCHW = std::false_type;
  if (small) {
    if (nhwc) {
      if (vec > 1) fn(Wide{}, NHWC{}, uint32_t{}); else fn(One{}, NHWC{}, uint32_t{});
    } else {
      if (vec > 1) fn(Wide{}, NCHW{}, uint32_t{}); else fn(One{}, NCHW{}, uint32_t{});
    }
  } else {  // tensors past 2^30 vectors: 64-bit indices, scalar accesses
    if (nhwc) fn(One{}, NHWC{}, int64_t{}); else fn(One{}, NCHW{}, int64_t{});
  }
}

constexpr int64_t kSmallIndexLimit = int64_t(1) << 30;

std::tuple<at::Tensor, at::Tensor> erase_and_modulate_cuda(
    const at::Tensor& x, const at::Tensor& targets, const at::Tensor& box_max,
    const at::Tensor& box_min, const at::Tensor& fill_max, const at::Tensor& fill_min,
    const at::Tensor& ratio, double label_gain) {
  check_erase_args(x, targets, box_max, box_min, fill_max, fill_min, ratio);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(on_kernel_device(x), "erase_and_modulate (CUDA): x must be a CUDA tensor");
  const char* op = "erase_and_modulate";
  check_same_device(op, x, targets, "targets");
  check_same_device(op, x, box_max, "box_max");
  check_same_device(op, x, box_min, "box_min");
  check_same_device(op, x, fill_max, "fill_max");
  check_same_device(op, x, fill_min, "fill_min");
  check_same_device(op, x, ratio, "ratio");
  DeviceGuard guard(x.device());
  const cudaStream_t stream = current_stream();

  const at::Tensor boxes = at::cat({box_max, box_min}, 0).to(at::kLong).contiguous();
  const at::Tensor fills = at::cat({fill_max, fill_min}, 0).to(at::kFloat).contiguous();
  const at::Tensor r = ratio.to(at::kFloat).contiguous();
  const bool nhwc = erased_memory_format(x) == at::MemoryFormat::ChannelsLast;
  at::Tensor erased = at::empty({2 * B, C, H, W},
                                x.options().memory_format(erased_memory_format(x)));
  const int64_t N = targets.size(1);
  at::Tensor targets_out = at::empty({B, N}, targets.options());
  if (B == 0) return {erased, targets_out};

  const int64_t numel = B * C * H * W;
  if (numel > 0) {
    const int64_t L = nhwc ? W * C : W;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "erase_cuda", [&] {
      const int64_t strides[4] = {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* op_ = erased.data_ptr<scalar_t>();
      const int vec = vector_width(xp, strides, op_, nhwc, C, L, sizeof(scalar_t));
      const bool small = numel < kSmallIndexLimit;
      with_variant<scalar_t>(vec, nhwc, small, [&](auto V, auto layout, auto idx) {
        constexpr int kVec = decltype(V)::value;
        constexpr bool kNHWC = decltype(layout)::value;
        using idx_t = decltype(idx);
        const int64_t nvec = numel / kVec;
        RowCoords<kNHWC, idx_t> rc{IntDivider<idx_t>(static_cast<idx_t>(L / kVec)),
                                   IntDivider<idx_t>(static_cast<idx_t>(H)),
                                   IntDivider<idx_t>(static_cast<idx_t>(C))};
        ANM_LAUNCH(grid_for(nvec, kEraseThreads), kEraseThreads, 0, stream,
                   erase_kernel<scalar_t, kVec, kNHWC, idx_t>)(
                xp, strides[0], strides[1], strides[2], strides[3], op_, B, C, rc,
                static_cast<idx_t>(nvec), numel, boxes.const_data_ptr<int64_t>(),
                fills.const_data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, targets.scalar_type(),
                                  "modulate_cuda", [&] {
    const int64_t blocks = (B + kWarpsPerBlock - 1) / kWarpsPerBlock;
    ANM_LAUNCH(blocks, kWarpsPerBlock * kWarp, 0, stream, modulate_kernel<scalar_t>)(
        targets.const_data_ptr<scalar_t>(), targets.stride(0), targets.stride(1), B, N,
        r.const_data_ptr<float>(), label_gain, targets_out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {erased, targets_out};
}

std::tuple<at::Tensor, at::Tensor> erase_and_modulate_backward_cuda(
    const at::Tensor& grad_erased, const at::Tensor& grad_targets, const at::Tensor& targets,
    const at::Tensor& box_max, const at::Tensor& box_min, const at::Tensor& ratio,
    double label_gain) {
  const int64_t B =
      check_erase_backward_args(grad_erased, grad_targets, targets, box_max, box_min);
  const int64_t C = grad_erased.size(1), H = grad_erased.size(2), W = grad_erased.size(3);
  TORCH_CHECK(on_kernel_device(grad_erased),
              "erase_and_modulate_backward (CUDA): grad_erased must be a CUDA tensor");
  const char* op = "erase_and_modulate_backward";
  check_same_device(op, grad_erased, grad_targets, "grad_targets");
  check_same_device(op, grad_erased, targets, "targets");
  check_same_device(op, grad_erased, box_max, "box_max");
  check_same_device(op, grad_erased, box_min, "box_min");
  check_same_device(op, grad_erased, ratio, "ratio");
  DeviceGuard guard(grad_erased.device());
  const cudaStream_t stream = current_stream();

  const at::Tensor boxes = at::cat({box_max, box_min}, 0).to(at::kLong).contiguous();
  const at::Tensor r = ratio.to(at::kFloat).contiguous();
  const at::Tensor gt = grad_targets.contiguous();
  const at::MemoryFormat fmt = erased_memory_format(grad_erased);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor grad_x = at::empty({B, C, H, W}, grad_erased.options().memory_format(fmt));
  const int64_t N = targets.size(1);
  at::Tensor grad_t = at::empty({B, N}, grad_targets.options());
  if (B == 0) return {grad_x, grad_t};

  const int64_t numel = B * C * H * W;
  if (numel > 0) {
    const int64_t L = nhwc ? W * C : W;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_erased.scalar_type(),
                                    "erase_bwd_cuda", [&] {
      const int64_t strides[4] = {grad_erased.stride(0), grad_erased.stride(1),
                                  grad_erased.stride(2), grad_erased.stride(3)};
      const scalar_t* gp = grad_erased.const_data_ptr<scalar_t>();
      scalar_t* op_ = grad_x.data_ptr<scalar_t>();
      int vec = vector_width(gp, strides, op_, nhwc, C, L, sizeof(scalar_t));
      // The second copy starts B * stride(0) further: it must be aligned too.
      if (vec > 1 && !aligned_to(gp + B * strides[0], 16)) vec = 1;
      const bool small = 2 * numel < kSmallIndexLimit;
      with_variant<scalar_t>(vec, nhwc, small, [&](auto V, auto layout, auto idx) {
        constexpr int kVec = decltype(V)::value;
        constexpr bool kNHWC = decltype(layout)::value;
        using idx_t = decltype(idx);
        const int64_t nvec = numel / kVec;
        RowCoords<kNHWC, idx_t> rc{IntDivider<idx_t>(static_cast<idx_t>(L / kVec)),
                                   IntDivider<idx_t>(static_cast<idx_t>(H)),
                                   IntDivider<idx_t>(static_cast<idx_t>(C))};
        ANM_LAUNCH(grid_for(nvec, kEraseThreads), kEraseThreads, 0, stream,
                   erase_backward_kernel<scalar_t, kVec, kNHWC, idx_t>)(
                gp, strides[0], strides[1], strides[2], strides[3], op_, B, C, rc,
                static_cast<idx_t>(nvec), boxes.const_data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  const bool f64 = targets.scalar_type() == at::kDouble;
  const at::Tensor t_op = targets.to(f64 ? at::kDouble : at::kFloat).contiguous();
  const int64_t blocks = (B + kWarpsPerBlock - 1) / kWarpsPerBlock;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "modulate_bwd_cuda",
                                  [&] {
    if (f64)
      ANM_LAUNCH(blocks, kWarpsPerBlock * kWarp, 0, stream,
                 modulate_backward_kernel<scalar_t, double>)(
          gt.const_data_ptr<scalar_t>(), t_op.const_data_ptr<double>(), B, N,
          r.const_data_ptr<float>(), label_gain, grad_t.data_ptr<scalar_t>());
    else
      ANM_LAUNCH(blocks, kWarpsPerBlock * kWarp, 0, stream,
                 modulate_backward_kernel<scalar_t, float>)(
          gt.const_data_ptr<scalar_t>(), t_op.const_data_ptr<float>(), B, N,
          r.const_data_ptr<float>(), label_gain, grad_t.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_t};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(ANM_CUDA_LIBRARY, ANM_CUDA_KEY, m) {
  m.impl("erase_and_modulate", &cuda::erase_and_modulate_cuda);
  m.impl("erase_and_modulate_backward", &cuda::erase_and_modulate_backward_cuda);
}

}  // namespace anm_fast
