// Stage 3 on the CPU: both erased copies written in one pass over x (row by row, in the output's
// memory order), the label shift, and the backward (gradient outside the boxes; label clamp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../op_checks.h"
#include "erase_per_sample.h"

namespace anm_fast {
namespace {

// out[n] for n < B uses box_max, n >= B uses box_min; pixels inside get the fill value.
// One pass over x: each source plane (or, channels_last, each source row) is read once and
// written to both erased copies.
template <typename scalar_t>
void erase_kernel(const at::Tensor& x, const int64_t* boxes, const float* fills, at::Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t sB = x.stride(0), sC = x.stride(1), sH = x.stride(2), sW = x.stride(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const int64_t oN = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);
  const bool nhwc = out.is_contiguous(at::MemoryFormat::ChannelsLast) && !out.is_contiguous();
  if (!nhwc) {
    // Grain: about 32 KiB of output per task so small batches still split across threads.
    const int64_t plane = std::max<int64_t>(H * W, 1);
    const int64_t grain = std::max<int64_t>(1, 4096 / plane);
    at::parallel_for(0, B * C, grain, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / C, c = bc % C;
        const scalar_t* src = xp + b * sB + c * sC;
        for (int which = 0; which < 2; ++which) {
          const int64_t n = b + which * B;
          cpu::copy_plane_and_fill<scalar_t>(src, sH, sW, op + n * oN + c * oC, oH, H, W,
                                             cpu::read_box(boxes, n),
                                             static_cast<scalar_t>(fills[n * C + c]));
        }
      }
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(W * C, 1));
    at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t y = row % H, b = row / H;
        for (int which = 0; which < 2; ++which) {
          const int64_t n = b + which * B;
          cpu::copy_row_and_fill<scalar_t>(xp + b * sB + y * sH, sW, sC, op + n * oN + y * oH,
                                           oW, oC, y, W, C, cpu::read_box(boxes, n),
                                           fills + n * C);
        }
      }
    });
  }
}

template <typename scalar_t>
void modulate_kernel(const at::Tensor& t, const float* ratio, double label_gain, at::Tensor& out) {
  const int64_t B = t.size(0), N = t.size(1), s0 = t.stride(0), s1 = t.stride(1);
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  at::parallel_for(0, B, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      cpu::modulate_row<scalar_t>(tp + b * s0, s1, N, ratio[b], label_gain, op + b * N);
  });
}

std::tuple<at::Tensor, at::Tensor> erase_and_modulate_cpu(
    const at::Tensor& x, const at::Tensor& targets, const at::Tensor& box_max,
    const at::Tensor& box_min, const at::Tensor& fill_max, const at::Tensor& fill_min,
    const at::Tensor& ratio, double label_gain) {
  check_erase_args(x, targets, box_max, box_min, fill_max, fill_min, ratio);
  const int64_t B = x.size(0), C = x.size(1);

  const at::Tensor boxes = at::cat({box_max, box_min}, 0).to(at::kLong).contiguous();
  const at::Tensor fills = at::cat({fill_max, fill_min}, 0).to(at::kFloat).contiguous();
  const at::Tensor r = ratio.to(at::kFloat).contiguous();
  at::Tensor erased = at::empty({2 * B, C, x.size(2), x.size(3)},
                                x.options().memory_format(erased_memory_format(x)));
  at::Tensor targets_out = at::empty({B, targets.size(1)}, targets.options());
  if (B == 0) return {erased, targets_out};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "erase_cpu", [&] {
    erase_kernel<scalar_t>(x, boxes.const_data_ptr<int64_t>(), fills.const_data_ptr<float>(),
                           erased);
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, targets.scalar_type(),
                                  "modulate_cpu", [&] {
    modulate_kernel<scalar_t>(targets, r.const_data_ptr<float>(), label_gain, targets_out);
  });
  return {erased, targets_out};
}

// grad_x[b] = g[b] outside box_max[b] + g[B + b] outside box_min[b], accumulated as
// (0 + g_max) + g_min in opmath with the terms inside a box left out.
template <typename scalar_t>
void erase_backward_kernel(const at::Tensor& g, const int64_t* boxes, at::Tensor& gx) {
  using opmath_t = cpu::opmath_of<scalar_t>;
  const int64_t B = gx.size(0), C = gx.size(1), H = gx.size(2), W = gx.size(3);
  const int64_t gN = g.stride(0), gC = g.stride(1), gH = g.stride(2), gW = g.stride(3);
  const int64_t oB = gx.stride(0), oC = gx.stride(1), oH = gx.stride(2), oW = gx.stride(3);
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  scalar_t* op = gx.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(W, 1));
  at::parallel_for(0, B * C * H, grain, [&](int64_t begin, int64_t end) {
    int64_t y = begin % H, c = (begin / H) % C, b = begin / (H * C);
    for (int64_t row = begin; row < end; ++row) {
      const cpu::Box bm = cpu::read_box(boxes, b), bn = cpu::read_box(boxes, B + b);
      const scalar_t* __restrict__ g0 = gp + b * gN + c * gC + y * gH;
      const scalar_t* __restrict__ g1 = g0 + B * gN;
      scalar_t* __restrict__ dst = op + b * oB + c * oC + y * oH;
      const bool in_m = y >= bm.y0 && y < bm.y1, in_n = y >= bn.y0 && y < bn.y1;
      if (!in_m && !in_n && gW == 1 && oW == 1) {
        for (int64_t j = 0; j < W; ++j)  // the common row: no box crosses it (vectorised)
          dst[j] = static_cast<scalar_t>((opmath_t(0) + static_cast<opmath_t>(g0[j])) +
                                         static_cast<opmath_t>(g1[j]));
      } else {
        for (int64_t j = 0; j < W; ++j) {
          opmath_t acc = 0;
          if (!(in_m && j >= bm.x0 && j < bm.x1)) acc += static_cast<opmath_t>(g0[j * gW]);
          if (!(in_n && j >= bn.x0 && j < bn.x1)) acc += static_cast<opmath_t>(g1[j * gW]);
          dst[j * oW] = static_cast<scalar_t>(acc);
        }
      }
      if (++y == H) {
        y = 0;
        if (++c == C) { c = 0; ++b; }
      }
    }
  });
}

// Label-shift backward: t'_c = t_c + d / (N - 1), t'_k = t_k - d with d = min(gain * s, t_k).
// The gradient passes through unchanged except where the clamp is active: then t'_k = 0 and each
// other class gains t_k / (N - 1), so dL/dt_k = sum_{c != k} g_c / (N - 1). The arg-max and the
// clamp in the targets' opmath type, the sum in the gradient's (docs/SPEC.md, "Erasing and
// labels").
template <typename grad_t, typename targets_t>
void modulate_backward_kernel(const at::Tensor& gt, const at::Tensor& t, const float* ratio,
                              double label_gain, at::Tensor& out) {
  using t_op = cpu::opmath_of<targets_t>;
  using g_op = cpu::opmath_of<grad_t>;
  const int64_t B = t.size(0), N = t.size(1), ts0 = t.stride(0), ts1 = t.stride(1);
  const grad_t* gp = gt.const_data_ptr<grad_t>();
  const targets_t* tp = t.const_data_ptr<targets_t>();
  grad_t* op = out.data_ptr<grad_t>();
  at::parallel_for(0, B, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int64_t k;
      const t_op t_k = cpu::row_argmax<t_op>(tp + b * ts0, ts1, N, &k);
      bool clamped;
      label_shift<t_op>(t_k, ratio[b], label_gain, &clamped);
      const grad_t* grow = gp + b * N;
      g_op others = 0;
      for (int64_t c = 0; c < N; ++c) {
        op[b * N + c] = grow[c];
        if (c != k) others += static_cast<g_op>(grow[c]);
      }
      if (clamped) op[b * N + k] = static_cast<grad_t>(others / static_cast<g_op>(N - 1));
    }
  });
}

std::tuple<at::Tensor, at::Tensor> erase_and_modulate_backward_cpu(
    const at::Tensor& grad_erased, const at::Tensor& grad_targets, const at::Tensor& targets,
    const at::Tensor& box_max, const at::Tensor& box_min, const at::Tensor& ratio,
    double label_gain) {
  const int64_t B =
      check_erase_backward_args(grad_erased, grad_targets, targets, box_max, box_min);
  const at::Tensor boxes = at::cat({box_max, box_min}, 0).to(at::kLong).contiguous();
  const at::Tensor r = ratio.to(at::kFloat).contiguous();
  const at::Tensor gt = grad_targets.contiguous();
  at::Tensor grad_x = at::empty({B, grad_erased.size(1), grad_erased.size(2), grad_erased.size(3)},
                                grad_erased.options().memory_format(erased_memory_format(grad_erased)));
  at::Tensor grad_t = at::empty({B, targets.size(1)}, grad_targets.options());
  if (B == 0) return {grad_x, grad_t};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_erased.scalar_type(),
                                  "erase_bwd_cpu", [&] {
    erase_backward_kernel<scalar_t>(grad_erased, boxes.const_data_ptr<int64_t>(), grad_x);
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "modulate_bwd", [&] {
    using grad_scalar_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, targets.scalar_type(),
                                    "modulate_bwd_targets", [&] {
      modulate_backward_kernel<grad_scalar_t, scalar_t>(gt, targets, r.const_data_ptr<float>(),
                                                        label_gain, grad_t);
    });
  });
  return {grad_x, grad_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(anm_fast, CPU, m) {
  m.impl("erase_and_modulate", &erase_and_modulate_cpu);
  m.impl("erase_and_modulate_backward", &erase_and_modulate_backward_cpu);
}

}  // namespace anm_fast
