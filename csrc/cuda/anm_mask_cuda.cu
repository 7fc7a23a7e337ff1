// Stages 1-3 fused on the GPU, one launch: one block per sample reads its feature map once
// (energy, L2 norm and the peaks of the resized map with the band rule, peaks_block.cuh), draws
// its boxes and fills from its Philox stream (sample_box_and_fills, the CPU's function), reads its
// image once writing both erased copies (erase_sample.cuh, the erase_and_modulate kernel's
// per-sample code), and shifts its labels (label_shift.cuh). The results are
// the CPU fused op's bit for bit (the same functions in the same order); only the targets'
// arithmetic is the dtype's own, as on the CPU.
// The value checks (quality in [0, 1], a finite energy) are flags the kernel raises; reading them
// is the one host synchronisation, made only when check_values.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <type_traits>

#include "../anm_common.h"
#include "../op_checks.h"
#include "cuda_utils.cuh"
#include "erase_sample.cuh"
#include "label_shift.cuh"
#include "peaks_block.cuh"
#include "sampling_args.cuh"

namespace anm_fast {
namespace cuda {
namespace {

// Flags of the value checks.
constexpr int kQualityNaN = 1, kQualityRange = 2, kEnergyNotFinite = 4;

struct FusedShape {
  int64_t B, K, C, H, W, N;
  int h, w;
  int64_t fB, fK, fH, fW;  // fmap strides
  int64_t xB;              // x's sample stride
  SampleStrides x;         // x's strides inside a sample
  bool nhwc;               // erased copies in channels_last order
  SampleIndex idx;
};

struct FusedConfig {
  BoxParams box;
  float band;
  double label_gain;
  PeakSmem plan;
};

// Both erased copies of sample b by the block's threads, in the output's memory order.
template <typename x_t, bool NHWC>
__device__ __forceinline__ void erase_sample(const FusedShape& s, const x_t* __restrict__ xb,
                                             x_t* __restrict__ out_max, x_t* __restrict__ out_min,
                                             const BoxRows& bm, const BoxRows& bn,
                                             const float* fmax, const float* fmin) {
  const uint32_t CHW = static_cast<uint32_t>(s.C * s.H * s.W);
  const auto fill = [&](int which, int64_t c) { return (which == 0 ? fmax : fmin)[c]; };
  for (uint32_t i = threadIdx.x; i < CHW; i += blockDim.x)
    erase_vector<x_t, 1, NHWC>(s.idx, s.x, s.C, xb, out_max, out_min, i, bm, bn, fill);
}

template <typename fmap_t, typename x_t, typename acc_t>
__global__ void __launch_bounds__(kPeakThreads) anm_mask_kernel(
    const fmap_t* __restrict__ fmap, const x_t* __restrict__ x,
    const float* __restrict__ quality,
    const int64_t* __restrict__ ids,  // nullptr: the batch positions
    SeedArg seed_in,
    FillArg fills, ArgView targets, FusedShape s, FusedConfig cfg,
    acc_t* __restrict__ scratch, x_t* __restrict__ erased, ArgView targets_out,
    int64_t* __restrict__ box_max, int64_t* __restrict__ box_min, float* __restrict__ ratio,
    float* __restrict__ fill_max, float* __restrict__ fill_min, int64_t* __restrict__ peak_max,
    int64_t* __restrict__ peak_min, float* __restrict__ energy,
    int* __restrict__ flags) {
  ANM_DYNAMIC_SHARED(unsigned char, smem_raw);
  __shared__ int64_t box[8];  // y0, x0, height, width of the max box, then of the min box
  __shared__ float staged_fills[kMaxArgFills];
  __shared__ float sample_ratio;
  const int64_t b = blockIdx.x;
  const int64_t P = static_cast<int64_t>(s.h) * s.w;
  const int64_t C = s.C, H = s.H, W = s.W;
  const float* fill_value = stage_fills(fills, C, staged_fills);  // read after block_peaks'
                                                                      // barriers

  // ---- energies and peaks (the whole block)
  int ihi, ilo;
  block_peaks<fmap_t, acc_t>(fmap + b * s.fB, s.K, s.h, s.w, s.fK, s.fH, s.fW,
                             static_cast<int>(H), static_cast<int>(W), cfg.band, cfg.plan,
                             smem_raw, cfg.plan.map_in_smem ? nullptr : scratch + b * P,
                             energy + b * P, &ihi, &ilo);

  // ---- boxes and fills (one thread)
  if (threadIdx.x == 0) {
    int64_t* pmax = peak_max + 2 * b;
    int64_t* pmin = peak_min + 2 * b;
    write_peaks(ihi, ilo, static_cast<int>(W), pmax, pmin);
    const int64_t seed = seed_in.get();
    const float q = quality[b];
    if (flags != nullptr) {
      int bad = 0;
      if (q != q) bad |= kQualityNaN;
      else if (q < 0.f || q > 1.f) bad |= kQualityRange;
      for (int64_t p = 0; p < P; ++p)
        if (!isfinite(energy[b * P + p])) bad |= kEnergyNotFinite;
      if (bad) atomicOr(flags, bad);
    }
    const float r = sample_box_and_fills(seed, ids != nullptr ? ids[b] : b, q, H, W, C, cfg.box,
                                         pmax, pmin,
                                         fill_value, box_max + 4 * b, box_min + 4 * b,
                                         fill_max + b * C, fill_min + b * C);
    ratio[b] = r;
    sample_ratio = r;
    for (int k = 0; k < 4; ++k) {
      box[k] = box_max[4 * b + k];
      box[4 + k] = box_min[4 * b + k];
    }
  }
  __syncthreads();  // the boxes, the ratio and the fills (global, by thread 0) for every thread

  // ---- both erased copies of the image (64-bit sample base, 32-bit offsets inside)
  const int64_t CHW = C * H * W;
  const BoxRows bm{box[0], box[1], box[0] + box[2], box[1] + box[3]};
  const BoxRows bn{box[4], box[5], box[4] + box[6], box[5] + box[7]};
  const x_t* xb = x + b * s.xB;
  x_t* out_max = erased + b * CHW;
  x_t* out_min = erased + (s.B + b) * CHW;
  if (s.nhwc)
    erase_sample<x_t, true>(s, xb, out_max, out_min, bm, bn, fill_max + b * C, fill_min + b * C);
  else
    erase_sample<x_t, false>(s, xb, out_max, out_min, bm, bn, fill_max + b * C, fill_min + b * C);

  // ---- the label shift (the first warp)
  if (threadIdx.x < kWarp) modulate_row_warp(targets, b, s.N, sample_ratio, cfg.label_gain,
                                             targets_out);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor>
anm_mask_cuda(const at::Tensor& x, const at::Tensor& fmap, const at::Tensor& targets,
              const at::Tensor& quality_in, const std::optional<at::Tensor>& sample_ids_in,
              const at::Tensor& seed, double band, c10::ArrayRef<double> box_params,
              const at::Tensor& fill_value_in, double label_gain, bool check_values) {
  const BoxParams params = box_params_arg("anm_mask", box_params);
  const bool uniform_fill = params.uniform_fill;
  check_anm_mask_args(x, fmap, targets, quality_in, sample_ids_in, seed, uniform_fill,
                      fill_value_in);
  TORCH_CHECK(on_kernel_device(x), "anm_mask (CUDA): x must be a CUDA tensor");
  const char* op = "anm_mask";
  check_same_device(op, x, {{fmap, "fmap"}, {targets, "targets"}, {quality_in, "quality"}});
  if (sample_ids_in.has_value()) check_same_device(op, x, *sample_ids_in, "sample_ids");
  DeviceGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K = fmap.size(1), h = fmap.size(2), w = fmap.size(3), N = targets.size(1);
  TORCH_CHECK_VALUE(C * H * W <= kMaxSampleElements && h * w <= INT_MAX &&
                        H * W <= INT_MAX - 2 * kPeakThreads,
                    "anm_mask (CUDA): image or feature map too large (more than 2^31 elements)");

  const at::Tensor quality = as_contiguous(quality_in, at::kFloat);
  const at::Tensor ids =
      sample_ids_in.has_value() ? as_contiguous(*sample_ids_in, at::kLong) : at::Tensor();
  at::Tensor seed_dev, fill_value;
  const SeedArg seed_in = seed_arg(op, x, seed, seed_dev);
  const FillArg fills = fill_arg(fill_value_in, uniform_fill, C, x.device(), fill_value);

  const at::MemoryFormat fmt = erased_memory_format(x);
  auto long_opts = x.options().dtype(at::kLong);
  auto float_opts = x.options().dtype(at::kFloat);
  at::Tensor erased = at::empty({2 * B, C, H, W}, x.options().memory_format(fmt));
  at::Tensor targets_out = at::empty({B, N}, targets.options());
  at::Tensor box_max = at::empty({B, 4}, long_opts), box_min = at::empty({B, 4}, long_opts);
  at::Tensor ratio = at::empty({B}, float_opts);
  at::Tensor fill_max = at::empty({B, C}, float_opts), fill_min = at::empty({B, C}, float_opts);
  at::Tensor peak_max = at::empty({B, 2}, long_opts), peak_min = at::empty({B, 2}, long_opts);
  at::Tensor energy = at::empty({B, h, w}, float_opts);
  if (B == 0)
    return {erased, targets_out, box_max, box_min, ratio, fill_max, fill_min, peak_max, peak_min,
            energy};

  const bool f64 = fmap.scalar_type() == at::kDouble;
  FusedConfig cfg{params, static_cast<float>(band), label_gain,
                  plan_peak_smem(h, w, H, W, f64 ? 8 : 4)};
  at::Tensor scratch;  // (B, h*w) accumulator map when it does not fit in shared memory
  if (!cfg.plan.map_in_smem)
    scratch = at::empty({B * h * w}, fmap.options().dtype(f64 ? at::kDouble : at::kFloat));
  const FusedShape shape{B, K, C, H, W, N, static_cast<int>(h), static_cast<int>(w),
                         fmap.stride(0), fmap.stride(1), fmap.stride(2), fmap.stride(3),
                         x.stride(0), SampleStrides{x.stride(1), x.stride(2), x.stride(3)},
                         fmt == at::MemoryFormat::ChannelsLast, sample_index(C, H, W)};
  const HostArg t = arg_view(targets, false);
  const ArgView t_out = out_view(targets_out);
  at::Tensor flags;
  if (check_values) flags = at::zeros({1}, x.options().dtype(at::kInt));

  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fmap.scalar_type(), "anm_mask_fmap",
                                  [&] {
    using fmap_t = scalar_t;
    using acc_t = typename std::conditional<std::is_same<fmap_t, double>::value, double,
                                            float>::type;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "anm_mask_x", [&] {
      ANM_LAUNCH(B, kPeakThreads, cfg.plan.bytes, stream,
                 anm_mask_kernel<fmap_t, scalar_t, acc_t>)(
          fmap.const_data_ptr<fmap_t>(), x.const_data_ptr<scalar_t>(),
          quality.const_data_ptr<float>(),
          ids.defined() ? ids.const_data_ptr<int64_t>() : nullptr, seed_in, fills, t.view,
          shape, cfg, cfg.plan.map_in_smem ? nullptr : scratch.data_ptr<acc_t>(),
          erased.data_ptr<scalar_t>(), t_out, box_max.data_ptr<int64_t>(),
          box_min.data_ptr<int64_t>(), ratio.data_ptr<float>(), fill_max.data_ptr<float>(),
          fill_min.data_ptr<float>(), peak_max.data_ptr<int64_t>(), peak_min.data_ptr<int64_t>(),
          energy.data_ptr<float>(), check_values ? flags.data_ptr<int>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (check_values) {
    // The CPU op's messages (ValueError in Python), in its order.
    const int bad = flags.item<int>();
    TORCH_CHECK_VALUE(!(bad & kQualityNaN), "quality contains NaN; expected values in [0, 1]");
    if (bad & kQualityRange) {
      const at::Tensor lo = quality.min().cpu(), hi = quality.max().cpu();
      TORCH_CHECK_VALUE(false, "quality must lie in [0, 1], got values in [", lo.item<float>(),
                        ", ", hi.item<float>(), "]");
    }
    TORCH_CHECK_VALUE(!(bad & kEnergyNotFinite),
                      "fmap contains non-finite values (NaN or Inf), or values whose squares "
                      "overflow float32; the activation energy is undefined");
  }
  return {erased, targets_out, box_max, box_min, ratio, fill_max, fill_min, peak_max, peak_min,
          energy};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(ANM_CUDA_LIBRARY, ANM_CUDA_KEY, m) {
  m.impl("anm_mask", &cuda::anm_mask_cuda);
}

}  // namespace anm_fast
