// Stage 1 on the GPU: one block per sample (peaks_block.cuh) reads the feature map once, sums
// the channel energy and its L2 norm in the CPU's order, writes the normalised energy map, and
// finds the peaks of its bilinear resize to H x W without storing the resized map, bit-identical
// to the CPU kernel.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cfloat>
#include <cmath>
#include <type_traits>

#include "../anm_common.h"
#include "../op_checks.h"
#include "cuda_utils.cuh"
#include "peaks_block.cuh"

namespace anm_fast {
namespace cuda {
namespace {

// One block per sample.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kPeakThreads) activation_peaks_kernel(
    const scalar_t* __restrict__ fmap, int64_t K, int h, int w, int64_t sB, int64_t sK,
    int64_t sH, int64_t sW, int H, int W, float band, PeakSmem plan, acc_t* __restrict__ scratch,
    float* __restrict__ energy, int64_t* __restrict__ peak_max, int64_t* __restrict__ peak_min) {
  ANM_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int64_t b = blockIdx.x;
  const int64_t P = static_cast<int64_t>(h) * w;
  int ihi, ilo;
  block_peaks<scalar_t, acc_t>(fmap + b * sB, K, h, w, sK, sH, sW, H, W, band, plan, smem_raw,
                               plan.map_in_smem ? nullptr : scratch + b * P, energy + b * P,
                               &ihi, &ilo);
  if (threadIdx.x == 0) write_peaks(ihi, ilo, W, peak_max + 2 * b, peak_min + 2 * b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> activation_peaks_cuda(const at::Tensor& fmap,
                                                                     int64_t height,
                                                                     int64_t width, double band) {
  TORCH_CHECK(on_kernel_device(fmap), "activation_peaks (CUDA): fmap must be a CUDA tensor");
  check_activation_peaks_args(fmap, height, width);
  const int64_t B = fmap.size(0), K = fmap.size(1), h = fmap.size(2), w = fmap.size(3);
  TORCH_CHECK(h * w <= INT_MAX && height * width <= INT_MAX - 2 * kPeakThreads,
              "activation_peaks (CUDA): feature map or image too large");
  DeviceGuard guard(fmap.device());

  auto long_opts = fmap.options().dtype(at::kLong);
  at::Tensor peak_max = at::empty({B, 2}, long_opts);
  at::Tensor peak_min = at::empty({B, 2}, long_opts);
  at::Tensor energy = at::empty({B, h, w}, fmap.options().dtype(at::kFloat));
  if (B == 0) return {peak_max, peak_min, energy};

  const bool f64 = fmap.scalar_type() == at::kDouble;
  const PeakSmem plan = plan_peak_smem(h, w, height, width, f64 ? 8 : 4);
  at::Tensor scratch;  // (B, h*w) accumulator map when it does not fit in shared memory
  if (!plan.map_in_smem)
    scratch = at::empty({B * h * w}, fmap.options().dtype(f64 ? at::kDouble : at::kFloat));

  const float bandf = static_cast<float>(band);
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fmap.scalar_type(),
                                  "activation_peaks_cuda", [&] {
    using acc_t = typename std::conditional<std::is_same<scalar_t, double>::value, double,
                                            float>::type;
    ANM_LAUNCH(B, kPeakThreads, plan.bytes, stream,
               activation_peaks_kernel<scalar_t, acc_t>)(
        fmap.const_data_ptr<scalar_t>(), K, static_cast<int>(h), static_cast<int>(w),
        fmap.stride(0), fmap.stride(1), fmap.stride(2), fmap.stride(3),
        static_cast<int>(height), static_cast<int>(width), bandf, plan,
        plan.map_in_smem ? nullptr : scratch.data_ptr<acc_t>(), energy.data_ptr<float>(),
        peak_max.data_ptr<int64_t>(), peak_min.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {peak_max, peak_min, energy};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(ANM_CUDA_LIBRARY, ANM_CUDA_KEY, m) {
  m.impl("activation_peaks", &cuda::activation_peaks_cuda);
}

}  // namespace anm_fast
