// Device-side helpers of the CUDA kernels: the launch geometry, deterministic warp /
// block reductions, and the 2-D upsample of one pixel built from the shared
// math::axis_taps. No CUDA runtime header: csrc/emulation/ compiles these kernels with a
// C++ compiler and runs them on the CPU (tests/test_ops_cuda.py).
#pragma once

#include <cstdint>
#include <type_traits>

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

// Threads per block (8 warps). The CPU emulation (csrc/emulation/) runs the same 256; the
// macro stays overridable for experiments there: the loops and reductions are written for
// any multiple of 32.
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

// f(k, q) for this thread's share of every plane k < planes and position q < HW: with
// `k_fastest` (channels_last, where a group's channels at one position are its contiguous
// run) the lanes walk the planes fastest, else the positions within each plane.
template <class F>
__device__ __forceinline__ void for_planes_positions(int planes, int HW, bool k_fastest, const F& f) {
  if (k_fastest) {
    for (int e = threadIdx.x; e < planes * HW; e += kThreads) {
      const int q = e / planes;
      f(e - q * planes, q);
    }
  } else {
    for (int k = 0; k < planes; ++k) {
      for (int q = threadIdx.x; q < HW; q += kThreads) f(k, q);
    }
  }
}

// Where a kernel's per-group scratch lives (a template argument, so that the compiler
// sees shared-memory pointers as such and emits LDS/STS, and can reorder scratch accesses
// against the global ones): dynamic shared memory, or a global-memory slice per block.
struct SharedScratch {};
struct GlobalScratch {};
// How a group lies in global memory: DenseGroup = each group's channels are one
// contiguous NCHW run (16-byte vector loads, flat stores); StridedGroup = any strides;
// StreamedGroup = dense, but too large to copy into shared memory: read from global
// memory (coalesced, through L2) in every pass, the rest of the scratch in shared memory.
struct DenseGroup {};
struct StridedGroup {};
struct StreamedGroup {};

// The scratch base of block blockIdx.x.
template <class Where>
__device__ __forceinline__ unsigned char* scratch_base(unsigned char* smem, unsigned char* gws, int64_t ws_stride) {
  if constexpr (std::is_same<Where, SharedScratch>::value) {
    (void)gws;
    (void)ws_stride;
    return smem;
  } else {
    (void)smem;
    return gws + static_cast<int64_t>(blockIdx.x) * ws_stride;
  }
}

// Minimum resident blocks per SM the kernels are compiled for: 3 (<= 85 registers) with
// float accumulation and shared-memory scratch, 2 with double (its arithmetic needs twice
// the registers) or with global-memory scratch (64-bit scratch addresses; the fallback's
// grid is sized to the occupancy it gets), 1 with both.
template <typename acc_t, class Where>
constexpr int min_blocks() {
  constexpr bool shared = std::is_same<Where, SharedScratch>::value;
  return sizeof(acc_t) == 8 ? (shared ? 2 : 1) : (shared ? kMinBlocks : 2);
}

// 16 bytes moved as one vector load / store.
#if defined(__CUDACC__)
using Vec16 = uint4;
#else
struct alignas(16) Vec16 {
  unsigned x, y, z, w;
};
#endif
// Vector loads in flight per thread in copy_dense.
constexpr int kCopyUnroll = 4;

// Bytes of scratch for a dense copy of `count` values (the copy lands at the source's
// address mod 16, so up to 15 bytes of slack), rounded up to 16.
__host__ __device__ inline int64_t dense_region_bytes(int64_t count, int64_t elem) {
  return (count * elem + 16 + 15) / 16 * 16;
}

// Copies `count` contiguous values from global `src` into the 16-byte aligned scratch
// `region` (dense_region_bytes long) at the same address mod 16 as `src`, so that every
// whole 16-byte chunk moves as one vector load and one vector store (kCopyUnroll loads in
// flight per thread); the partial chunks at the two ends go element by element, one per
// thread. Returns where src[0] landed. The caller synchronises before reading.
template <typename scalar_t>
__device__ __forceinline__ scalar_t* copy_dense(const scalar_t* __restrict__ src, int count, unsigned char* region) {
  constexpr int per = 16 / static_cast<int>(sizeof(scalar_t));
  static_assert(per >= 1 && per <= 8 && 16 % sizeof(scalar_t) == 0, "copy_dense: 2-, 4-, 8- or 16-byte values");
  const int mis = static_cast<int>(reinterpret_cast<uintptr_t>(src) & 15);  // a multiple of sizeof(scalar_t)
  scalar_t* dst = reinterpret_cast<scalar_t*>(region + mis);
  const int head_full = mis == 0 ? 0 : (16 - mis) / static_cast<int>(sizeof(scalar_t));
  const int head = head_full < count ? head_full : count;
  const int nvec = (count - head) / per;
  const int tail0 = head + nvec * per;
  const int tid = threadIdx.x;
  if (tid < head) dst[tid] = src[tid];
  if (tid < count - tail0) dst[tail0 + tid] = src[tail0 + tid];
  const Vec16* __restrict__ vs = reinterpret_cast<const Vec16*>(src + head);
  Vec16* vd = reinterpret_cast<Vec16*>(dst + head);
  for (int v0 = tid; v0 < nvec; v0 += kThreads * kCopyUnroll) {
    Vec16 r[kCopyUnroll];
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u) {
      if (v0 + u * kThreads < nvec) r[u] = vs[v0 + u * kThreads];
    }
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u) {
      if (v0 + u * kThreads < nvec) vd[v0 + u * kThreads] = r[u];
    }
  }
  return dst;
}

// Per-axis forward taps of the upsample (math::axis_taps for every output index), built
// once per block: w[out][kMaxTaps], then n[out] and idx[out][kMaxTaps] (ints). Only the
// base pointer and `out` are kept (fewer live registers); the rest is derived on use.
template <typename acc_t>
struct AxisTaps {
  acc_t* w = nullptr;
  int out = 0;
  __device__ __forceinline__ int* n() const { return reinterpret_cast<int*>(w + out * math::kMaxTaps); }
  __device__ __forceinline__ int* idx() const { return n() + out; }
};

__host__ __device__ inline int64_t axis_taps_bytes(int64_t out, int64_t acc_size) {
  return (out * (1 + math::kMaxTaps) * 4 + out * math::kMaxTaps * acc_size + 15) / 16 * 16;
}

template <typename acc_t>
__device__ __forceinline__ AxisTaps<acc_t> build_axis_taps(unsigned char* region, int mode, int in, int out) {
  AxisTaps<acc_t> t;
  t.w = reinterpret_cast<acc_t*>(region);
  t.out = out;
  int* tn = t.n();
  int* ti = t.idx();
  for (int d = threadIdx.x; d < out; d += kThreads) {
    int64_t idx[math::kMaxTaps];
    acc_t w[math::kMaxTaps];
    const int n = math::axis_taps<acc_t>(mode, d, in, out, idx, w);
    tn[d] = n;
    for (int k = 0; k < math::kMaxTaps; ++k) {
      ti[d * math::kMaxTaps + k] = k < n ? static_cast<int>(idx[k]) : 0;
      t.w[d * math::kMaxTaps + k] = k < n ? w[k] : acc_t(0);
    }
  }
  return t;
}

// The upsample's adjoint along one axis in CSR form, built once per block: for source
// index s, the (output index, weight) pairs [off[s], off[s+1]) in the order of
// math::adjoint_gather (output index ascending, then tap ascending), so that a sum over
// them adds the same terms in the same order as adjoint_gather and the CPU kernels.
// Layout: w[out * kMaxTaps], d[out * kMaxTaps] (ints), off[in + 1] (ints).
template <typename acc_t>
struct AxisAdjoint {
  acc_t* w = nullptr;
  int out = 0;
  __device__ __forceinline__ int* d() const { return reinterpret_cast<int*>(w + out * math::kMaxTaps); }
  __device__ __forceinline__ int* off() const { return d() + out * math::kMaxTaps; }
};

__host__ __device__ inline int64_t axis_adjoint_bytes(int64_t in, int64_t out, int64_t acc_size) {
  return ((in + 1) * 4 + out * math::kMaxTaps * (4 + acc_size) + 15) / 16 * 16;
}

// Number of (d, k) taps of outputs in adjoint_range(s) that land on s; writes them when d_out.
template <typename acc_t>
__device__ __forceinline__ int adjoint_pairs(int mode, int s, int in, int out, int* d_out, acc_t* w_out) {
  int64_t lo, hi;
  math::adjoint_range(s, in, out, &lo, &hi);
  int c = 0;
  int64_t idx[math::kMaxTaps];
  acc_t w[math::kMaxTaps];
  for (int64_t d = lo; d <= hi; ++d) {
    const int n = math::axis_taps<acc_t>(mode, d, in, out, idx, w);
    for (int k = 0; k < n; ++k) {
      if (idx[k] == s) {
        if (d_out != nullptr) {
          d_out[c] = static_cast<int>(d);
          w_out[c] = w[k];
        }
        ++c;
      }
    }
  }
  return c;
}

// Builds the table (count, prefix sum, fill; two barriers inside, the caller synchronises
// before use). Block-uniform call.
template <typename acc_t>
__device__ __forceinline__ AxisAdjoint<acc_t> build_axis_adjoint(unsigned char* region, int mode, int in, int out) {
  AxisAdjoint<acc_t> t;
  t.w = reinterpret_cast<acc_t*>(region);
  t.out = out;
  int* off = t.off();
  int* dd = t.d();
  for (int s = threadIdx.x; s < in; s += kThreads) off[s + 1] = adjoint_pairs<acc_t>(mode, s, in, out, nullptr, nullptr);
  __syncthreads();
  if (threadIdx.x == 0) {
    off[0] = 0;
    for (int s = 0; s < in; ++s) off[s + 1] += off[s];
  }
  __syncthreads();
  for (int s = threadIdx.x; s < in; s += kThreads) adjoint_pairs<acc_t>(mode, s, in, out, dd + off[s], t.w + off[s]);
  return t;
}

// Sum over the CSR pairs of source s of w * g(d); nearest (all weights 1) skips the product.
template <typename acc_t, typename G>
__device__ __forceinline__ acc_t adjoint_sum(const AxisAdjoint<acc_t>& t, bool unit_weights, int s, const G& g) {
  acc_t acc = acc_t(0);
  const int* off = t.off();
  const int* dd = t.d();
  const int e = off[s + 1];
  if (unit_weights) {
    for (int p = off[s]; p < e; ++p) acc += g(dd[p]);
  } else {
    for (int p = off[s]; p < e; ++p) acc += t.w[p] * g(dd[p]);
  }
  return acc;
}

// Value of Upsample(plane) at (y, x) from the per-axis tables, in the order of the CPU
// kernels' separable evaluation: sum over the row taps (outer) of the weighted sum over the
// column taps (inner). `plane(r, c)` reads the high-resolution plane.
template <typename acc_t, typename P>
__device__ __forceinline__ acc_t upsample_tab(const AxisTaps<acc_t>& ty, const AxisTaps<acc_t>& tx, int y, int x,
                                              const P& plane) {
  const int ny = ty.n()[y], nx = tx.n()[x];
  const int* iy = ty.idx() + y * math::kMaxTaps;
  const int* ix = tx.idx() + x * math::kMaxTaps;
  const acc_t* wy = ty.w + y * math::kMaxTaps;
  const acc_t* wx = tx.w + x * math::kMaxTaps;
  acc_t acc = acc_t(0);
  for (int a = 0; a < ny; ++a) {
    acc_t r = wx[0] * plane(iy[a], ix[0]);
    for (int c = 1; c < nx; ++c) r += wx[c] * plane(iy[a], ix[c]);
    acc = a == 0 ? wy[0] * r : acc + wy[a] * r;
  }
  return acc;
}

}  // namespace cuda
}  // namespace tdsa_fast
