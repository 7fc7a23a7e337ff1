// Argument checks and output-layout rules shared by the CPU and CUDA kernels of every op, so the
// two backends accept exactly the same inputs and report the same messages. (The Python API checks
// arguments first with friendlier messages; these guard direct torch.ops.anm_fast calls.)
#pragma once

#include <ATen/ATen.h>

#include "anm_common.h"

#include <optional>
#include <string>

namespace anm_fast {

// The erased batch (and grad_x) keeps a channels_last input channels_last; anything else gives a
// contiguous output. anm_fast/reference.py:erased_memory_format is the same rule.
inline at::MemoryFormat erased_memory_format(const at::Tensor& x) {
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

// `t` in `dtype`, contiguous: the tensor itself when it already is (no dispatcher round trip, which
// costs microseconds when the code runs cold right after a call that streamed a batch).
inline at::Tensor as_contiguous(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype && t.is_contiguous() ? t : t.to(dtype).contiguous();
}

// The value of a one-element integer seed tensor held on the CPU, read on the host.
inline int64_t cpu_seed_value(const at::Tensor& seed) {
  switch (seed.scalar_type()) {
    case at::kLong: return *seed.const_data_ptr<int64_t>();
    case at::kInt: return *seed.const_data_ptr<int32_t>();
    default: return seed.to(at::kLong).item<int64_t>();
  }
}

// Name i of kBoxParamNames.
inline std::string box_param_name(int i) {
  std::string names = kBoxParamNames;
  size_t begin = 0;
  for (int k = 0; k < i; ++k) begin = names.find(", ", begin) + 2;
  return names.substr(begin, names.find(',', begin) - begin);
}

// The ops' `box_params` list unpacked (anm_common.h BoxParams), after checking its length and
// flags: a list packed for another version of the parameters fails here, not in a kernel.
inline BoxParams box_params_arg(const char* op, c10::ArrayRef<double> values) {
  TORCH_CHECK_VALUE(values.size() == static_cast<size_t>(kBoxParamCount), op,
                    ": box_params must hold ", kBoxParamCount,
                    " values (", kBoxParamNames, "; anm_fast.config.BoxParams), got ",
                    values.size());
  for (int i = kBoxParamFirstFlag; i < kBoxParamCount; ++i)
    TORCH_CHECK_VALUE(values[i] == 0.0 || values[i] == 1.0, op, ": box_params[", i, "] (",
                      box_param_name(i), ") must be 0 or 1, got ", values[i]);
  return unpack_box_params(values.data());
}

inline void check_activation_peaks_args(const at::Tensor& fmap, int64_t height, int64_t width) {
  TORCH_CHECK(fmap.dim() == 4, "activation_peaks: fmap must be (B, K, h, w), got ", fmap.sizes());
  TORCH_CHECK(height > 0 && width > 0, "activation_peaks: image size must be positive");
  TORCH_CHECK(fmap.size(1) > 0 && fmap.size(2) > 0 && fmap.size(3) > 0,
              "activation_peaks: fmap has an empty dimension: ", fmap.sizes());
}

// Returns the batch size B.
inline int64_t check_sample_boxes_args(const at::Tensor& peak_max, const at::Tensor& peak_min,
                                       const at::Tensor& quality, const at::Tensor& sample_ids,
                                       const at::Tensor& seed, int64_t H, int64_t W, int64_t C,
                                       bool uniform_fill, const at::Tensor& fill_value) {
  TORCH_CHECK(peak_max.dim() == 2 && peak_max.size(1) == 2, "sample_boxes: peak_max must be (B, 2)");
  TORCH_CHECK(peak_min.sizes() == peak_max.sizes(), "sample_boxes: peak_min must be (B, 2)");
  const int64_t B = peak_max.size(0);
  TORCH_CHECK(quality.dim() == 1 && quality.size(0) == B, "sample_boxes: quality must be (B,)");
  TORCH_CHECK(sample_ids.dim() == 1 && sample_ids.size(0) == B,
              "sample_boxes: sample_ids must be (B,)");
  TORCH_CHECK(seed.numel() == 1, "sample_boxes: seed must hold one integer");
  TORCH_CHECK(H > 0 && W > 0 && C > 0, "sample_boxes: image size and channels must be positive");
  TORCH_CHECK(uniform_fill || fill_value.numel() == C,
              "sample_boxes: fill_value must hold one value per channel");
  return B;
}

inline void check_boxes(const char* op, const at::Tensor& box, int64_t B, const char* name) {
  TORCH_CHECK(box.dim() == 2 && box.size(0) == B && box.size(1) == 4, op, ": ", name,
              " must be (B, 4), got ", box.sizes());
}

inline void check_erase_args(const at::Tensor& x, const at::Tensor& targets,
                             const at::Tensor& box_max, const at::Tensor& box_min,
                             const at::Tensor& fill_max, const at::Tensor& fill_min,
                             const at::Tensor& ratio) {
  TORCH_CHECK(x.dim() == 4, "erase_and_modulate: x must be (B, C, H, W), got ", x.sizes());
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(targets.dim() == 2 && targets.size(0) == B && targets.size(1) >= 2,
              "erase_and_modulate: targets must be (B, N) with N >= 2, got ", targets.sizes());
  check_boxes("erase_and_modulate", box_max, B, "box_max");
  check_boxes("erase_and_modulate", box_min, B, "box_min");
  TORCH_CHECK(fill_max.dim() == 2 && fill_max.size(0) == B && fill_max.size(1) == C &&
                  fill_min.sizes() == fill_max.sizes(),
              "erase_and_modulate: fills must be (B, C)");
  TORCH_CHECK(ratio.dim() == 1 && ratio.size(0) == B, "erase_and_modulate: ratio must be (B,)");
}

// The fused anm_mask (peaks, boxes, erasing): the checks of the three ops, on the arguments it
// shares.
inline void check_anm_mask_args(const at::Tensor& x, const at::Tensor& fmap,
                                const at::Tensor& targets, const at::Tensor& quality,
                                const std::optional<at::Tensor>& sample_ids,
                                const at::Tensor& seed, bool uniform_fill,
                                const at::Tensor& fill_value) {
  TORCH_CHECK(x.dim() == 4, "anm_mask: x must be (B, C, H, W), got ", x.sizes());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(C > 0 && H > 0 && W > 0, "anm_mask: x has an empty dimension: ", x.sizes());
  check_activation_peaks_args(fmap, H, W);
  TORCH_CHECK(fmap.size(0) == B, "anm_mask: fmap has batch size ", fmap.size(0), ", x has ", B);
  TORCH_CHECK(targets.dim() == 2 && targets.size(0) == B && targets.size(1) >= 2,
              "anm_mask: targets must be (B, N) with N >= 2, got ", targets.sizes());
  TORCH_CHECK(quality.dim() == 1 && quality.size(0) == B, "anm_mask: quality must be (B,)");
  TORCH_CHECK(!sample_ids.has_value() || (sample_ids->dim() == 1 && sample_ids->size(0) == B),
              "anm_mask: sample_ids must be (B,)");
  TORCH_CHECK(seed.numel() == 1, "anm_mask: seed must hold one integer");
  TORCH_CHECK(uniform_fill || fill_value.numel() == C,
              "anm_mask: fill_value must hold one value per channel");
}

// Returns the batch size B.
inline int64_t check_erase_backward_args(const at::Tensor& grad_erased,
                                         const at::Tensor& grad_targets,
                                         const at::Tensor& targets, const at::Tensor& box_max,
                                         const at::Tensor& box_min) {
  TORCH_CHECK(grad_erased.dim() == 4 && grad_erased.size(0) % 2 == 0,
              "erase_and_modulate_backward: grad_erased must be (2B, C, H, W)");
  const int64_t B = grad_erased.size(0) / 2;
  TORCH_CHECK(targets.dim() == 2 && targets.size(0) == B && targets.size(1) >= 2 &&
                  grad_targets.sizes() == targets.sizes(),
              "erase_and_modulate_backward: targets and grad_targets must be (B, N)");
  check_boxes("erase_and_modulate_backward", box_max, B, "box_max");
  check_boxes("erase_and_modulate_backward", box_min, B, "box_min");
  return B;
}

}  // namespace anm_fast
