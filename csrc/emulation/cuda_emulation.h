// A small CPU emulation of the CUDA execution model, just enough to run this project's
// kernels (csrc/cuda/*.cuh) unchanged on a machine without a GPU, for tests: every block
// runs as kThreads std::threads; __syncthreads is a block barrier; __shfl_xor_sync a
// per-warp exchange with warp barriers; shared memory is one buffer per block, filled with
// NaN bytes at every block start (and the global workspace too), so reading scratch that a
// kernel did not write first shows up as NaN in the results. A barrier that is not reached
// by every thread of its block / warp (divergent __syncthreads or warp collective) raises
// after a timeout instead of hanging. Blocks run one after the other.
//
// Include after the torch headers and before the kernel headers: it defines the CUDA
// keywords and the names threadIdx, blockIdx, blockDim, gridDim as macros.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

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

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lk(m_);
    if (aborted_) throw std::runtime_error("emulated block aborted");
    const long gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    const bool ok = cv_.wait_for(lk, std::chrono::seconds(60), [&] { return gen_ != gen || aborted_; });
    if (aborted_) throw std::runtime_error("emulated block aborted");
    if (!ok) {
      aborted_ = true;
      cv_.notify_all();
      throw std::runtime_error("barrier timeout: a __syncthreads or warp collective not reached by all threads");
    }
  }
  void abort() {
    std::lock_guard<std::mutex> lk(m_);
    aborted_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  long gen_ = 0;
  bool aborted_ = false;
};

struct BlockState {
  explicit BlockState(int threads) : block(threads), slots(static_cast<size_t>(threads)) {
    for (int w = 0; w < (threads + 31) / 32; ++w) warps.emplace_back(new Barrier(32));
  }
  void abort() {
    block.abort();
    for (auto& w : warps) w->abort();
  }
  Barrier block;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<double> slots;
};

inline BlockState*& state() {
  static BlockState* s = nullptr;
  return s;
}
inline std::vector<unsigned char>& smem_buffer() {
  static std::vector<unsigned char> b;
  return b;
}
inline unsigned char* dynamic_smem() { return smem_buffer().data(); }

}  // namespace tdsa_emu

#define threadIdx (::tdsa_emu::thread_idx)
#define blockIdx (::tdsa_emu::block_idx)
#define gridDim (::tdsa_emu::grid_dim)
#define blockDim (::tdsa_emu::block_dim)

inline void __syncthreads() { ::tdsa_emu::state()->block.wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  ::tdsa_emu::BlockState* st = ::tdsa_emu::state();
  const int t = static_cast<int>(threadIdx.x), w = t >> 5, lane = t & 31;
  st->slots[t] = static_cast<double>(v);  // exact for float and double
  st->warps[w]->wait();
  const T r = static_cast<T>(st->slots[(w << 5) | (lane ^ lane_mask)]);
  st->warps[w]->wait();
  return r;
}

namespace tdsa_emu {

// kernel<<<grid, threads, smem_bytes>>>(args...): `threads` std::threads run the blocks one
// after the other (a block barrier between blocks, the scratch refilled with NaN bytes).
template <typename Kernel, typename... Args>
void launch(unsigned grid, unsigned threads, size_t smem_bytes, Kernel kernel, Args... args) {
  grid_dim = Dim3{grid, 1, 1};
  block_dim = Dim3{threads, 1, 1};
  smem_buffer().assign(smem_bytes + 16, 0xFF);  // NaN bytes
  BlockState st(static_cast<int>(threads));
  state() = &st;
  std::exception_ptr err;
  std::mutex err_m;
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      thread_idx = Dim3{t, 0, 0};
      try {
        for (unsigned b = 0; b < grid; ++b) {
          block_idx = Dim3{b, 0, 0};
          kernel(args...);
          st.block.wait();  // every thread is done with this block
          if (t == 0) std::memset(smem_buffer().data(), 0xFF, smem_buffer().size());
          st.block.wait();
        }
      } catch (...) {
        {
          std::lock_guard<std::mutex> lk(err_m);
          if (!err) err = std::current_exception();
        }
        st.abort();
      }
    });
  }
  for (auto& th : pool) th.join();
  state() = nullptr;
  if (err) std::rethrow_exception(err);
}

}  // namespace tdsa_emu
