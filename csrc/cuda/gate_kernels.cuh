// The CUDA kernels of topdown_gate (forward and backward): one block per (sample b, high
// channel k) group, which gates the xi low channels [k*xi, (k+1)*xi). The gate plane
// sigmoid(Upsample(high[b, k])) is computed once per block into scratch; the backward
// sums d gate over the xi channels per pixel (one thread per pixel, fixed order) and
// applies the upsample's adjoint inside the block (rows, then columns): no atomics.
#pragma once

#include "device_common.cuh"

namespace tdsa_fast {
namespace cuda {
namespace kernels {

// Scratch (acc_t elements): G [HW] (then dU), tmp [Hh x W] (backward).
__host__ __device__ inline int64_t gate_scratch(const GateParams& p, bool bwd) { return p.H * p.W + (bwd ? p.Hh * p.W : 0); }

template <typename scalar_t, typename acc_t, bool BWD>
__global__ void __launch_bounds__(kThreads)
    gate_kernel(const GateParams p, acc_t* __restrict__ gws, int64_t ws_stride, int64_t groups) {
  TDSA_DYNAMIC_SMEM(smem_raw);
  acc_t* base = gws != nullptr ? gws + static_cast<int64_t>(blockIdx.x) * ws_stride : reinterpret_cast<acc_t*>(smem_raw);
  const int H = static_cast<int>(p.H), W = static_cast<int>(p.W), HW = H * W;
  const int Hh = static_cast<int>(p.Hh), Wh = static_cast<int>(p.Wh), xi = static_cast<int>(p.xi);
  acc_t* G = base;
  acc_t* tmp = base + HW;
  const int tid = threadIdx.x;
  const scalar_t* Lo = static_cast<const scalar_t*>(p.low);
  const scalar_t* Hi = static_cast<const scalar_t*>(p.high);
  for (int64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int64_t b = grp / p.Ch, k = grp % p.Ch;
    const scalar_t* plane = Hi + b * p.hs[0] + k * p.hs[1];
    for (int q = tid; q < HW; q += kThreads) {
      const int y = q / W, x = q - y * W;
      G[q] = math::sigmoid(upsample_at<scalar_t, acc_t>(plane, p.hs[2], p.hs[3], Hh, Wh, H, W, p.mode, y, x));
    }
    __syncthreads();
    const int64_t c0 = k * xi;
    if constexpr (!BWD) {
      scalar_t* out = static_cast<scalar_t*>(p.out);
      for (int e = tid; e < xi * HW; e += kThreads) {
        const int t = e / HW, q = e - t * HW;
        const int y = q / W, x = q - y * W;
        const acc_t l = static_cast<acc_t>(Lo[b * p.ls[0] + (c0 + t) * p.ls[1] + y * p.ls[2] + x * p.ls[3]]);
        out[b * p.os[0] + (c0 + t) * p.os[1] + y * p.os[2] + x * p.os[3]] = static_cast<scalar_t>(l * G[q]);
      }
    } else {
      const scalar_t* GO = static_cast<const scalar_t*>(p.grad_out);
      scalar_t* GL = static_cast<scalar_t*>(p.grad_low);
      for (int q = tid; q < HW; q += kThreads) {
        const int y = q / W, x = q - y * W;
        const acc_t g = G[q];
        acc_t dg = acc_t(0);
        for (int t = 0; t < xi; ++t) {
          const int64_t c = c0 + t;
          const acc_t go = static_cast<acc_t>(GO[b * p.gos[0] + c * p.gos[1] + y * p.gos[2] + x * p.gos[3]]);
          const acc_t l = static_cast<acc_t>(Lo[b * p.ls[0] + c * p.ls[1] + y * p.ls[2] + x * p.ls[3]]);
          GL[b * p.gls[0] + c * p.gls[1] + y * p.gls[2] + x * p.gls[3]] = static_cast<scalar_t>(go * g);
          const acc_t dgate = go * l;
          dg = t == 0 ? dgate : dg + dgate;
        }
        G[q] = math::sigmoid_backward(dg, g);  // dU
      }
      __syncthreads();
      scalar_t* GH = static_cast<scalar_t*>(p.grad_high) + b * p.ghs[0] + k * p.ghs[1];
      if (math::adjoint_is_identity(p.mode, Hh, Wh, H, W)) {
        for (int q = tid; q < HW; q += kThreads) {
          const int y = q / W, x = q - y * W;
          GH[y * p.ghs[2] + x * p.ghs[3]] = static_cast<scalar_t>(G[q]);
        }
      } else {
        for (int e = tid; e < Hh * W; e += kThreads) {
          const int sy = e / W, x = e - sy * W;
          const acc_t* du = G + x;
          tmp[e] = math::adjoint_gather<acc_t>(p.mode, sy, Hh, H, [&](int64_t y) { return du[y * W]; });
        }
        __syncthreads();
        for (int e = tid; e < Hh * Wh; e += kThreads) {
          const int sy = e / Wh, sx = e - sy * Wh;
          const acc_t* t = tmp + sy * W;
          const acc_t v = math::adjoint_gather<acc_t>(p.mode, sx, Wh, W, [&](int64_t x) { return t[x]; });
          GH[sy * p.ghs[2] + sx * p.ghs[3]] = static_cast<scalar_t>(v);
        }
      }
    }
    __syncthreads();  // the scratch is reused by the next group
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace tdsa_fast
