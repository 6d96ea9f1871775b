// Test-only kernels with deliberately planted defects, in the style of csrc/cuda (storage
// type and float accumulator as template arguments, warp_sum / a fixed-order combine, no
// atomics), for tests/test_cuda_emulation.py to show that the emulation of
// cuda_emulation.h catches each kind: without the defect the kernel gives the same bits
// under every schedule and fill; with it, the results change with the schedule or the
// fill, or the emulation raises. Not part of the package build.
//
// neighbour_dot: out[g] = sum_e x[g, e] * x[g, (e + 1) % n] over a group of n values,
// staged in shared memory by one thread and read by its neighbour (a cross-thread
// dependency through shared memory, as the real kernels' per-position loops have).
#pragma once

#include "../cuda/device_common.cuh"

namespace tdsa_fast {
namespace cuda {
namespace planted {

enum Defect {
  kNone = 0,
  kMissingBarrier = 1,     // no __syncthreads between staging the group and reading it
  kUninitialisedRead = 2,  // the combine reads one partial slot that no warp wrote
  kOutOfBounds = 3,        // the staging writes one value past the end of its region
  kDivergentBarrier = 4,   // one warp reaches an extra __syncthreads
};

// Scratch: part [kWarps + 1] acc_t (16-byte rounded), then buf [n] acc_t, exactly.
__host__ __device__ inline int64_t part_bytes(int64_t acc_size) { return ((kWarps + 1) * acc_size + 15) / 16 * 16; }
__host__ __device__ inline int64_t neighbour_dot_bytes(int64_t n, int64_t acc_size) {
  return part_bytes(acc_size) + n * acc_size;
}

template <typename scalar_t, typename acc_t, int DEFECT>
__global__ void __launch_bounds__(kThreads)
    neighbour_dot_kernel(const scalar_t* __restrict__ x, int n, acc_t* __restrict__ out, int64_t groups) {
  TDSA_DYNAMIC_SMEM(smem_raw);
  acc_t* const part = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* const buf = reinterpret_cast<acc_t*>(smem_raw + part_bytes(sizeof(acc_t)));
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const scalar_t* xg = x + grp * n;
    for (int e = tid; e < n; e += kThreads) buf[DEFECT == kOutOfBounds ? e + 1 : e] = static_cast<acc_t>(xg[e]);
    if (DEFECT != kMissingBarrier) __syncthreads();
    acc_t s = acc_t(0);
    for (int e = tid; e < n; e += kThreads) s += buf[e] * buf[e + 1 < n ? e + 1 : 0];
    s = warp_sum(s);
    if (lane == 0) part[warp] = s;
    if (DEFECT == kDivergentBarrier && warp == 0) __syncthreads();
    __syncthreads();
    if (tid == 0) {
      acc_t r = part[0];
      for (int w = 1; w < (DEFECT == kUninitialisedRead ? kWarps + 1 : kWarps); ++w) r += part[w];
      out[grp] = r;
    }
    __syncthreads();  // part and buf are reused by the next group
  }
}

}  // namespace planted
}  // namespace cuda
}  // namespace tdsa_fast
