// Helpers shared by the CUDA kernels of csrc/cuda: warp/block reductions, aligned vectors,
// argument checks. The per-sample ANM math itself lives in ../anm_common.h (shared with the CPU).
#pragma once

#if defined(ANM_CUDA_EMULATION)
// Compiled by the host compiler for the tests (csrc/emulation/cuda_emulation.h): CPU tensors
// stand in for CUDA tensors, and the kernels register into the anm_fast_emulated library.
#include <ATen/ATen.h>
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
#define ANM_CUDA_LIBRARY anm_fast_emulated
#define ANM_CUDA_KEY CPU
#else
// Only c10/cuda headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers, which
// a bare CUDA toolkit may lack. c10::cuda::getCurrentCUDAStream is the stream that
// at::cuda::getCurrentCUDAStream returns (the latter is an alias of it).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
// The library and dispatch key the kernels register for.
#define ANM_CUDA_LIBRARY anm_fast
#define ANM_CUDA_KEY CUDA
// kernel<<<grid, block, smem, stream>>>, spelled so that the emulation can read it too.
#define ANM_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define ANM_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

#include <climits>
#include <cstdint>
#include <initializer_list>

namespace anm_fast {
namespace cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Every argument on the same CUDA device as `ref` (the dispatcher only guarantees one is CUDA).
inline void check_same_device(const char* op, const at::Tensor& ref, const at::Tensor& t,
                              const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but the other arguments are on ", ref.device());
}

struct NamedTensor {
  const at::Tensor& t;
  const char* name;
};

inline void check_same_device(const char* op, const at::Tensor& ref,
                              std::initializer_list<NamedTensor> args) {
  for (const NamedTensor& a : args) check_same_device(op, ref, a.t, a.name);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_down_sync(kFullMask, v, off);
  return v;  // lane 0 holds the sum
}

// (value, index) pairs: the larger (resp. smaller) value wins, ties go to the smaller index.
// Index INT_MAX / LLONG_MAX marks "nothing yet" and always loses.
template <bool kMax, typename V, typename I>
__device__ __forceinline__ void arg_combine(V& v, I& i, V ov, I oi) {
  const I none = sizeof(I) == 8 ? static_cast<I>(LLONG_MAX) : static_cast<I>(INT_MAX);
  if (oi == none) return;
  const bool better = kMax ? (ov > v) : (ov < v);
  if (i == none || better || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

template <bool kMax, typename V, typename I>
__device__ __forceinline__ void warp_arg(V& v, I& i) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const V ov = __shfl_down_sync(kFullMask, v, off);
    const I oi = __shfl_down_sync(kFullMask, i, off);
    arg_combine<kMax>(v, i, ov, oi);
  }
}

// Block-wide sum of one value per thread, the result returned to every thread. `buf` holds at
// least blockDim.x / 32 elements of shared memory; the block must be a multiple of 32 threads.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* buf) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // buf may still be read by a previous reduction
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  T total = T(0);
  for (int k = 0; k < nwarps; ++k) total += buf[k];  // same order in every thread
  return total;
}

// Block-wide (value, index) arg-max / arg-min, the winner returned to every thread.
template <bool kMax, typename V, typename I>
__device__ __forceinline__ void block_arg(V& v, I& i, V* vbuf, I* ibuf) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
  warp_arg<kMax>(v, i);
  __syncthreads();
  if (lane == 0) {
    vbuf[warp] = v;
    ibuf[warp] = i;
  }
  __syncthreads();
  v = vbuf[0];
  i = ibuf[0];
  for (int k = 1; k < nwarps; ++k) arg_combine<kMax>(v, i, vbuf[k], ibuf[k]);
}

template <typename T>
__device__ __forceinline__ T block_min(T v, T* buf) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const T o = __shfl_down_sync(kFullMask, v, off);
    v = o < v ? o : v;
  }
  __syncthreads();
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  T m = buf[0];
  for (int k = 1; k < nwarps; ++k) m = buf[k] < m ? buf[k] : m;
  return m;
}

// VEC elements loaded / stored as one aligned access.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) AlignedVec {
  T v[VEC];
};

inline bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Small argument tensors (boxes, fills, ratios, targets) read by the kernels in the dtype and
// strides they come in: a cast or a contiguous copy on the host side would be a launch of its own
// for a few bytes. The dtype is a run-time switch (the same branch in every thread).
enum class ElemType : int32_t {
  kFloat, kDouble, kHalf, kBFloat16, kLong, kInt, kShort, kChar, kByte
};

// A tensor of at most two dimensions: element (i, j) is at p + i * s0 + j * s1 elements.
struct ArgView {
  void* p;
  int64_t s0, s1;
  ElemType type;
};

// A floating element as T (float or double): the exact value for float, half and bfloat16.
template <typename T>
__device__ __forceinline__ T read_real(const ArgView& a, int64_t off) {
  switch (a.type) {
    case ElemType::kDouble: return static_cast<T>(static_cast<const double*>(a.p)[off]);
    case ElemType::kHalf:
      return static_cast<T>(static_cast<float>(static_cast<const at::Half*>(a.p)[off]));
    case ElemType::kBFloat16:
      return static_cast<T>(static_cast<float>(static_cast<const at::BFloat16*>(a.p)[off]));
    default: return static_cast<T>(static_cast<const float*>(a.p)[off]);
  }
}

// v (float or double) rounded to the view's floating dtype.
template <typename T>
__device__ __forceinline__ void write_real(const ArgView& a, int64_t off, T v) {
  switch (a.type) {
    case ElemType::kDouble: static_cast<double*>(a.p)[off] = static_cast<double>(v); break;
    case ElemType::kHalf: static_cast<at::Half*>(a.p)[off] = static_cast<at::Half>(v); break;
    case ElemType::kBFloat16:
      static_cast<at::BFloat16*>(a.p)[off] = static_cast<at::BFloat16>(v);
      break;
    default: static_cast<float*>(a.p)[off] = static_cast<float>(v); break;
  }
}

__device__ __forceinline__ int64_t read_index(const ArgView& a, int64_t off) {
  switch (a.type) {
    case ElemType::kInt: return static_cast<const int32_t*>(a.p)[off];
    case ElemType::kShort: return static_cast<const int16_t*>(a.p)[off];
    case ElemType::kChar: return static_cast<const int8_t*>(a.p)[off];
    case ElemType::kByte: return static_cast<const uint8_t*>(a.p)[off];
    default: return static_cast<const int64_t*>(a.p)[off];
  }
}

// An argument for read_real / read_index, and the tensor that holds its data (keep it alive until
// the launch is enqueued). A dtype the kernels do not read (no caller of the Python API passes
// one: floating boxes, integer fills) is cast once on the host to int64 / float32.
struct HostArg {
  at::Tensor t;
  ArgView view;
};

inline HostArg arg_view(const at::Tensor& t, bool index) {
  ElemType type;
  bool read_as_is = true;
  switch (t.scalar_type()) {
    case at::kFloat: type = ElemType::kFloat; read_as_is = !index; break;
    case at::kDouble: type = ElemType::kDouble; read_as_is = !index; break;
    case at::kHalf: type = ElemType::kHalf; read_as_is = !index; break;
    case at::kBFloat16: type = ElemType::kBFloat16; read_as_is = !index; break;
    case at::kLong: type = ElemType::kLong; read_as_is = index; break;
    case at::kInt: type = ElemType::kInt; read_as_is = index; break;
    case at::kShort: type = ElemType::kShort; read_as_is = index; break;
    case at::kChar: type = ElemType::kChar; read_as_is = index; break;
    case at::kByte: type = ElemType::kByte; read_as_is = index; break;
    default: read_as_is = false; type = ElemType::kFloat; break;
  }
  at::Tensor held = t;
  if (!read_as_is) {
    held = t.to(index ? at::kLong : at::kFloat);
    type = index ? ElemType::kLong : ElemType::kFloat;
  }
  const int64_t s0 = held.dim() > 0 ? held.stride(0) : 0;
  const int64_t s1 = held.dim() > 1 ? held.stride(1) : 0;
  return HostArg{held, ArgView{const_cast<void*>(held.const_data_ptr()), s0, s1, type}};
}

// An output tensor of a floating dtype for write_real.
inline ArgView out_view(at::Tensor& t) {
  const HostArg a = arg_view(t, false);
  TORCH_INTERNAL_ASSERT(a.t.is_same(t), "out_view: a floating output tensor expected");
  return ArgView{t.data_ptr(), a.view.s0, a.view.s1, a.view.type};
}

#if defined(ANM_CUDA_EMULATION)
// The emulation has one "multiprocessor": grids are capped at 32 blocks, so the grid-stride loops
// run more than one round on the test shapes.
inline int multiprocessor_count() { return 1; }
inline cudaStream_t current_stream() { return nullptr; }
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
// Where the kernels' tensors live: the CPU under the emulation.
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }
#else
// Blocks for a grid-stride loop over `n` work items: enough to fill the GPU, no more.
inline int multiprocessor_count() {
  // Cached per device; cudaDeviceGetAttribute neither synchronises nor breaks graph capture.
  static int cache[64] = {0};
  const int dev = c10::cuda::current_device();
  if (dev < 0 || dev >= 64) return 132;
  if (cache[dev] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    cache[dev] = n > 0 ? n : 1;
  }
  return cache[dev];
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
using DeviceGuard = c10::cuda::CUDAGuard;
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }
#endif

inline int64_t grid_for(int64_t n, int threads) {
  const int64_t needed = (n + threads - 1) / threads;
  const int sms = multiprocessor_count();
  const int64_t cap = static_cast<int64_t>(sms) * 32;
  const int64_t g = needed < cap ? needed : cap;
  return g < 1 ? 1 : g;
}

}  // namespace cuda
}  // namespace anm_fast
