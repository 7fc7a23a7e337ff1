// Stage 3 on the GPU, one launch each way. The grid's first blocks shift the labels, one warp per
// sample; the others walk the batch's (sample, vector) pairs (erase_sample.cuh). Forward: each
// thread reads a vector of x once and stores it, or the box fill, into copy b and copy B + b, in
// the output memory format the CPU chooses (channels_last input -> channels_last output, else
// contiguous). Backward: each thread reads a vector of both gradient copies and writes the
// gradient outside the boxes; the label blocks write the label-clamp backward.
// Boxes, fills, ratios and targets are read in the dtype and strides they are given (no cast or
// copy launches). Accesses to the images are 16-byte vectors whenever the layout and alignment
// allow, scalar otherwise.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <type_traits>

#include "../anm_common.h"
#include "../op_checks.h"
#include "cuda_utils.cuh"
#include "erase_sample.cuh"
#include "label_shift.cuh"

namespace anm_fast {
namespace cuda {
namespace {

constexpr int kEraseThreads = 256;
constexpr int kWarpsPerBlock = kEraseThreads / kWarp;  // label blocks: one warp per sample

// What both directions share: the batch, its label blocks and its walk over the images.
struct EraseGrid {
  int64_t N;                // classes
  uint32_t label_blocks;    // blocks [0, label_blocks) shift the labels
  BatchWalk walk;           // the other blocks walk the images
  SampleIndex idx;
  SampleStrides in;         // strides inside one sample of the input (x or the gradient)
  int64_t in_b;             // the input's sample stride
  int64_t C;
};

// Calls fn(b, v) for every (sample, vector) pair of the walking blocks' share.
template <typename Fn>
__device__ __forceinline__ void walk_batch(const EraseGrid& g, Fn&& fn) {
  const BatchWalk& w = g.walk;
  const uint32_t start = (blockIdx.x - g.label_blocks) * blockDim.x + threadIdx.x;
  int64_t b = start / w.per_sample;
  uint32_t v = start % w.per_sample;
  while (b < w.B) {
    fn(b, v);
    v += w.step_rest;
    b += w.step_samples;
    if (v >= w.per_sample) {
      v -= w.per_sample;
      ++b;
    }
  }
}

// ------------------------------------------------------------------------------------ forward
template <typename scalar_t, int VEC, bool NHWC>
__global__ void __launch_bounds__(kEraseThreads) erase_and_modulate_kernel(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ out, EraseGrid g, ArgView box_max,
    ArgView box_min, ArgView fill_max, ArgView fill_min, ArgView ratio, ArgView targets,
    ArgView targets_out, double label_gain) {
  if (blockIdx.x < g.label_blocks) {
    const int64_t warps = static_cast<int64_t>(g.label_blocks) * kWarpsPerBlock;
    for (int64_t b = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp; b < g.walk.B; b += warps)
      modulate_row_warp(targets, b, g.N, read_real<float>(ratio, b * ratio.s0), label_gain,
                        targets_out);  // b is uniform over the warp
    return;
  }
  const int64_t sample = static_cast<int64_t>(g.walk.per_sample) * VEC;  // C * H * W
  const int64_t copy = g.walk.B * sample;  // out[B + b] is this far after out[b]
  walk_batch(g, [&](int64_t b, uint32_t v) {
    const BoxRows bm = read_box(box_max, b), bn = read_box(box_min, b);
    scalar_t* o = out + b * sample;
    erase_vector<scalar_t, VEC, NHWC>(
        g.idx, g.in, g.C, x + b * g.in_b, o, o + copy, v * VEC, bm, bn,
        [&](int which, int64_t c) {
          const ArgView& f = which == 0 ? fill_max : fill_min;
          return read_real<float>(f, b * f.s0 + c * f.s1);
        });
  });
}

// ----------------------------------------------------------------------------------- backward
template <typename scalar_t, int VEC, bool NHWC>
__global__ void __launch_bounds__(kEraseThreads) erase_and_modulate_backward_kernel(
    const scalar_t* __restrict__ grad, scalar_t* __restrict__ gx, EraseGrid g, ArgView box_max,
    ArgView box_min, ArgView ratio, ArgView grad_targets, ArgView targets, ArgView grad_t,
    double label_gain) {
  if (blockIdx.x < g.label_blocks) {
    const int64_t warps = static_cast<int64_t>(g.label_blocks) * kWarpsPerBlock;
    for (int64_t b = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp; b < g.walk.B; b += warps)
      modulate_backward_row_warp(grad_targets, targets, b, g.N,
                                 read_real<float>(ratio, b * ratio.s0), label_gain, grad_t);
    return;
  }
  const int64_t sample = static_cast<int64_t>(g.walk.per_sample) * VEC;
  const int64_t copy = g.walk.B * g.in_b;  // grad[B + b] is this far after grad[b]
  walk_batch(g, [&](int64_t b, uint32_t v) {
    const BoxRows bm = read_box(box_max, b), bn = read_box(box_min, b);
    const scalar_t* src = grad + b * g.in_b;
    erase_backward_vector<scalar_t, VEC, NHWC>(g.idx, g.in, g.C, src, src + copy,
                                               gx + b * sample, v * VEC, bm, bn);
  });
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

// Calls fn(std::integral_constant<int, VEC>, std::integral_constant<bool, NHWC>).
template <typename scalar_t, typename Fn>
void with_variant(int vec, bool nhwc, Fn&& fn) {
  using Wide = std::integral_constant<int, static_cast<int>(16 / sizeof(scalar_t))>;
  using One = std::integral_constant<int, 1>;
  if (nhwc) {
    if (vec > 1) fn(Wide{}, std::true_type{}); else fn(One{}, std::true_type{});
  } else {
    if (vec > 1) fn(Wide{}, std::false_type{}); else fn(One{}, std::false_type{});
  }
}

void check_sample_size(const char* op, int64_t C, int64_t H, int64_t W) {
  TORCH_CHECK_VALUE(C * H * W <= kMaxSampleElements, op, " (CUDA): one image of ", C, " x ", H,
                    " x ", W, " = ", C * H * W, " elements is more than the kernels address (",
                    kMaxSampleElements, ")");
}

// The grid: label blocks for B samples, then blocks walking `vectors_per_sample` vectors of each.
EraseGrid erase_grid(const at::Tensor& in, int64_t B, int64_t N, int64_t vectors_per_sample,
                     uint32_t* blocks) {
  const int64_t C = in.size(1), H = in.size(2), W = in.size(3);
  const int64_t label_blocks = grid_for(B * kWarp, kEraseThreads);
  const int64_t walkers = vectors_per_sample > 0 ? grid_for(B * vectors_per_sample, kEraseThreads)
                                                 : 0;
  *blocks = static_cast<uint32_t>(label_blocks + walkers);
  const bool empty = vectors_per_sample == 0;
  return EraseGrid{N,
                   static_cast<uint32_t>(label_blocks),
                   batch_walk(B, empty ? 1 : vectors_per_sample, walkers * kEraseThreads),
                   empty ? SampleIndex{} : sample_index(C, H, W),
                   SampleStrides{in.stride(1), in.stride(2), in.stride(3)},
                   in.stride(0),
                   C};
}

// The pass over `in` (x, or grad_erased whose second copy starts at `in2`) writing the dense
// `out`: fn(in_ptr, out_ptr, VEC, NHWC, grid, blocks) for the dtype and the widest variant that
// the layout and alignment allow.
template <typename Fn>
void with_erase_pass(const at::Tensor& in, const void* in2, at::Tensor& out, int64_t B, int64_t N,
                     Fn&& fn) {
  const int64_t C = in.size(1), H = in.size(2), W = in.size(3);
  const bool nhwc = erased_memory_format(in) == at::MemoryFormat::ChannelsLast;
  const int64_t L = nhwc ? W * C : W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "erase_cuda", [&] {
    const int64_t strides[4] = {in.stride(0), in.stride(1), in.stride(2), in.stride(3)};
    const scalar_t* ip = in.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int vec = vector_width(ip, strides, op, nhwc, C, L, sizeof(scalar_t));
    if (vec > 1 && in2 != nullptr && !aligned_to(in2, 16)) vec = 1;
    with_variant<scalar_t>(vec, nhwc, [&](auto V, auto layout) {
      uint32_t blocks;
      const EraseGrid g = erase_grid(in, B, N, C * H * W / decltype(V)::value, &blocks);
      fn(ip, op, V, layout, g, blocks);
    });
  });
}

template <typename P>
using elem_of = typename std::remove_const<typename std::remove_pointer<P>::type>::type;

std::tuple<at::Tensor, at::Tensor> erase_and_modulate_cuda(
    const at::Tensor& x, const at::Tensor& targets, const at::Tensor& box_max,
    const at::Tensor& box_min, const at::Tensor& fill_max, const at::Tensor& fill_min,
    const at::Tensor& ratio, double label_gain) {
  check_erase_args(x, targets, box_max, box_min, fill_max, fill_min, ratio);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(on_kernel_device(x), "erase_and_modulate (CUDA): x must be a CUDA tensor");
  const char* op = "erase_and_modulate";
  check_same_device(op, x, {{targets, "targets"}, {box_max, "box_max"}, {box_min, "box_min"},
                            {fill_max, "fill_max"}, {fill_min, "fill_min"}, {ratio, "ratio"}});
  check_sample_size(op, C, H, W);
  DeviceGuard guard(x.device());

  at::Tensor erased = at::empty({2 * B, C, H, W},
                                x.options().memory_format(erased_memory_format(x)));
  const int64_t N = targets.size(1);
  at::Tensor targets_out = at::empty({B, N}, targets.options());
  if (B == 0) return {erased, targets_out};
  const HostArg bmax = arg_view(box_max, true), bmin = arg_view(box_min, true);
  const HostArg fmax = arg_view(fill_max, false), fmin = arg_view(fill_min, false);
  const HostArg r = arg_view(ratio, false), t = arg_view(targets, false);
  const ArgView t_out = out_view(targets_out);
  const cudaStream_t stream = current_stream();
  with_erase_pass(x, nullptr, erased, B, N,
                  [&](const auto* xp, auto* out, auto V, auto layout, const EraseGrid& g,
                      uint32_t blocks) {
    using scalar_t = elem_of<decltype(xp)>;
    ANM_LAUNCH(blocks, kEraseThreads, 0, stream,
               erase_and_modulate_kernel<scalar_t, decltype(V)::value, decltype(layout)::value>)(
        xp, out, g, bmax.view, bmin.view, fmax.view, fmin.view, r.view, t.view, t_out,
        label_gain);
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
  check_same_device(op, grad_erased, {{grad_targets, "grad_targets"}, {targets, "targets"},
                                      {box_max, "box_max"}, {box_min, "box_min"},
                                      {ratio, "ratio"}});
  check_sample_size(op, C, H, W);
  DeviceGuard guard(grad_erased.device());

  at::Tensor grad_x = at::empty(
      {B, C, H, W}, grad_erased.options().memory_format(erased_memory_format(grad_erased)));
  const int64_t N = targets.size(1);
  at::Tensor grad_t = at::empty({B, N}, grad_targets.options());
  if (B == 0) return {grad_x, grad_t};
  const HostArg bmax = arg_view(box_max, true), bmin = arg_view(box_min, true);
  const HostArg r = arg_view(ratio, false), t = arg_view(targets, false);
  const HostArg gt = arg_view(grad_targets, false);
  const ArgView gt_out = out_view(grad_t);
  const cudaStream_t stream = current_stream();
  // The second copy starts B * stride(0) further: it must be aligned too for vector loads.
  const void* second = static_cast<const char*>(grad_erased.const_data_ptr()) +
                       B * grad_erased.stride(0) * grad_erased.element_size();
  with_erase_pass(grad_erased, second, grad_x, B, N,
                  [&](const auto* gp, auto* out, auto V, auto layout, const EraseGrid& g,
                      uint32_t blocks) {
    using scalar_t = elem_of<decltype(gp)>;
    ANM_LAUNCH(blocks, kEraseThreads, 0, stream,
               erase_and_modulate_backward_kernel<scalar_t, decltype(V)::value,
                                                  decltype(layout)::value>)(
        gp, out, g, bmax.view, bmin.view, r.view, gt.view, t.view, gt_out, label_gain);
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
