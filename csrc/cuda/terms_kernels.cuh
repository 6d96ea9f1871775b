// The CUDA kernels of mc_terms and tdsa_terms (forward and backward): one block per
// (sample b, class i) group, kThreads threads.
//
// The block loads its group once into scratch (shared memory when it fits):
//   lo   [n][HW]      the group's channels of feat / low, in the storage dtype (a dense
//                     group is copied with 16-byte vector loads, see copy_dense); a dense
//                     group too large to copy (StreamedGroup, p.stream_low) is not copied
//                     but read from global memory in every pass instead
//   hi   [ch][Hh*Wh]  (tdsa) the class's ch = n / xi high channels, likewise
//   gate [ch][HW]     (tdsa) sigmoid(Upsample(hi)), from per-axis tap tables built once
//                     per block
//   ex   [n][HW]      exp(x - max_j) of every element, from the exp-sum pass on, when the
//                     plan keeps it (p.cache_exp: terms_cache_exp), else recomputed
// and recomputes x = lo * gate on the fly, so the gated map exists only in registers.
// Per-channel softmax statistics (max, 1/sum exp): every warp reduces its share of every
// channel, the warps' partials are combined in a fixed order (all warps busy whatever n);
// the per-position cross-channel maxima: one thread per position; g and h: a
// deterministic block reduction. The backward recomputes all of this (it saves nothing
// but the op's inputs), then writes d low and, through the gate, d high with the
// upsample's adjoint from per-axis CSR tables built once per block (rows, then columns):
// no atomics.
//
// Template arguments: the storage and accumulation types, GATED (tdsa_terms), BWD, where
// the scratch lives (SharedScratch / GlobalScratch) and how the group lies in memory
// (DenseGroup / StridedGroup / StreamedGroup); the host picks them (terms_kernels.cu:
// terms_dense(), then the copy's fit).
#pragma once

#include "device_common.cuh"

namespace tdsa_fast {
namespace cuda {
namespace kernels {

__host__ __device__ inline int64_t round16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// A [.., n, H, W] map whose n channels of a group are one contiguous run (sizes of 1 have
// no stride to check).
__host__ __device__ inline bool dense_map(const int64_t* s, int64_t n, int64_t H, int64_t W) {
  return (W == 1 || s[3] == 1) && (H == 1 || s[2] == W) && (n == 1 || s[1] == H * W);
}

// Whether every tensor of the launch (inputs and, in the backward, the gradients written)
// lies dense group by group: the DenseGroup kernels then run.
__host__ __device__ inline bool terms_dense(const TermsParams& p, bool bwd) {
  const int64_t ch = p.gated ? p.cnum / p.xi : 0;
  bool d = dense_map(p.xs, p.cnum, p.H, p.W);
  if (p.gated) d = d && dense_map(p.hs, ch, p.Hh, p.Wh);
  if (bwd) {
    d = d && dense_map(p.gxs, p.cnum, p.H, p.W);
    if (p.gated) d = d && dense_map(p.ghs, ch, p.Hh, p.Wh);
  }
  return d;
}

// Scratch layout in bytes (every region 16-byte aligned), shared by the host planner and
// the kernel; `ss` / `as`: sizes of the storage and accumulation types.
struct TermsLayout {
  int64_t lo, hi, gate, ex, ty, tx, ay, ax, ag, ah, tmp, mx, inv, mk, dot, part, total;
  __host__ __device__ TermsLayout(const TermsParams& p, bool bwd, int64_t ss, int64_t as) {
    const int64_t n = p.cnum, HW = p.H * p.W;
    const int64_t ch = p.gated ? p.cnum / p.xi : 0;
    const bool gb = p.gated && bwd;
    int64_t off = 0;
    auto take = [&](int64_t bytes) {
      const int64_t at = off;
      off += round16(bytes);
      return at;
    };
    const int64_t lo_bytes = p.stream_low ? 0 : dense_region_bytes(n * HW, ss);
    lo = take(lo_bytes);
    hi = take(p.gated ? dense_region_bytes(ch * p.Hh * p.Wh, ss) : 0);
    gate = take(ch * HW * as);
    ex = take(p.cache_exp ? n * HW * as : 0);
    ty = take(p.gated ? axis_taps_bytes(p.H, as) : 0);
    tx = take(p.gated ? axis_taps_bytes(p.W, as) : 0);
    ay = take(gb ? axis_adjoint_bytes(p.Hh, p.H, as) : 0);
    ax = take(gb ? axis_adjoint_bytes(p.Wh, p.W, as) : 0);
    ag = take(bwd ? HW * static_cast<int64_t>(sizeof(WinnerIndex)) : 0);
    ah = take(bwd ? HW * static_cast<int64_t>(sizeof(WinnerIndex)) : 0);
    // the adjoint's row pass (ch x Hh x W) reuses lo, no longer needed then, when it fits
    const int64_t tmp_need = gb ? ch * p.Hh * p.W * as : 0;
    tmp = tmp_need <= lo_bytes ? lo : take(tmp_need);
    mx = take(n * as);
    inv = take(n * as);
    mk = take(n * as);
    dot = take(n * as);
    part = take(n * kWarps * as);
    total = off;
  }
};

// Bytes the SM keeps per resident block beside its shared memory (sm_80 and later).
constexpr int64_t kReservedSmemPerBlock = 1024;

// The plan's choice of p.cache_exp: keep exp(x - max) in scratch when the larger scratch
// (plus the kernel's static shared memory) still fits a block's opt-in and leaves at least
// min(min_blocks, the blocks without it) blocks resident per SM (a 448 px group, or fp32's
// gated backward on a smaller SM, recomputes instead).
inline bool terms_cache_exp(TermsParams p, bool bwd, int64_t ss, int64_t as, int64_t static_bytes, int64_t optin,
                            int64_t sm_bytes, int64_t min_blocks) {
  p.cache_exp = false;
  const int64_t without = TermsLayout(p, bwd, ss, as).total + static_bytes;
  p.cache_exp = true;
  const int64_t with = TermsLayout(p, bwd, ss, as).total + static_bytes;
  if (with > optin) return false;
  const int64_t blocks_with = sm_bytes / (with + kReservedSmemPerBlock);
  const int64_t blocks_without = sm_bytes / (without + kReservedSmemPerBlock);
  return blocks_with >= (blocks_without < min_blocks ? blocks_without : min_blocks);
}

// Blocks per SM the terms kernels are compiled for: min_blocks, but 2 for the streamed
// backward (its group's 64-bit global addresses beside the shared scratch spill at 3 blocks'
// 80 registers; at 448 px its shared memory allows 2 blocks in any case).
template <typename acc_t, class Where, class Layout, bool BWD>
constexpr int terms_min_blocks() {
  constexpr int m = min_blocks<acc_t, Where>();
  return std::is_same<Layout, StreamedGroup>::value && BWD && m > 2 ? 2 : m;
}

template <typename scalar_t, typename acc_t, bool GATED, bool BWD, class Where, class Layout>
__global__ void __launch_bounds__(kThreads, terms_min_blocks<acc_t, Where, Layout, BWD>())
    terms_kernel(const TermsParams p, unsigned char* __restrict__ gws, int64_t ws_stride, int64_t groups) {
  TDSA_DYNAMIC_SMEM(smem_raw);
  TDSA_SHARED acc_t red[kWarps];
  constexpr bool kStream = std::is_same<Layout, StreamedGroup>::value;  // lo read in place (dense)
  constexpr bool kDense = kStream || std::is_same<Layout, DenseGroup>::value;
  unsigned char* const base = scratch_base<Where>(smem_raw, gws, ws_stride);
  const TermsLayout Lt(p, BWD, sizeof(scalar_t), sizeof(acc_t));
  acc_t* const gate = reinterpret_cast<acc_t*>(base + Lt.gate);
  acc_t* const ex = reinterpret_cast<acc_t*>(base + Lt.ex);
  const bool cache = p.cache_exp;  // uniform over the launch
  WinnerIndex* const ag = reinterpret_cast<WinnerIndex*>(base + Lt.ag);
  WinnerIndex* const ah = reinterpret_cast<WinnerIndex*>(base + Lt.ah);
  acc_t* const mx = reinterpret_cast<acc_t*>(base + Lt.mx);
  acc_t* const inv = reinterpret_cast<acc_t*>(base + Lt.inv);
  acc_t* const mk = reinterpret_cast<acc_t*>(base + Lt.mk);
  acc_t* const dot = reinterpret_cast<acc_t*>(base + Lt.dot);
  acc_t* const part = reinterpret_cast<acc_t*>(base + Lt.part);

  // In-group indices fit in int (checked on the host); global offsets use int64 strides.
  const int n = static_cast<int>(p.cnum), H = static_cast<int>(p.H), W = static_cast<int>(p.W), HW = H * W;
  const int xi = GATED ? static_cast<int>(p.xi) : 1;
  const int ch = GATED ? n / xi : n;  // gate planes (GATED), else one "plane" per channel
  const int Hh = static_cast<int>(p.Hh), Wh = static_cast<int>(p.Wh), HWh = Hh * Wh;
  const int64_t S = p.S;
  const scalar_t* X = static_cast<const scalar_t*>(p.x);
  const scalar_t* Hi = static_cast<const scalar_t*>(p.high);
  const acc_t* M = static_cast<const acc_t*>(p.mask);
  // channels_last-like storage (channel stride 1): walk channels fastest for coalescing
  const bool chan_fast = !kDense && p.xs[1] == 1 && n > 1;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const bool identity = math::adjoint_is_identity(p.mode, Hh, Wh, H, W);
  const bool unit_weights = p.mode == math::kNearest;

  AxisTaps<acc_t> ty{}, tx{};
  AxisAdjoint<acc_t> ay{}, ax{};
  if constexpr (GATED) {
    ty = build_axis_taps<acc_t>(base + Lt.ty, p.mode, Hh, H);
    tx = build_axis_taps<acc_t>(base + Lt.tx, p.mode, Wh, W);
    if constexpr (BWD) {
      if (!identity) {
        ay = build_axis_adjoint<acc_t>(base + Lt.ay, p.mode, Hh, H);
        ax = build_axis_adjoint<acc_t>(base + Lt.ax, p.mode, Wh, W);
      }
    }
  }
  // x of channel j at q; G: its gate value (GATED)
  auto xv = [&](const scalar_t* lo, int j, int q, acc_t G) -> acc_t {
    const acc_t l = static_cast<acc_t>(lo[j * HW + q]);
    if constexpr (GATED) {
      return l * G;
    } else {
      (void)G;
      return l;
    }
  };
  auto gate_at = [&](int kk, int q) -> acc_t {
    if constexpr (GATED) {
      return gate[kk * HW + q];
    } else {
      (void)kk;
      (void)q;
      return acc_t(1);
    }
  };
  // exp(x - max_j) of channel j at q (x its value): kept from the exp-sum pass, or recomputed
  auto expd = [&](int j, int q, acc_t x) -> acc_t { return cache ? ex[j * HW + q] : math::exp_(x - mx[j]); };
  // part[j][warp] -> out[j], in warp order (deterministic)
  auto combine = [&](acc_t* out, bool is_max) {
    for (int j = tid; j < n; j += kThreads) {
      acc_t v = part[j * kWarps];
      for (int w = 1; w < kWarps; ++w) v = is_max ? math::nan_max(v, part[j * kWarps + w]) : v + part[j * kWarps + w];
      out[j] = v;
    }
  };

  for (int64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int64_t b = grp / S, i = grp % S;
    const scalar_t* xb = X + b * p.xs[0] + i * n * p.xs[1];
    const scalar_t* lo = reinterpret_cast<const scalar_t*>(base + Lt.lo);
    const scalar_t* hi = reinterpret_cast<const scalar_t*>(base + Lt.hi);
    if constexpr (kDense) {
      if constexpr (kStream) {
        lo = xb;
      } else {
        lo = copy_dense(xb, n * HW, base + Lt.lo);
      }
      if constexpr (GATED) hi = copy_dense(Hi + b * p.hs[0] + i * ch * p.hs[1], ch * HWh, base + Lt.hi);
    } else {
      scalar_t* lw = reinterpret_cast<scalar_t*>(base + Lt.lo);
      for (int e = tid; e < n * HW; e += kThreads) {
        int j, q;
        if (chan_fast) {
          q = e / n;
          j = e - q * n;
        } else {
          j = e / HW;
          q = e - j * HW;
        }
        const int y = q / W, x = q - y * W;
        lw[j * HW + q] = xb[j * p.xs[1] + y * p.xs[2] + x * p.xs[3]];
      }
      if constexpr (GATED) {
        scalar_t* hw = reinterpret_cast<scalar_t*>(base + Lt.hi);
        const scalar_t* hb = Hi + b * p.hs[0] + i * ch * p.hs[1];
        for (int e = tid; e < ch * HWh; e += kThreads) {
          const int kk = e / HWh, r = e - kk * HWh;
          const int y = r / Wh, x = r - y * Wh;
          hw[e] = hb[kk * p.hs[1] + y * p.hs[2] + x * p.hs[3]];
        }
      }
    }
    for (int j = tid; j < n; j += kThreads) mk[j] = M[b * p.mask_sb + i * n + j];
    __syncthreads();

    if constexpr (GATED) {
      // gate planes, one row per warp
      for (int r = warp; r < ch * H; r += kWarps) {
        const int kk = r / H, y = r - kk * H;
        const scalar_t* hk = hi + kk * HWh;
        for (int x = lane; x < W; x += 32) {
          const acc_t u = upsample_tab<acc_t>(ty, tx, y, x, [&](int a, int c) { return static_cast<acc_t>(hk[a * Wh + c]); });
          gate[r * W + x] = math::sigmoid(u);
        }
      }
      __syncthreads();
    }

    // Per-channel softmax statistics: each warp reduces its positions of every channel.
    for (int j = 0; j < n; ++j) {
      const int kk = j / xi;
      acc_t m = math::neg_inf<acc_t>();
      for (int q = tid; q < HW; q += kThreads) m = math::nan_max(m, xv(lo, j, q, gate_at(kk, q)));
      m = warp_nan_max(m);
      if (lane == 0) part[j * kWarps + warp] = m;
    }
    __syncthreads();
    combine(mx, true);
    __syncthreads();
    for (int j = 0; j < n; ++j) {
      const int kk = j / xi;
      const acc_t mj = mx[j];
      acc_t s = acc_t(0);
      for (int q = tid; q < HW; q += kThreads) {
        const acc_t e = math::exp_(xv(lo, j, q, gate_at(kk, q)) - mj);
        if (cache) ex[j * HW + q] = e;
        s += e;
      }
      s = warp_sum(s);
      if (lane == 0) part[j * kWarps + warp] = s;
    }
    __syncthreads();
    for (int j = tid; j < n; j += kThreads) {
      acc_t s = part[j * kWarps];
      for (int w = 1; w < kWarps; ++w) s += part[j * kWarps + w];
      inv[j] = acc_t(1) / s;
    }
    __syncthreads();

    // Per position: cross-channel maxima, lowest index on ties, first NaN wins.
    acc_t gsum = acc_t(0), hsum = acc_t(0);
    for (int q = tid; q < HW; q += kThreads) {
      acc_t gb = acc_t(0), hb = acc_t(0);
      int gi = 0, hix = 0;
      for (int kk = 0; kk < ch; ++kk) {
        const acc_t G = gate_at(kk, q);
        for (int t = 0; t < xi; ++t) {
          const int j = kk * xi + t;
          const acc_t x = xv(lo, j, q, G);
          const acc_t v = mk[j] * x;
          const acc_t s = expd(j, q, x) * inv[j];
          if (j == 0 || math::replaces(v, gb)) {
            gb = v;
            gi = j;
          }
          if (j == 0 || math::replaces(s, hb)) {
            hb = s;
            hix = j;
          }
        }
      }
      if constexpr (BWD) {
        ag[q] = static_cast<WinnerIndex>(gi);
        ah[q] = static_cast<WinnerIndex>(hix);
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
      for (int j = 0; j < n; ++j) {
        const int kk = j / xi;
        const acc_t ij = inv[j];
        acc_t d = acc_t(0);
        for (int q = tid; q < HW; q += kThreads) {
          if (ah[q] == j) d += gh * (expd(j, q, xv(lo, j, q, gate_at(kk, q))) * ij);
        }
        d = warp_sum(d);
        if (lane == 0) part[j * kWarps + warp] = d;
      }
      __syncthreads();
      combine(dot, false);
      __syncthreads();
      auto dxval = [&](int j, int q, acc_t x) -> acc_t {
        const acc_t gpart = ag[q] == j ? gg_hw * mk[j] : acc_t(0);
        const acc_t go = ah[q] == j ? gh : acc_t(0);
        return math::terms_combine(gpart, math::softmax_backward(expd(j, q, x) * inv[j], go, dot[j]));
      };
      scalar_t* gxb = static_cast<scalar_t*>(p.grad_x) + b * p.gxs[0] + i * n * p.gxs[1];
      if constexpr (!GATED) {
        if constexpr (kDense) {
          for (int j = 0; j < n; ++j) {
            for (int q = tid; q < HW; q += kThreads) gxb[j * HW + q] = static_cast<scalar_t>(dxval(j, q, xv(lo, j, q, acc_t(1))));
          }
        } else {
          for (int e = tid; e < n * HW; e += kThreads) {
            int j, q;
            if (chan_fast) {
              q = e / n;
              j = e - q * n;
            } else {
              j = e / HW;
              q = e - j * HW;
            }
            const int y = q / W, x = q - y * W;
            gxb[j * p.gxs[1] + y * p.gxs[2] + x * p.gxs[3]] = static_cast<scalar_t>(dxval(j, q, xv(lo, j, q, acc_t(1))));
          }
        }
      } else {
        // d low of gate plane kk's xi channels at q, and d U there (each (kk, q) independent)
        auto grad_plane_at = [&](int kk, int q) {
          const acc_t G = gate[kk * HW + q];
          int64_t off = 0;
          if constexpr (!kDense) {
            const int y = q / W, x = q - y * W;
            off = y * p.gxs[2] + x * p.gxs[3];
          }
          acc_t dg = acc_t(0);
          for (int t = 0; t < xi; ++t) {
            const int j = kk * xi + t;
            const acc_t l = static_cast<acc_t>(lo[j * HW + q]);
            const acc_t dx = dxval(j, q, l * G);
            const scalar_t v = static_cast<scalar_t>(dx * G);  // d low = d gated * gate
            if constexpr (kDense) {
              gxb[j * HW + q] = v;
            } else {
              gxb[j * p.gxs[1] + off] = v;
            }
            const acc_t dgate = dx * l;
            dg = t == 0 ? dgate : dg + dgate;
          }
          gate[kk * HW + q] = math::sigmoid_backward(dg, G);  // becomes dU, the gradient at the upsampled map
        };
        // channels_last: the n channels at a position stored as one run, as the loads read them
        for_planes_positions(ch, HW, chan_fast, grad_plane_at);
        __syncthreads();
        scalar_t* ghb = static_cast<scalar_t*>(p.grad_high) + b * p.ghs[0] + i * ch * p.ghs[1];
        auto gh_off = [&](int kk, int sy, int sx) -> int64_t {
          if constexpr (kDense) {
            return static_cast<int64_t>(kk) * HWh + sy * Wh + sx;
          } else {
            return kk * p.ghs[1] + sy * p.ghs[2] + sx * p.ghs[3];
          }
        };
        if (identity) {
          for (int r = warp; r < ch * H; r += kWarps) {
            const int kk = r / H, y = r - kk * H;
            for (int x = lane; x < W; x += 32) ghb[gh_off(kk, y, x)] = static_cast<scalar_t>(gate[r * W + x]);
          }
        } else {
          acc_t* tmp = reinterpret_cast<acc_t*>(base + Lt.tmp);
          // rows: tmp[kk][sy][x] = sum over the output rows y whose taps reach source row sy
          for (int r = warp; r < ch * Hh; r += kWarps) {
            const int kk = r / Hh, sy = r - kk * Hh;
            const acc_t* du = gate + kk * HW;
            for (int x = lane; x < W; x += 32) {
              tmp[r * W + x] = adjoint_sum<acc_t>(ay, unit_weights, sy, [&](int y) { return du[y * W + x]; });
            }
          }
          __syncthreads();
          // columns: grad_high[kk][sy][sx]
          for (int r = warp; r < ch * Hh; r += kWarps) {
            const int kk = r / Hh, sy = r - kk * Hh;
            const acc_t* t = tmp + r * W;
            for (int sx = lane; sx < Wh; sx += 32) {
              const acc_t v = adjoint_sum<acc_t>(ax, unit_weights, sx, [&](int x) { return t[x]; });
              ghb[gh_off(kk, sy, sx)] = static_cast<scalar_t>(v);
            }
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
