// The seed and the constant fills as the box-sampling kernels (sample_boxes_cuda.cu and the fused
// anm_mask_cuda.cu) take them: read on the host where they are CPU tensors (the API passes an int
// seed and constant fills that way), so a call issues no host-to-device copy, needs no
// synchronisation and can be captured in a CUDA graph.
#pragma once

#include "../op_checks.h"
#include "cuda_utils.cuh"

namespace anm_fast {
namespace cuda {

// A seed tensor on the kernels' device is read by the kernel (a graph replay follows its current
// value); a CPU seed is read here and travels by value.
struct SeedArg {
  const int64_t* ptr;  // the device seed, or nullptr
  int64_t value;       // the CPU seed's value
  __device__ __forceinline__ int64_t get() const { return ptr != nullptr ? *ptr : value; }
};

// `held` keeps a device seed's int64 copy alive until the launch is enqueued.
inline SeedArg seed_arg(const char* op, const at::Tensor& ref, const at::Tensor& seed,
                        at::Tensor& held) {
  if (!on_kernel_device(seed)) return SeedArg{nullptr, cpu_seed_value(seed)};
  check_same_device(op, ref, seed, "seed");
  held = as_contiguous(seed.reshape({1}), at::kLong);
  return SeedArg{held.const_data_ptr<int64_t>(), 0};
}

// Constant fills given as a CPU tensor travel in the kernel argument, up to this many channels
// (2 KiB of the 4 KiB kernel-parameter space); only more channels than that are copied to the
// device. A kernel stages them in shared memory (stage_fills): a pointer into the parameter space
// would make every thread copy the whole argument into its local memory.
constexpr int kMaxArgFills = 512;

struct FillArg {
  const float* ptr;  // fills on the device, or nullptr (drawn, or in `v`)
  bool in_arg;       // the fills are v[0 .. C-1]
  float v[kMaxArgFills];
};

// `held` keeps a device copy alive until the launch is enqueued.
inline FillArg fill_arg(const at::Tensor& fill_value, bool uniform_fill, int64_t C,
                        const at::Device& device, at::Tensor& held) {
  FillArg f{};
  if (uniform_fill) return f;
  if (fill_value.is_cpu() && C <= kMaxArgFills) {
    const at::Tensor values = as_contiguous(fill_value, at::kFloat);
    const float* p = values.const_data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) f.v[c] = p[c];
    f.in_arg = true;
  } else {
    held = fill_value.to(device, at::kFloat).contiguous();
    f.ptr = held.const_data_ptr<float>();
  }
  return f;
}

// Where the kernel reads the fills: `stage` (kMaxArgFills floats of shared memory) after copying
// the argument's values there, else the device pointer. The caller synchronises the block
// before the fills are read.
__device__ __forceinline__ const float* stage_fills(const FillArg& f, int64_t C, float* stage) {
  if (!f.in_arg) return f.ptr;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) stage[c] = f.v[c];
  return stage;
}

}  // namespace cuda
}  // namespace anm_fast
