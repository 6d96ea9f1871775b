// The CUDA kernels of mc_terms and tdsa_terms (forward and backward): one block per
// (sample b, class i) group, kThreads threads.
//
// The block loads its group once into scratch (shared memory when it fits), as acc_t:
//   lo   [n][HW]   the group's channels of feat / low (any strides)
//   gate [ch][HW]  (tdsa) sigmoid(Upsample(high)) for the class's ch = n / xi high channels
// and recomputes x = lo * gate on the fly, so the gated map exists only in registers.
// Per-channel softmax statistics (max, 1/sum exp) come from warp reductions; the
// per-position cross-channel maxima from one thread per position; g and h from a
// deterministic block reduction. The backward recomputes all of this (it saves nothing
// but the op's inputs), then writes d low and, through the gate, d high with the
// upsample's adjoint gathered inside the block (rows, then columns): no atomics.
#pragma once

#include "device_common.cuh"

namespace tdsa_fast {
namespace cuda {
namespace kernels {

// Scratch layout (in acc_t elements) shared by the host planner and the kernel.
struct TermsLayout {
  int64_t n, HW, ch, lo, gate, ag, ah, tmp, mx, inv, mk, dot, total;
  __host__ __device__ TermsLayout(const TermsParams& p, bool bwd) {
    n = p.cnum;
    HW = p.H * p.W;
    ch = p.gated ? p.cnum / p.xi : 0;
    int64_t off = 0;
    lo = off;
    off += n * HW;
    gate = off;
    off += ch * HW;
    ag = off;
    ah = off + (bwd ? HW : 0);
    off += bwd ? 2 * HW : 0;
    // adjoint scratch (rows pass, ch x Hh x W): reuses lo when it fits
    const int64_t tmp_need = (bwd && p.gated) ? ch * p.Hh * p.W : 0;
    if (tmp_need <= n * HW) {
      tmp = lo;
    } else {
      tmp = off;
      off += tmp_need;
    }
    mx = off;
    inv = off + n;
    mk = off + 2 * n;
    dot = off + 3 * n;
    off += 4 * n;
    total = off;
  }
};

template <typename scalar_t, typename acc_t, bool GATED, bool BWD>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    terms_kernel(const TermsParams p, acc_t* __restrict__ gws, int64_t ws_stride, int64_t groups) {
  TDSA_DYNAMIC_SMEM(smem_raw);
  TDSA_SHARED acc_t red[kWarps];
  acc_t* base = gws != nullptr ? gws + static_cast<int64_t>(blockIdx.x) * ws_stride : reinterpret_cast<acc_t*>(smem_raw);
  const TermsLayout Lt(p, BWD);
  acc_t* lo = base + Lt.lo;
  acc_t* gate = base + Lt.gate;
  acc_t* ag = base + Lt.ag;
  acc_t* ah = base + Lt.ah;
  acc_t* tmp = base + Lt.tmp;
  acc_t* mx = base + Lt.mx;
  acc_t* inv = base + Lt.inv;
  acc_t* mk = base + Lt.mk;
  acc_t* dot = base + Lt.dot;

  // In-group indices fit in int (checked on the host); global offsets use int64 strides.
  const int n = static_cast<int>(p.cnum), H = static_cast<int>(p.H), W = static_cast<int>(p.W), HW = H * W;
  const int xi = GATED ? static_cast<int>(p.xi) : 1;
  const int ch = GATED ? n / xi : 0;
  const int Hh = static_cast<int>(p.Hh), Wh = static_cast<int>(p.Wh);
  const int64_t S = p.S;
  const scalar_t* X = static_cast<const scalar_t*>(p.x);
  const scalar_t* Hi = static_cast<const scalar_t*>(p.high);
  const acc_t* M = static_cast<const acc_t*>(p.mask);
  // channels_last-like storage (channel stride 1): walk channels fastest for coalescing
  const bool chan_fast = p.xs[1] == 1 && n > 1;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  auto xval = [&](int j, int q) -> acc_t {
    if constexpr (GATED) {
      return lo[j * HW + q] * gate[(j / xi) * HW + q];
    } else {
      return lo[j * HW + q];
    }
  };
  auto soft = [&](int j, int q) -> acc_t { return math::exp_(xval(j, q) - mx[j]) * inv[j]; };
  auto split = [&](int e, int& j, int& q) {
    if (chan_fast) {
      q = e / n;
      j = e - q * n;
    } else {
      j = e / HW;
      q = e - j * HW;
    }
  };

  for (int64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int64_t b = grp / S, i = grp % S;
    if constexpr (GATED) {
      for (int e = tid; e < ch * HW; e += kThreads) {
        const int kk = e / HW, q = e - kk * HW;
        const int y = q / W, x = q - y * W;
        const scalar_t* plane = Hi + b * p.hs[0] + (i * ch + kk) * p.hs[1];
        gate[e] = math::sigmoid(upsample_at<scalar_t, acc_t>(plane, p.hs[2], p.hs[3], Hh, Wh, H, W, p.mode, y, x));
      }
    }
    const scalar_t* xb = X + b * p.xs[0] + i * n * p.xs[1];
    for (int e = tid; e < n * HW; e += kThreads) {
      int j, q;
      split(e, j, q);
      const int y = q / W, x = q - y * W;
      lo[j * HW + q] = static_cast<acc_t>(xb[j * p.xs[1] + y * p.xs[2] + x * p.xs[3]]);
    }
    for (int j = tid; j < n; j += kThreads) mk[j] = M[b * p.mask_sb + i * n + j];
    __syncthreads();

    // Per-channel softmax statistics: one warp per channel.
    for (int j = warp; j < n; j += kWarps) {
      acc_t m = math::neg_inf<acc_t>();
      for (int q = lane; q < HW; q += 32) m = math::nan_max(m, xval(j, q));
      m = warp_nan_max(m);
      acc_t s = acc_t(0);
      for (int q = lane; q < HW; q += 32) s += math::exp_(xval(j, q) - m);
      s = warp_sum(s);
      if (lane == 0) {
        mx[j] = m;
        inv[j] = acc_t(1) / s;
      }
    }
    __syncthreads();

    // Per position: cross-channel maxima, lowest index on ties, first NaN wins.
    acc_t gsum = acc_t(0), hsum = acc_t(0);
    for (int q = tid; q < HW; q += kThreads) {
      acc_t gb = mk[0] * xval(0, q);
      acc_t hb = soft(0, q);
      int gi = 0, hi = 0;
      for (int j = 1; j < n; ++j) {
        const acc_t v = mk[j] * xval(j, q);
        const acc_t s = soft(j, q);
        if (math::replaces(v, gb)) {
          gb = v;
          gi = j;
        }
        if (math::replaces(s, hb)) {
          hb = s;
          hi = j;
        }
      }
      if constexpr (BWD) {
        ag[q] = static_cast<acc_t>(gi);
        ah[q] = static_cast<acc_t>(hi);
      } else {
        gsum += gb;
        hsum += hb;
      }
    }
    if constexpr (!BWD) {
      gsum = block_sum(gsum, red);
      hsum = block_sum(hsum, red);
      if (tid == 0) {
        static_cast<acc_t*>(p.g)[grp] = gsum / static_cast<acc_t>(HW);
        static_cast<acc_t*>(p.h)[grp] = hsum;
      }
    } else {
      __syncthreads();
      const acc_t gg = static_cast<const acc_t*>(p.grad_g)[grp];
      const acc_t gh = static_cast<const acc_t*>(p.grad_h)[grp];
      const acc_t gg_hw = gg / static_cast<acc_t>(HW);
      // dot_j = sum_p go_p s_{j,p}, go = grad_h where channel j wins position p.
      for (int j = warp; j < n; j += kWarps) {
        acc_t d = acc_t(0);
        for (int q = lane; q < HW; q += 32) {
          if (ah[q] == static_cast<acc_t>(j)) d += gh * soft(j, q);
        }
        d = warp_sum(d);
        if (lane == 0) dot[j] = d;
      }
      __syncthreads();
      auto dxval = [&](int j, int q) -> acc_t {
        const acc_t jj = static_cast<acc_t>(j);
        const acc_t gpart = ag[q] == jj ? gg_hw * mk[j] : acc_t(0);
        const acc_t go = ah[q] == jj ? gh : acc_t(0);
        return math::terms_combine(gpart, math::softmax_backward(soft(j, q), go, dot[j]));
      };
      scalar_t* gxb = static_cast<scalar_t*>(p.grad_x) + b * p.gxs[0] + i * n * p.gxs[1];
      if constexpr (!GATED) {
        for (int e = tid; e < n * HW; e += kThreads) {
          int j, q;
          split(e, j, q);
          const int y = q / W, x = q - y * W;
          gxb[j * p.gxs[1] + y * p.gxs[2] + x * p.gxs[3]] = static_cast<scalar_t>(dxval(j, q));
        }
      } else {
        for (int e = tid; e < ch * HW; e += kThreads) {
          const int kk = e / HW, q = e - kk * HW;
          const int y = q / W, x = q - y * W;
          const acc_t G = gate[e];
          acc_t dg = acc_t(0);
          for (int t = 0; t < xi; ++t) {
            const int j = kk * xi + t;
            const acc_t dx = dxval(j, q);
            gxb[j * p.gxs[1] + y * p.gxs[2] + x * p.gxs[3]] = static_cast<scalar_t>(dx * G);  // d low = d gated * gate
            const acc_t dgate = dx * lo[j * HW + q];
            dg = t == 0 ? dgate : dg + dgate;
          }
          gate[e] = math::sigmoid_backward(dg, G);  // becomes dU, the gradient at the upsampled map
        }
        __syncthreads();
        scalar_t* ghb = static_cast<scalar_t*>(p.grad_high) + b * p.ghs[0] + i * ch * p.ghs[1];
        if (math::adjoint_is_identity(p.mode, Hh, Wh, H, W)) {
          for (int e = tid; e < ch * HW; e += kThreads) {
            const int kk = e / HW, q = e - kk * HW;
            const int y = q / W, x = q - y * W;
            ghb[kk * p.ghs[1] + y * p.ghs[2] + x * p.ghs[3]] = static_cast<scalar_t>(gate[e]);
          }
        } else {
          // rows: tmp[kk][sy][x] = sum over the output rows y whose taps reach source row sy
          for (int e = tid; e < ch * Hh * W; e += kThreads) {
            const int kk = e / (Hh * W), r = e - kk * (Hh * W);
            const int sy = r / W, x = r - sy * W;
            const acc_t* du = gate + kk * HW + x;
            tmp[e] = math::adjoint_gather<acc_t>(p.mode, sy, Hh, H, [&](int64_t y) { return du[y * W]; });
          }
          __syncthreads();
          // columns: grad_high[kk][sy][sx]
          for (int e = tid; e < ch * Hh * Wh; e += kThreads) {
            const int kk = e / (Hh * Wh), r = e - kk * (Hh * Wh);
            const int sy = r / Wh, sx = r - sy * Wh;
            const acc_t* t = tmp + (kk * Hh + sy) * W;
            const acc_t v = math::adjoint_gather<acc_t>(p.mode, sx, Wh, W, [&](int64_t x) { return t[x]; });
            ghb[kk * p.ghs[1] + sy * p.ghs[2] + sx * p.ghs[3]] = static_cast<scalar_t>(v);
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
