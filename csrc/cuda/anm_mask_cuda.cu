// Stages 1-3 fused on the GPU, one launch: one block per sample reads its feature map once
// (energy, L2 norm and the peaks of the resized map with the band rule, peaks_block.cuh), draws
// its boxes and fills from its Philox stream (sample_box_and_fills, the CPU's function), reads its
// image once writing both erased copies, and shifts its labels (label_shift.cuh). The results are
// the CPU fused op's bit for bit (the same functions in the same order); only the targets'
// arithmetic is the dtype's own, as on the CPU.
// The value checks (quality in [0, 1], a finite energy) are flags the kernel raises; reading them
// is the one host synchronisation, made only when check_values.
#include <ATen/Dispatch.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <torch/library.h>

#include <cmath>
#include <type_traits>

#include "../anm_common.h"
#include "../op_checks.h"
#include "cuda_utils.cuh"
#include "label_shift.cuh"
#include "peaks_block.cuh"

namespace anm_fast {
namespace cuda {
namespace {

using at::cuda::detail::IntDivider;

// Flags of the value checks.
constexpr int kQualityNaN = 1, kQualityRange = 2, kEnergyNotFinite = 4;

// The targets' dtype, switched on inside the kernel (the label shift is a few values per sample:
// not worth a kernel instantiation per targets dtype).
enum class TargetsType : int { kFloat, kDouble, kHalf, kBFloat16 };

struct FusedShape {
  int64_t B, K, C, H, W, N;
  int h, w;
  int64_t fB, fK, fH, fW;  // fmap strides
  int64_t xB, xC, xH, xW;  // x strides
  int64_t tB, tN;          // targets strides
  bool nhwc;               // erased copies in channels_last order
  IntDivider<uint32_t> divC, divW, divH;
};

struct FusedConfig {
  BoxParams box;
  float band;
  double label_gain;
  bool fills_in_arg;
  TargetsType targets_type;
  PeakSmem plan;
};

template <typename scalar_t>
__device__ __forceinline__ void shift_labels(const void* targets, void* out, const FusedShape& s,
                                             int64_t b, float ratio, double label_gain) {
  modulate_row_warp<scalar_t>(static_cast<const scalar_t*>(targets) + b * s.tB, s.tN, s.N, ratio,
                              label_gain, static_cast<scalar_t*>(out) + b * s.N);
}

template <typename fmap_t, typename x_t, typename acc_t>
__global__ void __launch_bounds__(kPeakThreads) anm_mask_kernel(
    const fmap_t* __restrict__ fmap, const x_t* __restrict__ x, const void* __restrict__ targets,
    const float* __restrict__ quality, const int64_t* __restrict__ ids,
    const int64_t* __restrict__ seed_ptr, int64_t seed_value,
    const float* __restrict__ fill_value, FillArg fill_arg, FusedShape s, FusedConfig cfg,
    acc_t* __restrict__ scratch, x_t* __restrict__ erased, void* __restrict__ targets_out,
    int64_t* __restrict__ box_max, int64_t* __restrict__ box_min, float* __restrict__ ratio,
    float* __restrict__ fill_max, float* __restrict__ fill_min, int64_t* __restrict__ peak_max,
    int64_t* __restrict__ peak_min, float* __restrict__ energy, int64_t* __restrict__ seed_out,
    int* __restrict__ flags) {
  ANM_DYNAMIC_SHARED(unsigned char, smem_raw);
  __shared__ int64_t box[8];  // y0, x0, height, width of the max box, then of the min box
  __shared__ float arg_fills[kMaxArgFills];
  __shared__ float sample_ratio;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x, T = blockDim.x;
  const int64_t P = static_cast<int64_t>(s.h) * s.w;
  const int64_t C = s.C, H = s.H, W = s.W;

  // Constant fills passed by value, staged in shared memory (see sample_boxes_cuda.cu).
  if (cfg.fills_in_arg) {
    for (int64_t c = tid; c < C; c += T) arg_fills[c] = fill_arg.v[c];
    fill_value = arg_fills;  // read after block_peaks' barriers
  }

  // ---- stage 1: energies and peaks (the whole block)
  int ihi, ilo;
  block_peaks<fmap_t, acc_t>(fmap + b * s.fB, s.K, s.h, s.w, s.fK, s.fH, s.fW,
                             static_cast<int>(H), static_cast<int>(W), cfg.band, cfg.plan,
                             smem_raw, cfg.plan.map_in_smem ? nullptr : scratch + b * P,
                             energy + b * P, &ihi, &ilo);

  // ---- stage 2: boxes and fills (one thread)
  if (tid == 0) {
    int64_t* pmax = peak_max + 2 * b;
    int64_t* pmin = peak_min + 2 * b;
    pmax[0] = ihi / W;
    pmax[1] = ihi % W;
    pmin[0] = ilo / W;
    pmin[1] = ilo % W;
    const int64_t seed = seed_ptr != nullptr ? *seed_ptr : seed_value;
    if (b == 0) *seed_out = seed;
    const float q = quality[b];
    if (flags != nullptr) {
      int bad = 0;
      if (q != q) bad |= kQualityNaN;
      else if (q < 0.f || q > 1.f) bad |= kQualityRange;
      for (int64_t p = 0; p < P; ++p)
        if (!isfinite(energy[b * P + p])) bad |= kEnergyNotFinite;
      if (bad) atomicOr(flags, bad);
    }
    const float r = sample_box_and_fills(seed, ids[b], q, H, W, C, cfg.box, pmax, pmin,
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

  // ---- stage 3: both erased copies of the image, in the output's memory order. The sample's
  // base offsets are 64-bit, the offsets inside one image 32-bit.
  const uint32_t CHW = static_cast<uint32_t>(C * H * W);
  const x_t* xb = x + b * s.xB;
  x_t* out_max = erased + b * static_cast<int64_t>(CHW);
  x_t* out_min = erased + (s.B + b) * static_cast<int64_t>(CHW);
  const float* fmax_b = fill_max + b * C;
  const float* fmin_b = fill_min + b * C;
  const int64_t my0 = box[0], mx0 = box[1], my1 = box[0] + box[2], mx1 = box[1] + box[3];
  const int64_t ny0 = box[4], nx0 = box[5], ny1 = box[4] + box[6], nx1 = box[5] + box[7];
  for (uint32_t i = tid; i < CHW; i += T) {
    uint32_t c, y, xx;
    if (s.nhwc) {  // i = (y * W + x) * C + c
      const auto q = s.divC.divmod(i);
      c = q.mod;
      const auto r = s.divW.divmod(q.div);
      xx = r.mod;
      y = r.div;
    } else {  // i = (c * H + y) * W + x
      const auto q = s.divW.divmod(i);
      xx = q.mod;
      const auto r = s.divH.divmod(q.div);
      y = r.mod;
      c = r.div;
    }
    const x_t v = xb[c * s.xC + y * s.xH + xx * s.xW];
    const int64_t yy = y, xxx = xx;
    const bool in_m = yy >= my0 && yy < my1 && xxx >= mx0 && xxx < mx1;
    const bool in_n = yy >= ny0 && yy < ny1 && xxx >= nx0 && xxx < nx1;
    out_max[i] = in_m ? static_cast<x_t>(fmax_b[c]) : v;
    out_min[i] = in_n ? static_cast<x_t>(fmin_b[c]) : v;
  }

  // ---- the label shift (the first warp)
  if (tid < kWarp) {
    const float r = sample_ratio;
    const double gain = cfg.label_gain;
    switch (cfg.targets_type) {
      case TargetsType::kFloat: shift_labels<float>(targets, targets_out, s, b, r, gain); break;
      case TargetsType::kDouble: shift_labels<double>(targets, targets_out, s, b, r, gain); break;
      case TargetsType::kHalf: shift_labels<at::Half>(targets, targets_out, s, b, r, gain); break;
      case TargetsType::kBFloat16:
        shift_labels<at::BFloat16>(targets, targets_out, s, b, r, gain);
        break;
    }
  }
}

TargetsType targets_type_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return TargetsType::kFloat;
    case at::kDouble: return TargetsType::kDouble;
    case at::kHalf: return TargetsType::kHalf;
    case at::kBFloat16: return TargetsType::kBFloat16;
    default: TORCH_CHECK(false, "anm_mask: targets must be a floating tensor, got ", t.scalar_type());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor, at::Tensor>
anm_mask_cuda(const at::Tensor& x, const at::Tensor& fmap, const at::Tensor& targets,
              const at::Tensor& quality_in, const at::Tensor& sample_ids_in,
              const at::Tensor& seed, double band, c10::ArrayRef<double> box_params,
              const at::Tensor& fill_value_in, double label_gain, bool check_values) {
  const BoxParams params = box_params_arg("anm_mask", box_params);
  const bool uniform_fill = params.uniform_fill;
  check_anm_mask_args(x, fmap, targets, quality_in, sample_ids_in, seed, uniform_fill,
                      fill_value_in);
  TORCH_CHECK(on_kernel_device(x), "anm_mask (CUDA): x must be a CUDA tensor");
  const char* op = "anm_mask";
  check_same_device(op, x, fmap, "fmap");
  check_same_device(op, x, targets, "targets");
  check_same_device(op, x, quality_in, "quality");
  check_same_device(op, x, sample_ids_in, "sample_ids");
  DeviceGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K = fmap.size(1), h = fmap.size(2), w = fmap.size(3), N = targets.size(1);
  TORCH_CHECK(C * H * W <= INT_MAX && h * w <= INT_MAX && H * W <= INT_MAX - 2 * kPeakThreads,
              "anm_mask (CUDA): image or feature map too large (more than 2^31 elements)");
  const TargetsType targets_type = targets_type_of(targets);

  const at::Tensor quality = as_contiguous(quality_in, at::kFloat);
  const at::Tensor ids = as_contiguous(sample_ids_in, at::kLong);
  at::Tensor seed_dev;
  int64_t seed_value = 0;
  if (on_kernel_device(seed)) {
    check_same_device(op, x, seed, "seed");
    seed_dev = as_contiguous(seed.reshape({1}), at::kLong);
  } else {
    seed_value = cpu_seed_value(seed);
  }
  at::Tensor fill_value;
  FillArg fill_arg{};
  bool fills_in_arg = false;
  if (!uniform_fill) {
    if (fill_value_in.is_cpu() && C <= kMaxArgFills) {
      const at::Tensor f = as_contiguous(fill_value_in, at::kFloat);
      const float* fp = f.const_data_ptr<float>();
      for (int64_t c = 0; c < C; ++c) fill_arg.v[c] = fp[c];
      fills_in_arg = true;
    } else {
      fill_value = fill_value_in.to(x.device(), at::kFloat).contiguous();
    }
  }

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
  at::Tensor seed_out = at::empty({}, long_opts);
  if (B == 0) {
    if (on_kernel_device(seed)) seed_out.copy_(seed_dev.reshape({}));
    else seed_out.fill_(seed_value);
    return {erased, targets_out, box_max, box_min, ratio, fill_max, fill_min, peak_max, peak_min,
            energy, seed_out};
  }

  const bool f64 = fmap.scalar_type() == at::kDouble;
  FusedConfig cfg{params, static_cast<float>(band), label_gain, fills_in_arg, targets_type,
                  plan_peak_smem(h, w, H, W, f64 ? 8 : 4)};
  at::Tensor scratch;  // (B, h*w) accumulator map when it does not fit in shared memory
  if (!cfg.plan.map_in_smem)
    scratch = at::empty({B * h * w}, fmap.options().dtype(f64 ? at::kDouble : at::kFloat));
  const FusedShape shape{B, K, C, H, W, N, static_cast<int>(h), static_cast<int>(w),
                         fmap.stride(0), fmap.stride(1), fmap.stride(2), fmap.stride(3),
                         x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                         targets.stride(0), targets.stride(1),
                         fmt == at::MemoryFormat::ChannelsLast,
                         IntDivider<uint32_t>(static_cast<uint32_t>(C)),
                         IntDivider<uint32_t>(static_cast<uint32_t>(W)),
                         IntDivider<uint32_t>(static_cast<uint32_t>(H))};
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
          fmap.const_data_ptr<fmap_t>(), x.const_data_ptr<scalar_t>(), targets.const_data_ptr(),
          quality.const_data_ptr<float>(), ids.const_data_ptr<int64_t>(),
          on_kernel_device(seed) ? seed_dev.const_data_ptr<int64_t>() : nullptr, seed_value,
          (uniform_fill || fills_in_arg) ? nullptr : fill_value.const_data_ptr<float>(), fill_arg,
          shape, cfg, cfg.plan.map_in_smem ? nullptr : scratch.data_ptr<acc_t>(),
          erased.data_ptr<scalar_t>(), targets_out.data_ptr(), box_max.data_ptr<int64_t>(),
          box_min.data_ptr<int64_t>(), ratio.data_ptr<float>(), fill_max.data_ptr<float>(),
          fill_min.data_ptr<float>(), peak_max.data_ptr<int64_t>(), peak_min.data_ptr<int64_t>(),
          energy.data_ptr<float>(), seed_out.data_ptr<int64_t>(),
          check_values ? flags.data_ptr<int>() : nullptr);
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
          energy, seed_out};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(ANM_CUDA_LIBRARY, ANM_CUDA_KEY, m) {
  m.impl("anm_mask", &cuda::anm_mask_cuda);
}

}  // namespace anm_fast
