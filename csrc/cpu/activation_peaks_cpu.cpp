// Stage 1 on the CPU: energy map, L2 normalisation and the peaks of its bilinear resize, one
// sample per task (the per-sample work is peaks_per_sample.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../op_checks.h"
#include "peaks_per_sample.h"

namespace anm_fast {
namespace {

template <typename scalar_t>
void activation_peaks_kernel(const at::Tensor& fmap, int64_t H, int64_t W, double band,
                             at::Tensor& peak_max, at::Tensor& peak_min, at::Tensor& energy) {
  const int64_t B = fmap.size(0), K = fmap.size(1), h = fmap.size(2), w = fmap.size(3);
  const int64_t sB = fmap.stride(0), sK = fmap.stride(1), sH = fmap.stride(2),
                sW = fmap.stride(3);
  const scalar_t* fptr = fmap.const_data_ptr<scalar_t>();
  float* eptr = energy.data_ptr<float>();
  int64_t* pmax = peak_max.data_ptr<int64_t>();
  int64_t* pmin = peak_min.data_ptr<int64_t>();
  const cpu::PeakPlan plan(h, w, H, W, band);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    cpu::PeakWorkspace<cpu::peak_acc_t<scalar_t>> ws(plan);
    // a non-finite energy is reported by the Python layer's value check (it sees `energy`)
    for (int64_t b = begin; b < end; b += cpu::kEnergyGroup)
      cpu::group_peaks<scalar_t>(plan, fptr + b * sB, std::min(cpu::kEnergyGroup, end - b), sB, K,
                                 sK, sH, sW, ws, eptr + b * h * w, pmax + 2 * b, pmin + 2 * b);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> activation_peaks_cpu(const at::Tensor& fmap,
                                                                    int64_t height, int64_t width,
                                                                    double band) {
  check_activation_peaks_args(fmap, height, width);
  const int64_t B = fmap.size(0);
  auto long_opts = fmap.options().dtype(at::kLong);
  at::Tensor peak_max = at::empty({B, 2}, long_opts);
  at::Tensor peak_min = at::empty({B, 2}, long_opts);
  at::Tensor energy = at::empty({B, fmap.size(2), fmap.size(3)}, fmap.options().dtype(at::kFloat));
  if (B == 0) return {peak_max, peak_min, energy};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fmap.scalar_type(),
                                  "activation_peaks_cpu", [&] {
    activation_peaks_kernel<scalar_t>(fmap, height, width, band, peak_max, peak_min, energy);
  });
  return {peak_max, peak_min, energy};
}

}  // namespace

TORCH_LIBRARY_IMPL(anm_fast, CPU, m) { m.impl("activation_peaks", &activation_peaks_cpu); }

}  // namespace anm_fast
