// What this binary holds for GPUs, for anm_fast/backend.py to refuse the compiled CUDA kernels on
// a device they cannot run on (a "no kernel image" error on every op otherwise):
//   torch.ops.anm_fast._cuda_archs()           the architectures compiled in, e.g. "80,90"
//                                              (nvcc's __CUDA_ARCH_LIST__);
//   torch.ops.anm_fast._cuda_runs_on(device)   whether the driver finds code for that device in
//                                              this binary (its own cubin, or PTX it can JIT).
// Both exist only in builds with the CUDA sources.
#include <torch/library.h>

#include <string>

#include "cuda_utils.cuh"

#define ANM_STRINGIFY_(...) #__VA_ARGS__
#define ANM_STRINGIFY(...) ANM_STRINGIFY_(__VA_ARGS__)

namespace anm_fast {
namespace cuda {
namespace {

__global__ void probe_kernel() {}

std::string cuda_archs() {
#if defined(__CUDA_ARCH_LIST__)
  return ANM_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

bool cuda_runs_on(int64_t device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
    (void)cudaGetLastError();
    return false;
  }
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaFuncAttributes attr;
  const cudaError_t err = cudaFuncGetAttributes(&attr, probe_kernel);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: the error is the answer, not a failure
    return false;
  }
  return true;
}

}  // namespace
}  // namespace cuda
}  // namespace anm_fast

TORCH_LIBRARY_FRAGMENT(anm_fast, m) {
  m.def("_cuda_archs() -> str", &anm_fast::cuda::cuda_archs);
  m.def("_cuda_runs_on(int device) -> bool", &anm_fast::cuda::cuda_runs_on);
}
