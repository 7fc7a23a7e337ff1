// Stage 2 on the GPU: one thread per sample derives the box shape, both placements and the fills
// from the sample's Philox stream with the same functions as the CPU (anm_common.h), so the
// boxes and fills are bit-identical to the CPU kernel's. The seed is read inside the kernel from
// the device tensor (no .item(), no host synchronisation: safe under CUDA graph capture).
#include <torch/library.h>

#include "../anm_common.h"
#include "../op_checks.h"
#include "cuda_utils.cuh"
#include "sampling_args.cuh"

#if !defined(ANM_CUDA_EMULATION)
// Present only in builds that compiled the CUDA sources: tests look it up in the shared library
// to know that the CUDA kernels must be registered (see tests/test_cuda_build_info.py).
extern "C" __attribute__((visibility("default"))) const char anm_fast_cuda_build[] =
    "anm_fast CUDA kernels";
#endif

namespace anm_fast {
namespace cuda {
namespace {

constexpr int kBoxThreads = 128;

// One thread per sample, each calling the CPU's sample_box_and_fills (anm_common.h).
__global__ void sample_boxes_kernel(const int64_t* __restrict__ pmax,
                                    const int64_t* __restrict__ pmin,
                                    const float* __restrict__ quality,
                                    const int64_t* __restrict__ ids,
                                    SeedArg seed, int64_t B, int64_t H, int64_t W, int64_t C,
                                    BoxParams params, FillArg fills,
                                    int64_t* __restrict__ bmax, int64_t* __restrict__ bmin,
                                    float* __restrict__ ratio, float* __restrict__ fmax,
                                    float* __restrict__ fmin) {
  __shared__ float staged_fills[kMaxArgFills];
  const float* fill_value = stage_fills(fills, C, staged_fills);
  __syncthreads();
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  ratio[b] = sample_box_and_fills(seed.get(), ids[b], quality[b], H, W, C, params, pmax + 2 * b,
                                  pmin + 2 * b, fill_value, bmax + 4 * b, bmin + 4 * b,
                                  fmax + b * C, fmin + b * C);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_boxes_cuda(
    const at::Tensor& peak_max_in, const at::Tensor& peak_min_in, const at::Tensor& quality_in,
    const at::Tensor& sample_ids_in, const at::Tensor& seed, int64_t H, int64_t W, int64_t C,
    c10::ArrayRef<double> box_params, const at::Tensor& fill_value_in) {
  const BoxParams params = box_params_arg("sample_boxes", box_params);
  const bool uniform_fill = params.uniform_fill;
  const int64_t B = check_sample_boxes_args(peak_max_in, peak_min_in, quality_in, sample_ids_in,
                                            seed, H, W, C, uniform_fill, fill_value_in);
  TORCH_CHECK(on_kernel_device(peak_max_in),
              "sample_boxes (CUDA): peak_max must be a CUDA tensor");
  const char* op = "sample_boxes";
  check_same_device(op, peak_max_in, {{peak_min_in, "peak_min"}, {quality_in, "quality"},
                                      {sample_ids_in, "sample_ids"}});
  DeviceGuard guard(peak_max_in.device());

  const at::Tensor peak_max = peak_max_in.to(at::kLong).contiguous();
  const at::Tensor peak_min = peak_min_in.to(at::kLong).contiguous();
  const at::Tensor quality = quality_in.to(at::kFloat).contiguous();
  const at::Tensor ids = sample_ids_in.to(at::kLong).contiguous();
  at::Tensor seed_dev, fill_value;
  const SeedArg seed_in = seed_arg(op, peak_max_in, seed, seed_dev);
  const FillArg fills =
      fill_arg(fill_value_in, uniform_fill, C, peak_max_in.device(), fill_value);

  auto long_opts = peak_max_in.options().dtype(at::kLong);
  auto float_opts = peak_max_in.options().dtype(at::kFloat);
  at::Tensor box_max = at::empty({B, 4}, long_opts);
  at::Tensor box_min = at::empty({B, 4}, long_opts);
  at::Tensor ratio = at::empty({B}, float_opts);
  at::Tensor fill_max = at::empty({B, C}, float_opts);
  at::Tensor fill_min = at::empty({B, C}, float_opts);
  if (B == 0) return {box_max, box_min, ratio, fill_max, fill_min};

  const int64_t blocks = (B + kBoxThreads - 1) / kBoxThreads;
  ANM_LAUNCH(blocks, kBoxThreads, 0, current_stream(), sample_boxes_kernel)(
      peak_max.const_data_ptr<int64_t>(), peak_min.const_data_ptr<int64_t>(),
      quality.const_data_ptr<float>(), ids.const_data_ptr<int64_t>(),
      seed_in, B, H, W, C, params, fills,
      box_max.data_ptr<int64_t>(), box_min.data_ptr<int64_t>(), ratio.data_ptr<float>(),
      fill_max.data_ptr<float>(), fill_min.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {box_max, box_min, ratio, fill_max, fill_min};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(ANM_CUDA_LIBRARY, ANM_CUDA_KEY, m) { m.impl("sample_boxes", &cuda::sample_boxes_cuda); }

}  // namespace anm_fast
