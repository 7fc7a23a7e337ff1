// Stage 2 on the CPU: each sample's box shape, placement and fills from its own Philox stream
// (sample_box_and_fills in anm_common.h, the same function the CUDA kernel calls).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../op_checks.h"
#include "../anm_common.h"

namespace anm_fast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_boxes_cpu(
    const at::Tensor& peak_max_in, const at::Tensor& peak_min_in, const at::Tensor& quality_in,
    const at::Tensor& sample_ids_in, const at::Tensor& seed, int64_t H, int64_t W, int64_t C,
    c10::ArrayRef<double> box_params, const at::Tensor& fill_value_in) {
  const BoxParams params = box_params_arg("sample_boxes", box_params);
  const bool uniform_fill = params.uniform_fill;
  const int64_t B = check_sample_boxes_args(peak_max_in, peak_min_in, quality_in, sample_ids_in,
                                            seed, H, W, C, uniform_fill, fill_value_in);

  const at::Tensor peak_max = as_contiguous(peak_max_in, at::kLong);
  const at::Tensor peak_min = as_contiguous(peak_min_in, at::kLong);
  const at::Tensor quality = as_contiguous(quality_in, at::kFloat);
  const at::Tensor ids = as_contiguous(sample_ids_in, at::kLong);
  const at::Tensor fill_value = uniform_fill ? fill_value_in
                                             : as_contiguous(fill_value_in, at::kFloat);
  const int64_t seed_v = cpu_seed_value(seed);

  auto long_opts = peak_max_in.options().dtype(at::kLong);
  auto float_opts = peak_max_in.options().dtype(at::kFloat);
  at::Tensor box_max = at::empty({B, 4}, long_opts);
  at::Tensor box_min = at::empty({B, 4}, long_opts);
  at::Tensor ratio = at::empty({B}, float_opts);
  at::Tensor fill_max = at::empty({B, C}, float_opts);
  at::Tensor fill_min = at::empty({B, C}, float_opts);

  const int64_t* pmax = peak_max.const_data_ptr<int64_t>();
  const int64_t* pmin = peak_min.const_data_ptr<int64_t>();
  const float* q = quality.const_data_ptr<float>();
  const int64_t* id = ids.const_data_ptr<int64_t>();
  const float* fv = uniform_fill ? nullptr : fill_value.const_data_ptr<float>();
  int64_t* bmax = box_max.data_ptr<int64_t>();
  int64_t* bmin = box_min.data_ptr<int64_t>();
  float* r = ratio.data_ptr<float>();
  float* fmax = fill_max.data_ptr<float>();
  float* fmin = fill_min.data_ptr<float>();

  at::parallel_for(0, B, 256, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      r[b] = sample_box_and_fills(seed_v, id[b], q[b], H, W, C, params, pmax + 2 * b,
                                  pmin + 2 * b, fv, bmax + 4 * b, bmin + 4 * b, fmax + b * C,
                                  fmin + b * C);
    }
  });
  return {box_max, box_min, ratio, fill_max, fill_min};
}

}  // namespace

TORCH_LIBRARY_IMPL(anm_fast, CPU, m) { m.impl("sample_boxes", &sample_boxes_cpu); }

}  // namespace anm_fast
