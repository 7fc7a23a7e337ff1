// Stage 2 on the GPU: one thread per sample derives the box shape, both placements and the fills
// from the sample's Philox stream with the same functions as the CPU (anm_common.h), so the
// boxes and fills are bit-identical to the CPU kernel's. The seed is read inside the kernel from
// the device tensor (no .item(), no host synchronisation: safe under CUDA graph capture).
#include <torch/library.h>

#include "../anm_common.h"
#include "../op_checks.h"
#include "cuda_utils.cuh"

// Present only in builds that compiled the CUDA sources: tests look it up in the shared library
// to know that the CUDA kernels must be registered (see tests/test_cuda_ops.py).
extern "C" __attribute__((visibility("default"))) const char anm_fast_cuda_build[] =
    "anm_fast CUDA kernels";

namespace anm_fast {
namespace cuda {
namespace {

constexpr int kBoxThreads = 128;

// Constant fills given as a CPU tensor travel as a kernel argument (no host-to-device copy, so
// nothing to synchronise and nothing a CUDA graph capture would refuse), up to this many channels.
constexpr int kMaxArgFills = 16;
struct FillArg {
  float v[kMaxArgFills];
};

__global__ void sample_boxes_kernel(const int64_t* __restrict__ pmax,
                                    const int64_t* __restrict__ pmin,
                                    const float* __restrict__ quality,
                                    const int64_t* __restrict__ ids,
                                    const int64_t* __restrict__ seed_ptr, int64_t seed_value,
                                    int64_t B, int64_t H, int64_t W, int64_t C, BoxParams params,
                                    bool uniform_fill, const float* __restrict__ fill_value,
                                    FillArg fill_arg,
                                    int64_t* __restrict__ bmax, int64_t* __restrict__ bmin,
                                    float* __restrict__ ratio, float* __restrict__ fmax,
                                    float* __restrict__ fmin) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const int64_t seed = seed_ptr != nullptr ? *seed_ptr : seed_value;
  const int64_t id = ids[b];
  const BoxShape shape = box_shape(seed, id, quality[b], H, W, params);
  ratio[b] = static_cast<float>(shape.ratio);
  int64_t* out[2] = {bmax + 4 * b, bmin + 4 * b};
  const int64_t* peak[2] = {pmax + 2 * b, pmin + 2 * b};
  for (int which = 0; which < 2; ++which) {
    int64_t y0, x0;
    place_box(peak[which][0], peak[which][1], shape.bh, shape.bw, H, W, params.center_anchor,
              &y0, &x0);
    out[which][0] = y0;
    out[which][1] = x0;
    out[which][2] = shape.bh;
    out[which][3] = shape.bw;
  }
  float* fmax_b = fmax + b * C;
  float* fmin_b = fmin + b * C;
  if (uniform_fill) {
    // Draw j (0..2C-1) is word j % 4 of fill block j / 4: j < C is the max box's channel j,
    // the rest the min box's (anm_common.h fill_draw), one Philox call per 4 draws.
    for (int64_t j0 = 0; j0 < 2 * C; j0 += 4) {
      const Words4 r = sample_stream(seed, id, kFillBlock0 + static_cast<uint32_t>(j0 / 4));
      for (int t = 0; t < 4 && j0 + t < 2 * C; ++t) {
        const int64_t j = j0 + t;
        const float v = uniform_f32(r.w[t]);
        if (j < C)
          fmax_b[j] = v;
        else
          fmin_b[j - C] = v;
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const float v = fill_value != nullptr ? fill_value[c] : fill_arg.v[c];
      fmax_b[c] = v;
      fmin_b[c] = v;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_boxes_cuda(
    const at::Tensor& peak_max_in, const at::Tensor& peak_min_in, const at::Tensor& quality_in,
    const at::Tensor& sample_ids_in, const at::Tensor& seed, int64_t H, int64_t W, int64_t C,
    double area_lo, double area_hi, double quality_gain, double aspect_lo, double area_scale,
    bool center_anchor, bool uniform_fill, const at::Tensor& fill_value_in) {
  const int64_t B = check_sample_boxes_args(peak_max_in, peak_min_in, quality_in, sample_ids_in,
                                            seed, H, W, C, uniform_fill, fill_value_in);
  TORCH_CHECK(peak_max_in.is_cuda(), "sample_boxes (CUDA): peak_max must be a CUDA tensor");
  const char* op = "sample_boxes";
  check_same_device(op, peak_max_in, peak_min_in, "peak_min");
  check_same_device(op, peak_max_in, quality_in, "quality");
  check_same_device(op, peak_max_in, sample_ids_in, "sample_ids");
  c10::cuda::CUDAGuard guard(peak_max_in.device());

  const at::Tensor peak_max = peak_max_in.to(at::kLong).contiguous();
  const at::Tensor peak_min = peak_min_in.to(at::kLong).contiguous();
  const at::Tensor quality = quality_in.to(at::kFloat).contiguous();
  const at::Tensor ids = sample_ids_in.to(at::kLong).contiguous();
  // A seed on the GPU is read by the kernel; a CPU seed (0-d CPU tensors may accompany CUDA
  // tensors) is read here, which needs no synchronisation.
  at::Tensor seed_dev;
  int64_t seed_value = 0;
  if (seed.is_cuda()) {
    check_same_device(op, peak_max_in, seed, "seed");
    seed_dev = seed.to(at::kLong).reshape({1}).contiguous();
  } else {
    seed_value = cpu_seed_value(seed);
  }
  at::Tensor fill_value;
  FillArg fill_arg{};
  bool fills_in_arg = false;
  if (!uniform_fill) {
    if (fill_value_in.is_cpu() && C <= kMaxArgFills) {
      const at::Tensor f = fill_value_in.to(at::kFloat).contiguous();
      const float* fp = f.const_data_ptr<float>();
      for (int64_t c = 0; c < C; ++c) fill_arg.v[c] = fp[c];
      fills_in_arg = true;
    } else {
      fill_value = fill_value_in.to(peak_max_in.device(), at::kFloat).contiguous();
    }
  }

  auto long_opts = peak_max_in.options().dtype(at::kLong);
  auto float_opts = peak_max_in.options().dtype(at::kFloat);
  at::Tensor box_max = at::empty({B, 4}, long_opts);
  at::Tensor box_min = at::empty({B, 4}, long_opts);
  at::Tensor ratio = at::empty({B}, float_opts);
  at::Tensor fill_max = at::empty({B, C}, float_opts);
  at::Tensor fill_min = at::empty({B, C}, float_opts);
  if (B == 0) return {box_max, box_min, ratio, fill_max, fill_min};

  const BoxParams params{area_lo, area_hi, quality_gain, aspect_lo, area_scale, center_anchor};
  const int64_t blocks = (B + kBoxThreads - 1) / kBoxThreads;
  sample_boxes_kernel<<<blocks, kBoxThreads, 0, current_stream()>>>(
      peak_max.const_data_ptr<int64_t>(), peak_min.const_data_ptr<int64_t>(),
      quality.const_data_ptr<float>(), ids.const_data_ptr<int64_t>(),
      seed.is_cuda() ? seed_dev.const_data_ptr<int64_t>() : nullptr, seed_value, B, H, W, C,
      params, uniform_fill,
      (uniform_fill || fills_in_arg) ? nullptr : fill_value.const_data_ptr<float>(), fill_arg,
      box_max.data_ptr<int64_t>(), box_min.data_ptr<int64_t>(), ratio.data_ptr<float>(),
      fill_max.data_ptr<float>(), fill_min.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {box_max, box_min, ratio, fill_max, fill_min};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(anm_fast, CUDA, m) { m.impl("sample_boxes", &cuda::sample_boxes_cuda); }

}  // namespace anm_fast
