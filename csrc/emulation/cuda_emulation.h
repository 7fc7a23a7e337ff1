// An emulation of CUDA's execution model on the CPU, for testing the kernels of csrc/cuda without a
// GPU: those same .cu files are compiled by the host compiler with this header (see
// emulated_*.cpp, which include them), and their kernels run on CPU tensors.
//
// What it models:
//  * a launch runs every block of the grid, one block at a time, and every thread of a block as a
//    fiber on the calling thread (its own stack; switched by context_switch.cpp on x86-64, by
//    ucontext elsewhere), with threadIdx / blockIdx / blockDim / gridDim;
//  * __syncthreads is a real barrier over the block's live threads; warp shuffles and votes are
//    barriers over the lanes of the mask that exchange values; a lane named in a mask that has
//    already exited, a warp op whose lanes disagree on the mask, or threads that can never meet
//    again (a barrier some threads skip while others wait in a warp op) stop the launch with an
//    error instead of hanging;
//  * static __shared__ variables are one object per kernel (blocks run one after another);
//    dynamic shared memory is a buffer of the launch's size, filled with 0xFF bytes (NaN, -1)
//    before each block so a read before any write shows;
//  * atomics are plain read-modify-writes (fibers switch only at the synchronising calls above,
//    so they are atomic);
//  * the schedule: a thread runs until it reaches a barrier or warp op; the scheduler makes passes
//    over the block's threads, running each runnable one in turn, in an order set by
//    set_schedule(): lowest index first, highest first, or seeded random (a new order per pass);
//    the blocks run in the same kind of order. A missing barrier or a race lets one thread see
//    data another has not yet written (or has already overwritten) under some of these orders, so
//    the tests run every kernel under several schedules and compare with the reference.
// What it does not model: the memory model (no caches, no reordering, no visibility delays: plain
// writes are seen by the next thread that runs), preemption between two barriers (a race between
// barriers is seen only through the run order), warp-synchronous execution without __syncwarp,
// occupancy, timing, launch limits (grid and block sizes are not checked against a device),
// out-of-bounds accesses (plain host memory), and the static shared memory's initial contents.
#pragma once

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define ANM_CUDA_EMULATION 1

// The CUDA keywords the kernels use, as the host compiler sees them.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;

namespace anm_emu {

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores its stack pointer in *from and
// continues on the stack `to` (context_switch.cpp): a fiber switch without ucontext's signal-mask
// system call, which made it ~100x slower.
extern "C" void anm_emu_switch(void** from, void* to);
struct Context {
  void* sp = nullptr;
};
inline void switch_to(Context& from, Context& to) { anm_emu_switch(&from.sp, to.sp); }
// A context that starts `entry` on the stack [base, base + size) (entry must never return).
inline void make_context(Context& c, char* base, size_t size, void (*entry)()) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(base) + size) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                    // entry's return address (never used)
  *--sp = reinterpret_cast<uint64_t>(entry);    // where the switch's `ret` goes
  for (int r = 0; r < 6; ++r) *--sp = 0;        // rbp, rbx, r12-r15
  *--sp = 0x1F80ull | (0x037Full << 32);       // default MXCSR and x87 control word
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void make_context(Context& c, char* base, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = base;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

enum class Order { kLowestFirst = 0, kHighestFirst = 1, kRandom = 2 };

struct Fiber {
  enum State { kRunnable, kAtBarrier, kAtWarp, kDone };
  Context ctx;
  dim3 tid;
  int linear = 0;
  State state = kRunnable;
  unsigned warp_mask = 0;  // the mask of the warp op it waits in
  uint64_t slot[2] = {0, 0};  // the value it offers to a shuffle / vote, by the op's parity
};

struct Warp {
  int arrived = 0;
  unsigned mask = 0;
  unsigned generation = 0;  // warp barriers completed: its parity picks the shuffle slots
};

// The state of the launch in progress (one at a time: launches are serialised).
struct Machine {
  std::mutex mutex;
  Order order = Order::kLowestFirst;
  std::mt19937_64 rng{0};
  dim3 grid, block, block_idx;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<int> runnable;
  std::unique_ptr<char[]> stacks;
  size_t stack_bytes = 0;
  std::vector<unsigned char> dynamic_smem;
  Context scheduler;
  Fiber* current = nullptr;
  int live = 0, at_barrier = 0;
  std::string error;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  int64_t launches = 0;
};

inline Machine& machine() {
  static Machine m;
  return m;
}

constexpr size_t kStackBytes = 256 * 1024;

inline void set_schedule(int order, uint64_t seed) {
  Machine& m = machine();
  std::lock_guard<std::mutex> lock(m.mutex);
  if (order < 0 || order > 2) throw std::invalid_argument("set_schedule: order must be 0, 1 or 2");
  m.order = static_cast<Order>(order);
  m.rng.seed(seed);
}

inline int64_t launch_count() { return machine().launches; }

// Back to the scheduler (the calling fiber has set its state).
inline void yield() {
  Machine& m = machine();
  switch_to(m.current->ctx, m.scheduler);
}

// Stops the launch from inside a fiber: the scheduler raises the error after it.
[[noreturn]] inline void fail(const std::string& what) {
  Machine& m = machine();
  if (m.error.empty()) m.error = what;
  m.current->state = Fiber::kDone;
  switch_to(m.current->ctx, m.scheduler);
  __builtin_unreachable();
}

inline void release_barrier_if_complete() {
  Machine& m = machine();
  if (m.at_barrier == 0 || m.at_barrier < m.live) return;
  for (Fiber& f : m.fibers)
    if (f.state == Fiber::kAtBarrier) f.state = Fiber::kRunnable;
  m.at_barrier = 0;
}

inline void syncthreads() {
  Machine& m = machine();
  m.current->state = Fiber::kAtBarrier;
  ++m.at_barrier;
  release_barrier_if_complete();
  yield();
}

inline int warp_base() { return machine().current->linear / 32 * 32; }
inline int lane_id() { return machine().current->linear % 32; }

// Every lane of `mask` (lanes of the caller's warp) arrives here before any leaves.
inline void warp_barrier(unsigned mask) {
  Machine& m = machine();
  Fiber& self = *m.current;
  const int base = warp_base();
  if (!(mask >> lane_id() & 1u)) fail("a warp op's mask does not name the calling lane");
  Warp& w = m.warps[base / 32];
  for (int l = 0; w.arrived == 0 && l < 32; ++l) {  // checked when the op's first lane arrives
    if (!(mask >> l & 1u)) continue;
    const int t = base + l;
    if (t >= static_cast<int>(m.fibers.size()))
      fail("a warp op's mask names lane " + std::to_string(l) + ", which the block does not have");
    if (m.fibers[t].state == Fiber::kDone)
      fail("a warp op's mask names lane " + std::to_string(l) + ", which has exited");
  }
  if (w.arrived > 0 && w.mask != mask) fail("the lanes of a warp op disagree on its mask");
  w.mask = mask;
  self.state = Fiber::kAtWarp;
  self.warp_mask = mask;
  if (++w.arrived == __builtin_popcount(mask)) {
    for (int l = 0; l < 32; ++l)
      if (mask >> l & 1u) m.fibers[base + l].state = Fiber::kRunnable;
    w.arrived = 0;
    ++w.generation;
  }
  yield();
}

template <typename T>
uint64_t to_slot(T v) {
  static_assert(sizeof(T) <= 8, "warp ops exchange values of at most 8 bytes");
  uint64_t s = 0;
  std::memcpy(&s, &v, sizeof(T));
  return s;
}

template <typename T>
T from_slot(uint64_t s) {
  T v;
  std::memcpy(&v, &s, sizeof(T));
  return v;
}

// The slot parity of the caller's next warp op (the same for every lane of that op).
inline int warp_parity() {
  Machine& m = machine();
  return m.warps[warp_base() / 32].generation & 1;
}

// Offers `v`, waits for the mask's lanes, and reads lane `src`'s offer (its own value when `src`
// is outside the warp or the mask). Consecutive warp ops use alternate slots: a lane writes a
// slot again only two ops later, after every lane has passed the op in between, so every read of
// the slot's previous value is done: one barrier per op suffices.
template <typename T>
T exchange(unsigned mask, T v, int src) {
  Machine& m = machine();
  Fiber& self = *m.current;
  const int par = warp_parity();
  self.slot[par] = to_slot(v);
  warp_barrier(mask);
  if (src >= 0 && src < 32 && (mask >> src & 1u))
    return from_slot<T>(m.fibers[warp_base() + src].slot[par]);
  return v;
}

inline unsigned ballot(unsigned mask, bool p) {
  Machine& m = machine();
  Fiber& self = *m.current;
  const int par = warp_parity();
  self.slot[par] = p ? 1 : 0;
  warp_barrier(mask);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && m.fibers[warp_base() + l].slot[par]) bits |= 1u << l;
  return bits;
}

[[noreturn]] inline void fiber_entry() {
  Machine& m = machine();
  m.body(m.body_arg);
  m.current->state = Fiber::kDone;
  --m.live;
  release_barrier_if_complete();
  switch_to(m.current->ctx, m.scheduler);  // never resumed
  __builtin_unreachable();
}

// The order of one pass over the block's threads: the scheduler runs, in this order, every
// thread that is runnable when its turn comes, until it blocks, then starts another pass.
inline void plan_pass() {
  Machine& m = machine();
  const int n = static_cast<int>(m.fibers.size());
  m.runnable.resize(n);
  for (int t = 0; t < n; ++t) m.runnable[t] = m.order == Order::kHighestFirst ? n - 1 - t : t;
  if (m.order == Order::kRandom) std::shuffle(m.runnable.begin(), m.runnable.end(), m.rng);
}

// Runs one block: every thread from the start of `body` to its end.
inline void run_block() {
  Machine& m = machine();
  const int n = static_cast<int>(m.block.x * m.block.y * m.block.z);
  std::fill(m.dynamic_smem.begin(), m.dynamic_smem.end(), 0xFF);
  for (int t = 0; t < n; ++t) {
    Fiber& f = m.fibers[t];
    f.linear = t;
    f.tid = dim3(t % m.block.x, t / m.block.x % m.block.y, t / (m.block.x * m.block.y));
    f.state = Fiber::kRunnable;
    make_context(f.ctx, m.stacks.get() + static_cast<size_t>(t) * kStackBytes, kStackBytes,
                 fiber_entry);
  }
  for (Warp& w : m.warps) w = Warp{};
  m.live = n;
  m.at_barrier = 0;
  while (m.error.empty() && m.live > 0) {
    plan_pass();
    bool ran = false;
    for (int next : m.runnable) {
      if (m.fibers[next].state != Fiber::kRunnable) continue;
      ran = true;
      m.current = &m.fibers[next];
      switch_to(m.scheduler, m.current->ctx);
      if (!m.error.empty()) break;
    }
    if (!ran && m.error.empty())
      m.error = "the block's threads can never meet again (some wait at __syncthreads, "
                "others in a warp op)";
  }
  m.current = nullptr;
}

// A kernel launch: every block, in the schedule's block order.
inline void run_grid(dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* arg) {
  Machine& m = machine();
  std::lock_guard<std::mutex> lock(m.mutex);
  const int n = static_cast<int>(block.x * block.y * block.z);
  if (n <= 0 || n > 1024) throw std::invalid_argument("emulated launch: bad block size");
  m.grid = grid;
  m.block = block;
  m.body = body;
  m.body_arg = arg;
  m.error.clear();
  m.fibers.assign(n, Fiber{});
  m.warps.assign((n + 31) / 32, Warp{});
  if (m.stack_bytes < static_cast<size_t>(n) * kStackBytes) {
    m.stack_bytes = static_cast<size_t>(n) * kStackBytes;
    m.stacks.reset(new char[m.stack_bytes]);  // untouched pages cost no memory
  }
  m.dynamic_smem.assign(smem, 0xFF);
  std::vector<dim3> blocks;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) blocks.emplace_back(x, y, z);
  if (m.order == Order::kHighestFirst) std::reverse(blocks.begin(), blocks.end());
  if (m.order == Order::kRandom) std::shuffle(blocks.begin(), blocks.end(), m.rng);
  ++m.launches;
  for (const dim3& b : blocks) {
    m.block_idx = b;
    run_block();
    if (!m.error.empty()) throw std::runtime_error("emulated CUDA kernel: " + m.error);
  }
}

// kernel<<<grid, block, smem, stream>>>(args...) as anm_emu::launcher(grid, block, smem,
// kernel)(args...): the arguments are converted to the kernel's parameter types and copied, as
// a launch does, then every thread calls the kernel with them.
template <typename... P>
struct Launcher {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  template <typename... A>
  void operator()(A&&... args) const {
    struct Call {
      void (*kernel)(P...);
      std::tuple<typename std::decay<P>::type...> params;
    } call{kernel, std::tuple<typename std::decay<P>::type...>(std::forward<A>(args)...)};
    run_grid(grid, block, smem,
             [](void* p) {
               Call* c = static_cast<Call*>(p);
               std::apply(c->kernel, c->params);
             },
             &call);
  }
};

template <typename... P>
Launcher<P...> launcher(dim3 grid, dim3 block, size_t smem, void (*kernel)(P...)) {
  return Launcher<P...>{kernel, grid, block, smem};
}

inline dim3 thread_idx() { return machine().current->tid; }
inline dim3 block_idx() { return machine().block_idx; }
inline dim3 block_dim() { return machine().block; }
inline dim3 grid_dim() { return machine().grid; }
inline unsigned char* dynamic_shared() { return machine().dynamic_smem.data(); }

}  // namespace anm_emu

#define threadIdx (::anm_emu::thread_idx())
#define blockIdx (::anm_emu::block_idx())
#define blockDim (::anm_emu::block_dim())
#define gridDim (::anm_emu::grid_dim())

inline void __syncthreads() { ::anm_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::anm_emu::warp_barrier(mask); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src) {
  return ::anm_emu::exchange(mask, v, src);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  return ::anm_emu::exchange(mask, v, ::anm_emu::lane_id() + static_cast<int>(delta));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return ::anm_emu::exchange(mask, v, ::anm_emu::lane_id() ^ lane_mask);
}
inline unsigned __ballot_sync(unsigned mask, int p) { return ::anm_emu::ballot(mask, p != 0); }
inline int __any_sync(unsigned mask, int p) { return ::anm_emu::ballot(mask, p != 0) != 0; }
inline int __all_sync(unsigned mask, int p) {
  return ::anm_emu::ballot(mask, p != 0) == mask;
}

template <typename T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
T atomicMin(T* p, T v) {
  const T old = *p;
  *p = v < old ? v : old;
  return old;
}
template <typename T>
T atomicOr(T* p, T v) {
  const T old = *p;
  *p = old | v;
  return old;
}
template <typename T>
T atomicMax(T* p, T v) {
  const T old = *p;
  *p = v > old ? v : old;
  return old;
}

using std::isfinite;  // device code calls the global ones

// Correctly rounded arithmetic without contraction: the emulation is built with -ffp-contract=off.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
template <typename T>
T __ldg(const T* p) {
  return *p;
}

// kernel<<<grid, block, smem, stream>>> spelled so the host compiler can read it.
#define ANM_LAUNCH(grid, block, smem, stream, ...) \
  ::anm_emu::launcher(dim3(grid), dim3(block), static_cast<size_t>(smem), __VA_ARGS__)
#define ANM_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::anm_emu::dynamic_shared())
