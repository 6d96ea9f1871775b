// The CUDA kernels of topdown_gate (forward and backward): one block per (sample b, high
// channel k) group, which gates the xi low channels [k*xi, (k+1)*xi). The high plane is
// copied into scratch (16-byte vector loads when dense), the gate plane
// sigmoid(Upsample(high[b, k])) computed once per group from per-axis tap tables built once
// per block; the backward sums d gate over the xi channels per pixel (one thread per
// pixel, fixed order) and applies the upsample's adjoint from per-axis CSR tables (rows,
// then columns): no atomics. Template arguments as terms_kernel's.
#pragma once

#include "device_common.cuh"
#include "terms_kernels.cuh"

namespace tdsa_fast {
namespace cuda {
namespace kernels {

// Whether low's group, the high plane and the outputs written are dense (flat offsets).
__host__ __device__ inline bool gate_dense(const GateParams& p, bool bwd) {
  bool d = dense_map(p.ls, p.xi, p.H, p.W) && dense_map(p.hs, 1, p.Hh, p.Wh);
  if (bwd) {
    d = d && dense_map(p.gos, p.xi, p.H, p.W) && dense_map(p.gls, p.xi, p.H, p.W) && dense_map(p.ghs, 1, p.Hh, p.Wh);
  } else {
    d = d && dense_map(p.os, p.xi, p.H, p.W);
  }
  return d;
}

// Scratch layout in bytes: hi [Hh*Wh] (storage dtype), G [HW] (then dU), tmp [Hh x W]
// (backward), the tap tables and (backward) the adjoint tables.
struct GateLayout {
  int64_t hi, G, tmp, ty, tx, ay, ax, total;
  __host__ __device__ GateLayout(const GateParams& p, bool bwd, int64_t ss, int64_t as) {
    int64_t off = 0;
    auto take = [&](int64_t bytes) {
      const int64_t at = off;
      off += round16(bytes);
      return at;
    };
    hi = take(dense_region_bytes(p.Hh * p.Wh, ss));
    G = take(p.H * p.W * as);
    tmp = take(bwd ? p.Hh * p.W * as : 0);
    ty = take(axis_taps_bytes(p.H, as));
    tx = take(axis_taps_bytes(p.W, as));
    ay = take(bwd ? axis_adjoint_bytes(p.Hh, p.H, as) : 0);
    ax = take(bwd ? axis_adjoint_bytes(p.Wh, p.W, as) : 0);
    total = off;
  }
};

template <typename scalar_t, typename acc_t, bool BWD, class Where, class Layout>
__global__ void __launch_bounds__(kThreads, min_blocks<acc_t, Where>())
    gate_kernel(const GateParams p, unsigned char* __restrict__ gws, int64_t ws_stride, int64_t groups) {
  TDSA_DYNAMIC_SMEM(smem_raw);
  constexpr bool kDense = std::is_same<Layout, DenseGroup>::value;
  unsigned char* const base = scratch_base<Where>(smem_raw, gws, ws_stride);
  const GateLayout Lt(p, BWD, sizeof(scalar_t), sizeof(acc_t));
  const int H = static_cast<int>(p.H), W = static_cast<int>(p.W), HW = H * W;
  const int Hh = static_cast<int>(p.Hh), Wh = static_cast<int>(p.Wh), HWh = Hh * Wh, xi = static_cast<int>(p.xi);
  acc_t* const G = reinterpret_cast<acc_t*>(base + Lt.G);
  acc_t* const tmp = reinterpret_cast<acc_t*>(base + Lt.tmp);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const scalar_t* Lo = static_cast<const scalar_t*>(p.low);
  const scalar_t* Hi = static_cast<const scalar_t*>(p.high);
  const bool identity = math::adjoint_is_identity(p.mode, Hh, Wh, H, W);
  const bool unit_weights = p.mode == math::kNearest;

  const AxisTaps<acc_t> ty = build_axis_taps<acc_t>(base + Lt.ty, p.mode, Hh, H);
  const AxisTaps<acc_t> tx = build_axis_taps<acc_t>(base + Lt.tx, p.mode, Wh, W);
  AxisAdjoint<acc_t> ay{}, ax{};
  if constexpr (BWD) {
    if (!identity) {
      ay = build_axis_adjoint<acc_t>(base + Lt.ay, p.mode, Hh, H);
      ax = build_axis_adjoint<acc_t>(base + Lt.ax, p.mode, Wh, W);
    }
  }
  // offset of (channel t of the group, position q) from the group's first channel, in a
  // low-shaped tensor with strides s
  auto at = [&](const int64_t* s, int t, int q) -> int64_t {
    if constexpr (kDense) {
      return static_cast<int64_t>(t) * HW + q;
    } else {
      const int y = q / W, x = q - y * W;
      return t * s[1] + y * s[2] + x * s[3];
    }
  };

  for (int64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int64_t b = grp / p.Ch, k = grp % p.Ch;
    const scalar_t* plane = Hi + b * p.hs[0] + k * p.hs[1];
    const scalar_t* hi = reinterpret_cast<const scalar_t*>(base + Lt.hi);
    if constexpr (kDense) {
      hi = copy_dense(plane, HWh, base + Lt.hi);
    } else {
      scalar_t* hw = reinterpret_cast<scalar_t*>(base + Lt.hi);
      for (int e = tid; e < HWh; e += kThreads) {
        const int y = e / Wh, x = e - y * Wh;
        hw[e] = plane[y * p.hs[2] + x * p.hs[3]];
      }
    }
    __syncthreads();
    for (int y = warp; y < H; y += kWarps) {
      for (int x = lane; x < W; x += 32) {
        const acc_t u = upsample_tab<acc_t>(ty, tx, y, x, [&](int a, int c) { return static_cast<acc_t>(hi[a * Wh + c]); });
        G[y * W + x] = math::sigmoid(u);
      }
    }
    __syncthreads();
    const int64_t c0 = k * xi;
    if constexpr (!BWD) {
      const scalar_t* lb = Lo + b * p.ls[0] + c0 * p.ls[1];
      scalar_t* ob = static_cast<scalar_t*>(p.out) + b * p.os[0] + c0 * p.os[1];
      auto gated_at = [&](int t, int q) {
        ob[at(p.os, t, q)] = static_cast<scalar_t>(static_cast<acc_t>(lb[at(p.ls, t, q)]) * G[q]);
      };
      for_planes_positions(xi, HW, !kDense && p.ls[1] == 1 && p.os[1] == 1 && xi > 1, gated_at);
    } else {
      const scalar_t* GO = static_cast<const scalar_t*>(p.grad_out) + b * p.gos[0] + c0 * p.gos[1];
      const scalar_t* lb = Lo + b * p.ls[0] + c0 * p.ls[1];
      scalar_t* GL = static_cast<scalar_t*>(p.grad_low) + b * p.gls[0] + c0 * p.gls[1];
      for (int q = tid; q < HW; q += kThreads) {
        const acc_t g = G[q];
        acc_t dg = acc_t(0);
        for (int t = 0; t < xi; ++t) {
          const acc_t go = static_cast<acc_t>(GO[at(p.gos, t, q)]);
          const acc_t l = static_cast<acc_t>(lb[at(p.ls, t, q)]);
          GL[at(p.gls, t, q)] = static_cast<scalar_t>(go * g);
          const acc_t dgate = go * l;
          dg = t == 0 ? dgate : dg + dgate;
        }
        G[q] = math::sigmoid_backward(dg, g);  // dU
      }
      __syncthreads();
      scalar_t* GH = static_cast<scalar_t*>(p.grad_high) + b * p.ghs[0] + k * p.ghs[1];
      auto gh_off = [&](int sy, int sx) -> int64_t {
        if constexpr (kDense) {
          return static_cast<int64_t>(sy) * Wh + sx;
        } else {
          return sy * p.ghs[2] + sx * p.ghs[3];
        }
      };
      if (identity) {
        for (int y = warp; y < H; y += kWarps) {
          for (int x = lane; x < W; x += 32) GH[gh_off(y, x)] = static_cast<scalar_t>(G[y * W + x]);
        }
      } else {
        for (int sy = warp; sy < Hh; sy += kWarps) {
          for (int x = lane; x < W; x += 32) {
            tmp[sy * W + x] = adjoint_sum<acc_t>(ay, unit_weights, sy, [&](int y) { return G[y * W + x]; });
          }
        }
        __syncthreads();
        for (int sy = warp; sy < Hh; sy += kWarps) {
          const acc_t* t = tmp + sy * W;
          for (int sx = lane; sx < Wh; sx += 32) {
            GH[gh_off(sy, sx)] = static_cast<scalar_t>(adjoint_sum<acc_t>(ax, unit_weights, sx, [&](int x) { return t[x]; }));
          }
        }
      }
    }
    __syncthreads();  // the scratch is reused by the next group
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace tdsa_fast
