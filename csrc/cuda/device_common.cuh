// Device-side helpers of the CUDA kernels: the launch geometry, deterministic warp /
// block reductions, and the 2-D upsample of one pixel built from the shared
// math::axis_taps. No CUDA runtime header: csrc/emulation/ compiles these kernels with a
// C++ compiler and runs them on the CPU (tests/test_ops_cuda.py).
#pragma once

#include <cstdint>

#include "../kernel_params.h"
#include "../tdsa_math.h"

// Dynamic and static shared memory, spelled so that the emulation can redefine them.
#ifndef TDSA_DYNAMIC_SMEM
#define TDSA_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif
#ifndef TDSA_SHARED
#define TDSA_SHARED __shared__
#endif

namespace tdsa_fast {
namespace cuda {

// Threads per block (8 warps). Overridable only for the CPU emulation of the kernels
// (csrc/emulation/), which runs them with fewer threads to keep the tests fast; the loops
// and reductions are written for any multiple of 32.
#ifndef TDSA_CUDA_THREADS
#define TDSA_CUDA_THREADS 256
#endif
constexpr int kThreads = TDSA_CUDA_THREADS;
static_assert(kThreads % 32 == 0 && kThreads >= 32 && kThreads <= 1024, "kThreads: a multiple of 32");
constexpr int kWarps = kThreads / 32;
// At least this many blocks per SM (caps registers at 65536 / (kThreads * kMinBlocks)):
// the kernels are memory-bound and each block keeps a whole group in shared memory.
constexpr int kMinBlocks = 3;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;  // every lane holds the same total (fixed butterfly order: deterministic)
}

template <typename T>
__device__ __forceinline__ T warp_nan_max(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = math::nan_max(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum over the block; the result is valid in thread 0. `red` holds kWarps values.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  T r = T(0);
  if (warp == 0) {
    r = lane < kWarps ? red[lane] : T(0);
    r = warp_sum(r);
  }
  return r;
}

// Value of Upsample(high plane) at low-resolution pixel (y, x): sum over the row taps
// (outer) of the weighted sum over the column taps (inner), exactly the sums and order
// of the CPU kernels' separable evaluation.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t upsample_at(const scalar_t* __restrict__ plane, int64_t sH, int64_t sW, int64_t Hh,
                                             int64_t Wh, int64_t H, int64_t W, int mode, int64_t y, int64_t x) {
  int64_t iy[math::kMaxTaps], ix[math::kMaxTaps];
  acc_t wy[math::kMaxTaps], wx[math::kMaxTaps];
  const int ny = math::axis_taps<acc_t>(mode, y, Hh, H, iy, wy);
  const int nx = math::axis_taps<acc_t>(mode, x, Wh, W, ix, wx);
  acc_t acc = acc_t(0);
  for (int a = 0; a < ny; ++a) {
    const scalar_t* row = plane + iy[a] * sH;
    acc_t r = wx[0] * static_cast<acc_t>(row[ix[0] * sW]);
    for (int c = 1; c < nx; ++c) r += wx[c] * static_cast<acc_t>(row[ix[c] * sW]);
    acc = a == 0 ? wy[0] * r : acc + wy[a] * r;
  }
  return acc;
}

}  // namespace cuda
}  // namespace tdsa_fast
