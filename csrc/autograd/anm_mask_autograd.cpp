// The fused op's gradient (anm_mask), registered for the Autograd key of every device, as
// torchvision's csrc/ops/autograd does. The gradient is the erase op's: the erased copies' gradient
// flows back to x outside the boxes and the targets' through the label shift
// (erase_and_modulate_backward); peaks, boxes, fills, ratio and energy are not differentiable.
// Why in C++ when the other ops' autograd is registered from Python (anm_fast/_ops.py): this op is
// the one a training loop calls every step, and a Python autograd kernel puts a Python call and a
// redispatch into each call; after a batch has streamed through the caches that code runs cold,
// which costs more than the rest of the call's Python layer.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

namespace anm_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int kInputs = 11;  // anm_mask's arguments (op_schemas.h)

class AnmMaskFunction : public torch::autograd::Function<AnmMaskFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& fmap,
                               const at::Tensor& targets, const at::Tensor& quality,
                               const std::optional<at::Tensor>& sample_ids, const at::Tensor& seed,
                               double band, c10::ArrayRef<double> box_params,
                               const at::Tensor& fill_value, double label_gain,
                               bool check_values) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("anm_fast::anm_mask", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                           at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                           at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const std::optional<at::Tensor>&,
                             const at::Tensor&, double, c10::ArrayRef<double>, const at::Tensor&,
                             double, bool)>();
    at::Tensor erased, targets_out, box_max, box_min, ratio, fill_max, fill_min, peak_max,
        peak_min, energy;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(erased, targets_out, box_max, box_min, ratio, fill_max, fill_min, peak_max,
               peak_min, energy) = op.call(x, fmap, targets, quality, sample_ids, seed, band,
                                           box_params, fill_value, label_gain, check_values);
    }
    ctx->save_for_backward({targets, box_max, box_min, ratio});
    ctx->saved_data["label_gain"] = label_gain;
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->saved_data["x_dtype"] = x.scalar_type();
    ctx->mark_non_differentiable(
        {box_max, box_min, ratio, fill_max, fill_min, peak_max, peak_min, energy});
    return {erased, targets_out, box_max, box_min, ratio, fill_max, fill_min, peak_max, peak_min,
            energy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("anm_fast::erase_and_modulate_backward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& targets = saved[0];
    at::Tensor grad_erased = grads[0], grad_targets = grads[1];
    if (!grad_erased.defined()) {  // only the targets were used
      std::vector<int64_t> size = ctx->saved_data["x_sizes"].toIntVector();
      size[0] *= 2;
      grad_erased = at::zeros(size, targets.options().dtype(ctx->saved_data["x_dtype"].toScalarType()));
    }
    if (!grad_targets.defined()) grad_targets = at::zeros_like(targets);
    auto [grad_x, grad_t] = op.call(grad_erased, grad_targets, targets, saved[1], saved[2],
                                    saved[3], ctx->saved_data["label_gain"].toDouble());
    variable_list out(kInputs);
    out[0] = grad_x;
    out[2] = grad_t;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor>
anm_mask_autograd(const at::Tensor& x, const at::Tensor& fmap, const at::Tensor& targets,
                  const at::Tensor& quality, const std::optional<at::Tensor>& sample_ids,
                  const at::Tensor& seed, double band, c10::ArrayRef<double> box_params,
                  const at::Tensor& fill_value, double label_gain, bool check_values) {
  const variable_list r = AnmMaskFunction::apply(x, fmap, targets, quality, sample_ids, seed,
                                                 band, box_params, fill_value, label_gain,
                                                 check_values);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]};
}

}  // namespace

TORCH_LIBRARY_IMPL(anm_fast, Autograd, m) { m.impl("anm_mask", &anm_mask_autograd); }

}  // namespace anm_fast
