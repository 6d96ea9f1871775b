// A CPU emulation of the CUDA execution model, strict enough to catch the defects a real
// GPU would hide, for running this project's kernels (csrc/cuda/*.cuh) and their host
// launch code (csrc/cuda/*.cu: plan_scratch, launch_planned, the > 48 KB opt-in, the
// workspace sizing) unchanged on a machine without a GPU, in tests:
//
//   * every block runs its real number of threads (kThreads, 256) as fibers (ucontext) on
//     the calling thread; a fiber runs until it reaches a barrier (__syncthreads, or a warp
//     collective: __shfl_xor_sync) or exits, and the next fiber to run is chosen by the
//     schedule: forward (thread order), reverse, or a seeded random pick among the runnable
//     fibers at every switch. The barrier phases of different threads (and warps) are so
//     interleaved in a reproducible order: a kernel whose result depends on the order
//     (a missing __syncthreads, a shared-memory race) gives different results under two
//     schedules, which the tests compare bit for bit (the kernels are deterministic);
//   * shared memory (and the global workspace) starts every block filled with the
//     configured byte (0xFF: NaN in every float type; or seeded random bytes), so a read of
//     scratch that the kernel did not write first changes the results with the fill;
//   * the dynamic shared memory is exactly the launch's size, between guard zones whose
//     bytes are checked at every __syncthreads and at the end of every block: a write out
//     of bounds raises, naming the block, the barrier phase and the offset; a read out of
//     bounds reads the fill (as above);
//   * a barrier that not every thread of its block (or warp) reaches raises at once
//     ("divergent barrier"), instead of hanging;
//   * an emulated device (SM count, opt-in shared memory per block, occupancy of the
//     fallback kernels) answers the CUDA runtime calls of csrc/cuda/cuda_common.cuh, and a
//     launch is refused as CUDA refuses it (more than 48 KB of dynamic shared memory without
//     cudaFuncSetAttribute for that kernel, more than the opt-in, grid / block limits);
//     the calls are counted, so the tests can check that the attribute is set once.
// Blocks run one after the other (the kernels do not communicate between blocks). Not
// emulated: the memory model across blocks, expf vs exp and FMA contraction, performance.
//
// Include after the torch headers and before the kernel headers: it defines the CUDA
// keywords and the names threadIdx, blockIdx, blockDim, gridDim as macros.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#define TDSA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define TDSA_SHARED static
#define TDSA_DYNAMIC_SMEM(name) unsigned char* name = ::tdsa_emu::dynamic_smem()

namespace tdsa_emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3 thread_idx, block_idx;
inline Dim3 grid_dim, block_dim;

// What the tests set (the module's configure()): the schedule, the fill, the device.
struct Config {
  int schedule = 0;        // 0: forward, 1: reverse, 2: seeded random pick at every switch
  uint64_t seed = 0;       // for schedule 2 and fill -1
  int fill = 0xFF;         // byte of fresh scratch (0xFF: NaN); -1: seeded random bytes
  int sms = 132;           // H200
  int optin = 232448;      // cudaDevAttrMaxSharedMemoryPerBlockOptin of sm_90 (227 KB)
  int sm_smem = 233472;    // cudaDevAttrMaxSharedMemoryPerMultiprocessor of sm_90 (228 KB)
  int occupancy = 2;       // cudaOccupancyMaxActiveBlocksPerMultiprocessor's answer
  size_t static_smem = 64; // cudaFuncAttributes::sharedSizeBytes (at most the fp64 `red`)
};
inline Config& config() {
  static Config c;
  return c;
}

// Counters since the last reset (the module's stats()).
struct Stats {
  long launches = 0, blocks = 0, switches = 0, barriers = 0, set_attribute = 0;
  long opt_in_launches = 0;  // launches with more than 48 KB of dynamic shared memory
  size_t max_dynamic_smem = 0;
  long no_dynamic_smem_launches = 0;  // launches with none (the global-scratch kernels)
  long max_grid = 0;
};
inline Stats& stats() {
  static Stats s;
  return s;
}

constexpr size_t kGuard = 256;           // guard bytes on each side of the dynamic shared memory
constexpr size_t kStack = 256 * 1024;    // per fiber
constexpr int kDefaultSmem = 48 * 1024;  // without the opt-in

inline unsigned char guard_byte(size_t i) { return static_cast<unsigned char>(0xA5 ^ (i * 29)); }

// Fills `n` bytes with the configured fill (seeded random bytes: a different stream per
// `salt`, e.g. the block index).
inline void fill_bytes(unsigned char* p, size_t n, uint64_t salt) {
  const Config& c = config();
  if (c.fill >= 0) {
    std::memset(p, c.fill, n);
    return;
  }
  std::mt19937_64 g(c.seed * 0x9E3779B97F4A7C15ull + salt);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<unsigned char>(g() >> 56);
}

// The dynamic shared memory of the running block: [guard][bytes][guard], 16-byte aligned.
struct SharedMemory {
  std::vector<unsigned char> raw;
  unsigned char* base = nullptr;
  size_t bytes = 0;
  void reset(size_t n) {
    bytes = n;
    raw.assign(n + 2 * kGuard + 16, 0);
    const uintptr_t a = (reinterpret_cast<uintptr_t>(raw.data()) + kGuard + 15) & ~uintptr_t(15);
    base = reinterpret_cast<unsigned char*>(a);
  }
  void refill(uint64_t salt) {
    fill_bytes(base, bytes, salt);
    for (size_t i = 0; i < kGuard; ++i) base[-static_cast<std::ptrdiff_t>(kGuard) + static_cast<std::ptrdiff_t>(i)] = guard_byte(i);
    for (size_t i = 0; i < kGuard; ++i) base[bytes + i] = guard_byte(kGuard + i);
  }
  // "" when the guards are intact, else where they were overwritten
  std::string check() const {
    for (size_t i = 0; i < kGuard; ++i) {
      if (base[-static_cast<std::ptrdiff_t>(kGuard) + static_cast<std::ptrdiff_t>(i)] != guard_byte(i)) {
        return "a write " + std::to_string(kGuard - i) + " bytes before the start";
      }
    }
    for (size_t i = 0; i < kGuard; ++i) {
      if (base[bytes + i] != guard_byte(kGuard + i)) return "a write at byte " + std::to_string(i) + " past the end";
    }
    return "";
  }
};
inline SharedMemory& smem() {
  static SharedMemory s;
  return s;
}
inline unsigned char* dynamic_smem() { return smem().base; }

class Scheduler {
 public:
  enum State { kReady, kBlockWait, kWarpWait, kDone };

  Scheduler(int threads, std::function<void()> body) : n_(threads), body_(std::move(body)), fibers_(threads) {
    for (auto& f : fibers_) f.stack.reset(new char[kStack]);
    warp_arrived_.assign((threads + 31) / 32, 0);
    slots_.assign(threads, 0.0);
    const Config& c = config();
    rng_.seed(c.seed * 0x2545F4914F6CDD1Dull + 1);
  }

  // Runs one block: every fiber from the kernel's start to its end.
  void run_block(unsigned block) {
    block_ = block;
    phase_ = 0;
    ready_.clear();
    block_arrived_ = 0;
    std::fill(warp_arrived_.begin(), warp_arrived_.end(), 0);
    for (int t = 0; t < n_; ++t) {
      Fiber& f = fibers_[t];
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.get();
      f.ctx.uc_stack.ss_size = kStack;
      f.ctx.uc_link = &main_;
      makecontext(&f.ctx, &Scheduler::entry, 0);
      f.state = kReady;
      ready_.push_back(t);
    }
    while (!ready_.empty()) {
      const int t = pick();
      current_ = t;
      thread_idx = Dim3{static_cast<unsigned>(t), 0, 0};
      ++stats().switches;
      swapcontext(&main_, &fibers_[t].ctx);
      if (err_) std::rethrow_exception(err_);
    }
    int done = 0, at_block = 0, at_warp = 0;
    for (const Fiber& f : fibers_) {
      done += f.state == kDone;
      at_block += f.state == kBlockWait;
      at_warp += f.state == kWarpWait;
    }
    if (done != n_) {
      std::ostringstream m;
      m << "divergent barrier in block " << block << " (after barrier phase " << phase_ << "): " << at_block
        << " threads wait at __syncthreads, " << at_warp << " at a warp collective, " << done << " exited";
      throw std::runtime_error(m.str());
    }
    const std::string g = smem().check();
    if (!g.empty()) fail_oob(g, "at the block's end");
  }

  void block_barrier() {
    Fiber& f = fibers_[current_];
    f.state = kBlockWait;
    if (++block_arrived_ == n_) {
      block_arrived_ = 0;
      ++phase_;
      ++stats().barriers;
      const std::string g = smem().check();
      if (!g.empty()) fail_oob(g, "at __syncthreads");
      for (int t = 0; t < n_; ++t) {
        if (fibers_[t].state == kBlockWait) {
          fibers_[t].state = kReady;
          ready_.push_back(t);
        }
      }
    }
    yield();
  }

  void warp_barrier() {
    Fiber& f = fibers_[current_];
    const int w = current_ >> 5;
    const int lanes = std::min(32, n_ - (w << 5));
    f.state = kWarpWait;
    if (++warp_arrived_[w] == lanes) {
      warp_arrived_[w] = 0;
      for (int t = w << 5; t < (w << 5) + lanes; ++t) {
        if (fibers_[t].state == kWarpWait) {
          fibers_[t].state = kReady;
          ready_.push_back(t);
        }
      }
    }
    yield();
  }

  double& slot(int t) { return slots_[t]; }

  static Scheduler*& current_scheduler() {
    static thread_local Scheduler* s = nullptr;
    return s;
  }

 private:
  struct Fiber {
    ucontext_t ctx{};
    std::unique_ptr<char[]> stack;
    State state = kReady;
  };

  static void entry() {
    Scheduler* s = current_scheduler();
    const int t = s->current_;
    try {
      s->body_();
    } catch (...) {
      if (!s->err_) s->err_ = std::current_exception();
    }
    s->fibers_[t].state = kDone;
    // returns to main_ through uc_link
  }

  void yield() {
    Fiber& f = fibers_[current_];
    swapcontext(&f.ctx, &main_);
    thread_idx = Dim3{static_cast<unsigned>(current_), 0, 0};
  }

  int pick() {
    size_t k = 0;
    switch (config().schedule) {
      case 0:
        k = 0;
        break;
      case 1:
        k = ready_.size() - 1;
        break;
      default:
        k = static_cast<size_t>(rng_() % ready_.size());
    }
    const int t = ready_[k];
    ready_.erase(ready_.begin() + static_cast<std::ptrdiff_t>(k));
    return t;
  }

  [[noreturn]] void fail_oob(const std::string& where, const char* when) {
    std::ostringstream m;
    m << "shared memory out of bounds: " << where << " of the " << smem().bytes << "-byte dynamic shared memory, block "
      << block_ << ", " << when << " (barrier phase " << phase_ << ")";
    throw std::runtime_error(m.str());
  }

  int n_;
  std::function<void()> body_;
  std::vector<Fiber> fibers_;
  std::vector<int> ready_;
  std::vector<int> warp_arrived_;
  std::vector<double> slots_;
  std::mt19937_64 rng_;
  ucontext_t main_{};
  std::exception_ptr err_;
  int current_ = 0, block_arrived_ = 0;
  unsigned block_ = 0;
  long phase_ = 0;
};

// The emulated CUDA runtime's record: the dynamic shared memory each kernel may use (set by
// cudaFuncSetAttribute), and the last launch error.
inline std::map<const void*, int>& max_dynamic_smem() {
  static std::map<const void*, int> m;
  return m;
}
inline std::string& last_error() {
  static std::string e;
  return e;
}

// kernel<<<grid, threads, smem_bytes>>>(args...), checked as CUDA checks it: the blocks
// run one after the other, each as `threads` fibers, on fresh (filled) shared memory.
template <typename Kernel, typename... Args>
void launch(const void* id, unsigned grid, unsigned threads, size_t smem_bytes, Kernel kernel, Args... args) {
  const Config& c = config();
  const auto it = max_dynamic_smem().find(id);
  const size_t allowed = it == max_dynamic_smem().end() ? kDefaultSmem : static_cast<size_t>(it->second);
  if (grid == 0 || grid > static_cast<unsigned>(INT_MAX) || threads == 0 || threads > 1024) {
    last_error() = "invalid configuration argument (grid " + std::to_string(grid) + ", " + std::to_string(threads) + " threads)";
    return;
  }
  if (smem_bytes > allowed || smem_bytes + c.static_smem > static_cast<size_t>(c.optin)) {
    last_error() = "too many resources requested for launch: " + std::to_string(smem_bytes) +
                   " bytes of dynamic shared memory, the kernel may use " + std::to_string(allowed) +
                   (it == max_dynamic_smem().end() ? " (no cudaFuncSetAttribute)" : "");
    return;
  }
  Stats& st = stats();
  ++st.launches;
  st.opt_in_launches += smem_bytes > static_cast<size_t>(kDefaultSmem);
  st.max_dynamic_smem = std::max(st.max_dynamic_smem, smem_bytes);
  st.no_dynamic_smem_launches += smem_bytes == 0;
  st.max_grid = std::max(st.max_grid, static_cast<long>(grid));
  grid_dim = Dim3{grid, 1, 1};
  block_dim = Dim3{threads, 1, 1};
  smem().reset(smem_bytes);
  Scheduler s(static_cast<int>(threads), [&] { kernel(args...); });
  Scheduler*& cur = Scheduler::current_scheduler();
  Scheduler* const saved = cur;
  cur = &s;
  try {
    for (unsigned b = 0; b < grid; ++b) {
      block_idx = Dim3{b, 0, 0};
      smem().refill(b);
      ++st.blocks;
      s.run_block(b);
    }
  } catch (...) {
    cur = saved;
    throw;
  }
  cur = saved;
}

// TDSA_LAUNCH(kernel, grid, threads, smem, stream)(args...) of csrc/cuda/cuda_common.cuh.
template <typename Kernel>
struct Launcher {
  Kernel kernel;
  unsigned grid, threads;
  size_t smem;
  template <typename... Args>
  void operator()(Args... args) const {
    launch(reinterpret_cast<const void*>(kernel), grid, threads, smem, kernel, args...);
  }
};
template <typename Kernel>
Launcher<Kernel> launcher(Kernel k, unsigned grid, unsigned threads, size_t smem) {
  return Launcher<Kernel>{k, grid, threads, smem};
}

inline void launch_check() {
  if (!last_error().empty()) {
    const std::string e = last_error();
    last_error().clear();
    throw std::runtime_error("emulated CUDA launch failed: " + e);
  }
}

}  // namespace tdsa_emu

#define threadIdx (::tdsa_emu::thread_idx)
#define blockIdx (::tdsa_emu::block_idx)
#define gridDim (::tdsa_emu::grid_dim)
#define blockDim (::tdsa_emu::block_dim)

inline void __syncthreads() { ::tdsa_emu::Scheduler::current_scheduler()->block_barrier(); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  ::tdsa_emu::Scheduler* s = ::tdsa_emu::Scheduler::current_scheduler();
  const int t = static_cast<int>(threadIdx.x), w = t >> 5, lane = t & 31;
  s->slot(t) = static_cast<double>(v);  // exact for float and double
  s->warp_barrier();
  const T r = static_cast<T>(s->slot((w << 5) | (lane ^ lane_mask)));
  s->warp_barrier();
  return r;
}

// The CUDA runtime calls of csrc/cuda/cuda_common.cuh, answered by the emulated device.
using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0;
};
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  const auto& c = ::tdsa_emu::config();
  *v = a == cudaDevAttrMultiProcessorCount ? c.sms : a == cudaDevAttrMaxSharedMemoryPerMultiprocessor ? c.sm_smem : c.optin;
  return cudaSuccess;
}
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, const void*) {
  a->sharedSizeBytes = ::tdsa_emu::config().static_smem;
  return cudaSuccess;
}
inline cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute, int value) {
  const ::tdsa_emu::Config& c = ::tdsa_emu::config();
  if (value < 0 || static_cast<size_t>(value) + c.static_smem > static_cast<size_t>(c.optin)) return 1;
  ++::tdsa_emu::stats().set_attribute;
  ::tdsa_emu::max_dynamic_smem()[kernel] = value;
  return cudaSuccess;
}
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void*, int, size_t) {
  *n = ::tdsa_emu::config().occupancy;
  return cudaSuccess;
}
#define C10_CUDA_CHECK(expr) \
  do {                                                                                  \
    if ((expr) != cudaSuccess) throw std::runtime_error("emulated CUDA call failed: " #expr); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::tdsa_emu::launch_check()
#define TDSA_LAUNCH(kernel, grid, threads, smem, stream) ::tdsa_emu::launcher(kernel, grid, threads, smem)
