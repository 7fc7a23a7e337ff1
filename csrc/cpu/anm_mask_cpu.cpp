// Stages 1-3 fused on the CPU: one parallel pass over the batch. Each thread takes a range of
// samples, reduces their feature maps to peaks, draws their boxes and fills and shifts their
// labels, then writes both erased copies of their images. The two parts share no large data (a
// sample's boxes are a few numbers), so each runs as one long stream through memory: alternating
// between the feature maps and the images every few samples reads memory more slowly. The
// per-sample steps are the same functions the separate ops use (peaks_per_sample.h,
// anm_common.h, erase_per_sample.h), so the results are bit-identical to activation_peaks ->
// sample_boxes -> erase_and_modulate.
// With check_values the op makes the value checks of the Python API's call here (soft targets,
// quality, a finite energy that did not overflow to zero), with its messages: in the Python layer
// they would cost a dozen small tensor ops per call, more than the rest of that layer together.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>

#include "../op_checks.h"
#include "../anm_common.h"
#include "erase_per_sample.h"
#include "peaks_per_sample.h"

namespace anm_fast {
namespace {

// The label shift of one sample's row of targets, for the targets' own dtype: picked once per call
// (a function pointer), so the fused loop is not instantiated for every targets dtype as well.
struct LabelShift {
  void (*row)(const void* targets, int64_t s0, int64_t s1, int64_t N, int64_t b, float ratio,
              double label_gain, void* out);
  const void* targets;
  void* out;
  int64_t s0, s1, N;
  double label_gain;
};

template <typename scalar_t>
void label_shift_row(const void* targets, int64_t s0, int64_t s1, int64_t N, int64_t b,
                     float ratio, double label_gain, void* out) {
  cpu::modulate_row<scalar_t>(static_cast<const scalar_t*>(targets) + b * s0, s1, N, ratio,
                              label_gain, static_cast<scalar_t*>(out) + b * N);
}

struct FusedArgs {
  int64_t seed;
  BoxParams params;
  const float* fill_value;
  const float* quality;
  const int64_t* ids;  // nullptr: the batch positions
  int64_t* box_max;
  int64_t* box_min;
  float* ratio;
  float* fill_max;
  float* fill_min;
  int64_t* peak_max;
  int64_t* peak_min;
  float* energy;
  LabelShift shift;
};

// Returns the number of samples whose energy is not finite.
template <typename fmap_t, typename x_t>
int64_t fused_kernel(const at::Tensor& fmap, const at::Tensor& x, at::Tensor& erased,
                     double band, const FusedArgs& a) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K = fmap.size(1), h = fmap.size(2), w = fmap.size(3);
  const int64_t fB = fmap.stride(0), fK = fmap.stride(1), fH = fmap.stride(2),
                fW = fmap.stride(3);
  const cpu::EraseLayout layout{
      B, C, H, W, x.stride(0), x.stride(1), x.stride(2), x.stride(3), erased.stride(0),
      erased.stride(1), erased.stride(2), erased.stride(3),
      erased.is_contiguous(at::MemoryFormat::ChannelsLast) && !erased.is_contiguous()};
  const fmap_t* fptr = fmap.const_data_ptr<fmap_t>();
  const x_t* xptr = x.const_data_ptr<x_t>();
  x_t* optr = erased.data_ptr<x_t>();
  const cpu::PeakPlan plan(h, w, H, W, band);
  std::atomic<int64_t> non_finite{0};
  const int64_t P = h * w;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    cpu::PeakWorkspace<cpu::peak_acc_t<fmap_t>> ws(plan);
    int64_t bad = 0;
    for (int64_t b0 = begin; b0 < end; b0 += cpu::kEnergyGroup) {
      // A few samples' energies at once (summed side by side, see vector_kernels.h), then each
      // sample's peaks, boxes and label shift.
      const int64_t G = std::min(cpu::kEnergyGroup, end - b0);
      cpu::group_energy<fmap_t>(fptr + b0 * fB, G, fB, K, fK, fH, fW, h, w, ws.e.data());
      for (int64_t b = b0; b < b0 + G; ++b) {
        int64_t* pmax = a.peak_max + 2 * b;
        int64_t* pmin = a.peak_min + 2 * b;
        if (!cpu::peaks_from_energy(plan, ws.e.data() + (b - b0) * P, ws, a.energy + b * P, pmax,
                                    pmin))
          ++bad;
        const int64_t id = a.ids != nullptr ? a.ids[b] : b;
        a.ratio[b] = sample_box_and_fills(a.seed, id, a.quality[b], H, W, C, a.params,
                                          pmax, pmin, a.fill_value, a.box_max + 4 * b,
                                          a.box_min + 4 * b, a.fill_max + b * C,
                                          a.fill_min + b * C);
        const LabelShift& ls = a.shift;
        ls.row(ls.targets, ls.s0, ls.s1, ls.N, b, a.ratio[b], ls.label_gain, ls.out);
      }
    }
    for (int64_t b = begin; b < end; ++b)
      cpu::erase_sample<x_t>(layout, xptr, optr, b, cpu::read_box(a.box_max, b),
                             cpu::read_box(a.box_min, b), a.fill_max + b * C, a.fill_min + b * C);
    if (bad) non_finite += bad;
  });
  return non_finite.load();
}

// The Python API's quality check, with its messages (ValueError in Python).
void check_quality_values(const float* q, int64_t B) {
  if (B == 0) return;
  float lo = q[0], hi = q[0];
  bool bad = false;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(!std::isnan(q[b]), "quality contains NaN; expected values in [0, 1]");
    if (q[b] < 0.f || q[b] > 1.f) bad = true;
    lo = std::min(lo, q[b]);
    hi = std::max(hi, q[b]);
  }
  TORCH_CHECK_VALUE(!bad, "quality must lie in [0, 1], got values in [", lo, ", ", hi, "]");
}

const char* const kSoftTargets = "soft targets must be rows of non-negative values summing to 1";

std::string format_g(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
  return buf;
}

// The Python API's soft-targets check (anm_fast/_checks.py: _soft_summary, _soft_error), with its
// messages: rows of finite, non-negative values whose sums lie within 1e-3 + 8 eps of 1.
template <typename scalar_t>
void check_soft_target_rows(const scalar_t* t, int64_t B, int64_t N, int64_t s0, int64_t s1,
                            double tol) {
  int64_t non_finite = -1, negative = -1, off_sum = -1;
  for (int64_t b = 0; b < B && non_finite < 0; ++b) {
    double sum = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const double v = static_cast<double>(t[b * s0 + n * s1]);
      if (!std::isfinite(v)) non_finite = b;
      if (v < 0.0 && negative < 0) negative = b;
      sum += v;
    }
    if (off_sum < 0 && std::abs(sum - 1.0) > tol) off_sum = b;
  }
  TORCH_CHECK_VALUE(non_finite < 0, "targets holds NaN or Inf (row ", non_finite, "); ",
                    kSoftTargets);
  if (negative >= 0) {
    double lo = 0.0;
    for (int64_t n = 0; n < N; ++n) lo = std::min(lo, static_cast<double>(t[negative * s0 + n * s1]));
    TORCH_CHECK_VALUE(false, "targets holds negative values (row ", negative, ": min ",
                      format_g(lo, 4), "); ", kSoftTargets);
  }
  if (off_sum >= 0) {
    double sum = 0.0;
    for (int64_t n = 0; n < N; ++n) sum += static_cast<double>(t[off_sum * s0 + n * s1]);
    TORCH_CHECK_VALUE(false, "targets row ", off_sum, " sums to ", format_g(sum, 6), "; ",
                      kSoftTargets);
  }
}

// The Python API's check of an energy that overflowed to zero (anm_fast/_checks.py:
// _energy_error): a sample whose normalised energy is all zero although its map is not.
void check_energy_not_overflowed(const at::Tensor& fmap, const float* energy, int64_t B,
                                 int64_t P) {
  for (int64_t b = 0; b < B; ++b) {
    float top = energy[b * P];
    for (int64_t p = 1; p < P; ++p) top = std::max(top, energy[b * P + p]);
    if (top > 0.f) continue;
    const double peak = fmap.select(0, b).abs().max().item<double>();  // rare: all-zero energy
    if (peak <= 0.0) continue;  // a map of zeros: zero energy indeed
    const char* dtype = fmap.scalar_type() == at::kHalf       ? "float16"
                        : fmap.scalar_type() == at::kBFloat16 ? "bfloat16"
                        : fmap.scalar_type() == at::kDouble   ? "float64"
                                                              : "float32";
    TORCH_CHECK_VALUE(false, "fmap sample ", b, " has values up to ", format_g(peak, 3),
                      ", too large for the activation energy (the sum of its squares overflows ",
                      dtype, " arithmetic, so its peaks would all be (0, 0)); scale the feature "
                      "map down");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor>
anm_mask_cpu(const at::Tensor& x, const at::Tensor& fmap, const at::Tensor& targets,
             const at::Tensor& quality_in, const std::optional<at::Tensor>& sample_ids_in,
             const at::Tensor& seed,
             double band, c10::ArrayRef<double> box_params, const at::Tensor& fill_value_in,
             double label_gain, bool check_values) {
  const BoxParams params = box_params_arg("anm_mask", box_params);
  const bool uniform_fill = params.uniform_fill;
  check_anm_mask_args(x, fmap, targets, quality_in, sample_ids_in, seed, uniform_fill,
                      fill_value_in);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);

  // Outputs come from the CPU allocator directly, inputs already in the kernel's dtype and layout
  // are used as they are (as_contiguous): each dispatcher round trip costs microseconds when the
  // code runs cold, as it does right after a call that streamed the batch through the caches.
  const at::Tensor quality = as_contiguous(quality_in, at::kFloat);
  const at::Tensor ids =
      sample_ids_in.has_value() ? as_contiguous(*sample_ids_in, at::kLong) : at::Tensor();
  const at::Tensor fill_value = uniform_fill ? fill_value_in
                                             : as_contiguous(fill_value_in, at::kFloat);
  if (check_values) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, targets.scalar_type(),
                                    "anm_mask_check_targets", [&] {
      const double eps = static_cast<double>(std::numeric_limits<scalar_t>::epsilon());
      check_soft_target_rows<scalar_t>(targets.const_data_ptr<scalar_t>(), B, targets.size(1),
                                       targets.stride(0), targets.stride(1), 1e-3 + 8 * eps);
    });
    check_quality_values(quality.const_data_ptr<float>(), B);
  }

  auto long_opts = x.options().dtype(at::kLong);
  auto float_opts = x.options().dtype(at::kFloat);
  auto cpu_empty = [](at::IntArrayRef size, const at::TensorOptions& opts) {
    return at::Tensor(at::detail::empty_cpu(size, opts));
  };
  at::Tensor erased =
      cpu_empty({2 * B, C, H, W}, x.options().memory_format(erased_memory_format(x)));
  at::Tensor targets_out = cpu_empty({B, targets.size(1)}, targets.options());
  at::Tensor box_max = cpu_empty({B, 4}, long_opts), box_min = cpu_empty({B, 4}, long_opts);
  at::Tensor ratio = cpu_empty({B}, float_opts);
  at::Tensor fill_max = cpu_empty({B, C}, float_opts), fill_min = cpu_empty({B, C}, float_opts);
  at::Tensor peak_max = cpu_empty({B, 2}, long_opts), peak_min = cpu_empty({B, 2}, long_opts);
  at::Tensor energy = cpu_empty({B, fmap.size(2), fmap.size(3)}, float_opts);
  const int64_t seed_value = cpu_seed_value(seed);
  if (B == 0)
    return {erased, targets_out, box_max, box_min, ratio, fill_max, fill_min, peak_max, peak_min,
            energy};

  LabelShift shift{nullptr, targets.const_data_ptr(), targets_out.data_ptr(), targets.stride(0),
                   targets.stride(1), targets.size(1), label_gain};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, targets.scalar_type(),
                                  "anm_mask_targets", [&] { shift.row = &label_shift_row<scalar_t>; });
  const FusedArgs args{seed_value,
                       params,
                       uniform_fill ? nullptr : fill_value.const_data_ptr<float>(),
                       quality.const_data_ptr<float>(),
                       ids.defined() ? ids.const_data_ptr<int64_t>() : nullptr,
                       box_max.data_ptr<int64_t>(),
                       box_min.data_ptr<int64_t>(),
                       ratio.data_ptr<float>(),
                       fill_max.data_ptr<float>(),
                       fill_min.data_ptr<float>(),
                       peak_max.data_ptr<int64_t>(),
                       peak_min.data_ptr<int64_t>(),
                       energy.data_ptr<float>(),
                       shift};
  int64_t non_finite = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fmap.scalar_type(), "anm_mask_fmap",
                                  [&] {
    using fmap_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "anm_mask_x", [&] {
      non_finite = fused_kernel<fmap_t, scalar_t>(fmap, x, erased, band, args);
    });
  });
  if (check_values) {
    TORCH_CHECK_VALUE(non_finite == 0,
                      "fmap contains non-finite values (NaN or Inf), or values whose squares "
                      "overflow float32; the activation energy is undefined");
    check_energy_not_overflowed(fmap, energy.const_data_ptr<float>(), B,
                                fmap.size(2) * fmap.size(3));
  }
  return {erased, targets_out, box_max, box_min, ratio, fill_max, fill_min, peak_max, peak_min,
          energy};
}

}  // namespace

TORCH_LIBRARY_IMPL(anm_fast, CPU, m) { m.impl("anm_mask", &anm_mask_cpu); }

}  // namespace anm_fast
