// The CPU kernels. This file is included by kernels_default.cpp, kernels_avx2.cpp and
// kernels_avx512.cpp, each of which defines CPU_CAPABILITY (DEFAULT / AVX2 / AVX512) first,
// so at::vec::Vectorized and everything below live in a namespace of their own per
// instruction set (no ODR clash).
//
// One task = one group: (sample b, class i) for the terms, (sample b, high channel k) for
// the gate. A task reads its group's channels in place when they are float (double) planes
// that are each contiguous, else copies them into a float (double for float64) scratch
// (reading any strides: NCHW, channels_last or other views, no full-tensor copy), does
// every pass on cache-resident data with Vectorized<acc_t>, and writes only its own
// outputs: nothing is shared between tasks, so no atomics and bitwise-reproducible.
//
// No header guard on purpose: it must not be included twice in one translation unit.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../tdsa_math.h"
#include "cpu_kernels.h"

namespace tdsa_fast {
namespace cpu {
namespace CPU_CAPABILITY {

namespace {

template <typename acc_t>
using Vec = at::vec::Vectorized<acc_t>;

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// f(p, cnt) for p = 0, L, 2L, ... < n, cnt = min(L, n - p).
template <int64_t L, typename F>
inline void for_vec(int64_t n, const F& f) {
  for (int64_t p = 0; p < n; p += L) f(p, std::min<int64_t>(L, n - p));
}

// The lanes [0, cnt) of v, zeros elsewhere (for sums over a partial last vector).
template <typename acc_t>
inline Vec<acc_t> head(const Vec<acc_t>& v, int64_t cnt) {
  return cnt == Vec<acc_t>::size() ? v : Vec<acc_t>::set(Vec<acc_t>(acc_t(0)), v, cnt);
}

template <typename acc_t>
inline acc_t lane_sum(const Vec<acc_t>& v) {
  alignas(64) acc_t tmp[Vec<acc_t>::size()];
  v.store(tmp);
  acc_t s = acc_t(0);
  for (int64_t l = 0; l < Vec<acc_t>::size(); ++l) s += tmp[l];
  return s;
}

// exp for the softmax terms: at::vec's exp_u20 for float (a degree-5 polynomial, about 2x
// cheaper than Sleef's exp), the accurate exp for float64. Its arguments are x - max with a
// finite max (so <= 0 or -inf, for which exp_u20 gives 0); a channel whose max is not finite
// (a NaN, a +inf, or all -inf) has a NaN softmax everywhere, as torch.softmax, which the
// caller produces by setting that channel's 1 / sum to NaN (exp_u20 would map NaN to a
// finite value; the sigmoid keeps the accurate exp, its argument can be +inf).
inline Vec<float> softmax_exp(const Vec<float>& x) { return x.exp_u20(); }
inline Vec<double> softmax_exp(const Vec<double>& x) { return x.exp(); }

// The vector form of math::replaces (v takes over from best: v > best, or v is NaN and
// best is not), as a lane mask.
template <typename acc_t>
inline Vec<acc_t> replaces(const Vec<acc_t>& v, const Vec<acc_t>& best) {
  return (v > best) | (v.isnan() & (best == best));
}
#if defined(CPU_CAPABILITY_AVX2)
// Same rule in three instructions: !(v <= best) is "v > best or either is NaN", and
// best == best (ordered) excludes a NaN best.
template <>
inline Vec<float> replaces<float>(const Vec<float>& v, const Vec<float>& best) {
  return _mm256_and_ps(_mm256_cmp_ps(v, best, _CMP_NLE_UQ), _mm256_cmp_ps(best, best, _CMP_ORD_Q));
}
template <>
inline Vec<double> replaces<double>(const Vec<double>& v, const Vec<double>& best) {
  return _mm256_and_pd(_mm256_cmp_pd(v, best, _CMP_NLE_UQ), _mm256_cmp_pd(best, best, _CMP_ORD_Q));
}
#endif

// Whether an H x W plane with strides (sH, sW) is one contiguous run.
inline bool dense_plane(int64_t sH, int64_t sW, int64_t H, int64_t W) { return sW == 1 && (sH == W || H == 1); }

// Asks for the cache line at p to be brought into cache ahead of its use (the next group's
// planes, a line or two per vector of a compute pass: the one read of the feature map
// overlaps the computation instead of stalling the next group's first pass).
inline void prefetch_line(const void* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p, 0, 2);
#else
  (void)p;
#endif
}

// The vector at p with only its first cnt lanes read (a plane read in place has no
// padding after its last vector), and the store of only its first cnt lanes.
template <typename acc_t>
inline Vec<acc_t> load_n(const acc_t* p, int64_t cnt) {
  return cnt == Vec<acc_t>::size() ? Vec<acc_t>::loadu(p) : Vec<acc_t>::loadu(p, cnt);
}
template <typename acc_t>
inline void store_n(const Vec<acc_t>& v, acc_t* p, int64_t cnt) {
  if (cnt == Vec<acc_t>::size()) {
    v.store(p);
  } else {
    v.store(p, cnt);
  }
}

// One H x W plane of a strided 4-D tensor into a dense acc_t buffer (row stride W).
template <typename scalar_t, typename acc_t>
inline void load_plane(const scalar_t* base, int64_t sH, int64_t sW, int64_t H, int64_t W, acc_t* dst) {
  if (dense_plane(sH, sW, H, W)) {
    at::vec::convert(base, dst, H * W);
    return;
  }
  for (int64_t y = 0; y < H; ++y) {
    const scalar_t* row = base + y * sH;
    acc_t* out = dst + y * W;
    for (int64_t x = 0; x < W; ++x) out[x] = static_cast<acc_t>(row[x * sW]);
  }
}

template <typename scalar_t, typename acc_t>
inline void store_plane(const acc_t* src, int64_t H, int64_t W, scalar_t* base, int64_t sH, int64_t sW) {
  if (dense_plane(sH, sW, H, W)) {
    at::vec::convert(src, base, H * W);
    return;
  }
  for (int64_t y = 0; y < H; ++y) {
    scalar_t* row = base + y * sH;
    const acc_t* in = src + y * W;
    for (int64_t x = 0; x < W; ++x) row[x * sW] = static_cast<scalar_t>(in[x]);
  }
}

// Gate plane G = sigmoid(Upsample(high plane)) of size H x W (row stride W), separable:
// first along W (tmp: Hh x W), then along H; the same sums, in the same order, as the
// CUDA kernel's per-pixel evaluation (rows of source taps inner, row taps outer).
// Nearest: every output is a copy of one source value (weight 1), so the sigmoid is taken
// at the source resolution and then gathered: the same values, (H*W)/(Hh*Wh) times fewer
// exps. tmp must hold max(Hh * W, Hh * Wh) values.
template <typename scalar_t, typename acc_t>
void gate_plane(const scalar_t* hb, int64_t hsH, int64_t hsW, int64_t Hh, int64_t Wh, int64_t H, int64_t W,
                const GateTables& tb, acc_t* tmp, acc_t* G) {
  using V = Vec<acc_t>;
  constexpr int64_t L = V::size();
  const AxisTable& R = tb.rows;
  const AxisTable& Cc = tb.cols;
  if (tb.mode == math::kNearest) {
    load_plane<scalar_t, acc_t>(hb, hsH, hsW, Hh, Wh, tmp);
    for_vec<L>(Hh * Wh, [&](int64_t q, int64_t cnt) {
      math::sigmoid_of_exp(V::loadu(tmp + q, cnt).neg().exp()).store(tmp + q, cnt);
    });
    int64_t prev = -1;
    for (int64_t y = 0; y < H; ++y) {
      acc_t* out = G + y * W;
      const int64_t sy = R.idx[y];
      if (sy == prev) {  // rows of the same source row are equal: copy the previous one
        std::copy(out - W, out, out);
        continue;
      }
      const acc_t* src = tmp + sy * Wh;
      for (int64_t x = 0; x < W; ++x) out[x] = src[Cc.idx[x]];
      prev = sy;
    }
    return;
  }
  const acc_t* cw = static_cast<const acc_t*>(Cc.w);
  const acc_t* rw = static_cast<const acc_t*>(R.w);
  const int nc = Cc.ntaps, nr = R.ntaps;
  for (int64_t sy = 0; sy < Hh; ++sy) {
    const scalar_t* row = hb + sy * hsH;
    acc_t* t = tmp + sy * W;
    for (int64_t x = 0; x < W; ++x) {
      const int64_t* ix = Cc.idx + x * nc;
      const acc_t* wx = cw + x * nc;
      acc_t acc = wx[0] * static_cast<acc_t>(row[ix[0] * hsW]);
      for (int k = 1; k < nc; ++k) acc += wx[k] * static_cast<acc_t>(row[ix[k] * hsW]);
      t[x] = acc;
    }
  }
  for (int64_t y = 0; y < H; ++y) {
    const int64_t* iy = R.idx + y * nr;
    const acc_t* wy = rw + y * nr;
    acc_t* out = G + y * W;
    for_vec<L>(W, [&](int64_t x, int64_t cnt) {
      V acc = V(wy[0]) * V::loadu(tmp + iy[0] * W + x, cnt);
      for (int k = 1; k < nr; ++k) acc = acc + V(wy[k]) * V::loadu(tmp + iy[k] * W + x, cnt);
      math::sigmoid_of_exp(acc.neg().exp()).store(out + x, cnt);
    });
  }
}

// Adjoint of the upsample for one plane: dU (H x W, row stride W) -> out (Hh x Wh), via
// tmp (Hh x W): first along H (vectorised over the W contiguous values), then along W.
// Each output sums its CSR terms in the order of math::adjoint_gather (output index
// ascending, then tap ascending), which the CUDA kernels use in the same two passes.
template <typename acc_t>
void adjoint_plane(const acc_t* dU, int64_t H, int64_t W, int64_t Hh, int64_t Wh, const GateTables& tb,
                   acc_t* tmp, acc_t* out) {
  using V = Vec<acc_t>;
  constexpr int64_t L = V::size();
  (void)H;
  if (tb.adjoint_identity) {
    std::copy(dU, dU + H * W, out);
    return;
  }
  const AxisTable& R = tb.rows;
  const acc_t* raw = static_cast<const acc_t*>(R.aw);
  for (int64_t sy = 0; sy < Hh; ++sy) {
    acc_t* t = tmp + sy * W;
    for_vec<L>(W, [&](int64_t x, int64_t cnt) {
      V acc = V(acc_t(0));
      for (int64_t e = R.aptr[sy]; e < R.aptr[sy + 1]; ++e) acc = acc + V(raw[e]) * V::loadu(dU + R.adst[e] * W + x, cnt);
      acc.store(t + x, cnt);
    });
  }
  const AxisTable& Cc = tb.cols;
  const acc_t* caw = static_cast<const acc_t*>(Cc.aw);
  for (int64_t sy = 0; sy < Hh; ++sy) {
    const acc_t* t = tmp + sy * W;
    acc_t* o = out + sy * Wh;
    for (int64_t sx = 0; sx < Wh; ++sx) {
      acc_t acc = acc_t(0);
      for (int64_t e = Cc.aptr[sx]; e < Cc.aptr[sx + 1]; ++e) acc += caw[e] * t[Cc.adst[e]];
      o[sx] = acc;
    }
  }
}

// mc_terms (GATED = false) / tdsa_terms (GATED = true), forward (BWD = false) or backward.
// float / double planes that are each contiguous are read (x) and written (grad_x) in place;
// other dtypes and layouts go through the scratch planes `lo` / `ex` and load_plane /
// store_plane. Either way the arithmetic, and so every result, is the same.
template <typename scalar_t, bool GATED, bool BWD>
void terms_impl(const TermsParams& p, const GateTables& tb, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  constexpr int64_t L = V::size();
  constexpr bool kInPlace = std::is_same<scalar_t, acc_t>::value;
  const int64_t H = p.H, W = p.W, HW = H * W, HWp = round_up(HW, L);
  const int64_t n = p.cnum, S = p.S;
  const int64_t xi = GATED ? p.xi : 1;
  const int64_t ch = GATED ? n / xi : 0;  // high channels per class
  const int64_t Hh = p.Hh, Wh = p.Wh;
  const scalar_t* X = static_cast<const scalar_t*>(p.x);
  const scalar_t* Hi = static_cast<const scalar_t*>(p.high);
  const acc_t* M = static_cast<const acc_t*>(p.mask);
  // contiguous planes of x: prefetched (any dtype), and read in place (float / double)
  const bool x_dense = dense_plane(p.xs[2], p.xs[3], H, W);
  const bool x_in_place = kInPlace && x_dense;
  const bool gx_in_place = kInPlace && BWD && dense_plane(p.gxs[2], p.gxs[3], H, W);

  const int64_t tmp_size = GATED ? Hh * std::max(W, Wh) : 0;
  std::vector<acc_t> buf(static_cast<size_t>(
      (x_in_place ? 0 : n * HWp)         // lo: the group's x (feat) / low values
      + (GATED ? n * HWp : 0)            // xs: gated values low * gate
      + n * HWp                          // ex: exp(x - max) (and the gradient planes when
                                         //     grad_x is not written in place)
      + ch * HWp                         // gate planes
      + (BWD && GATED ? ch * HWp : 0)    // dG planes
      + tmp_size                         // separable upsample / adjoint scratch
      + (BWD && GATED ? Hh * Wh : 0)     // one grad_high plane
      + (BWD ? 2 * HWp : 0)              // ag, ah: argmax channel of g and h per position
      + 4 * n));                         // mx, inv, mk, dot
  acc_t* cur = buf.data();
  auto take = [&](int64_t count) {
    acc_t* r = cur;
    cur += count;
    return r;
  };
  acc_t* lo = take(x_in_place ? 0 : n * HWp);
  acc_t* xs = take(GATED ? n * HWp : 0);
  acc_t* ex = take(n * HWp);
  acc_t* gate = take(ch * HWp);
  acc_t* dG = take(BWD && GATED ? ch * HWp : 0);
  acc_t* tmp = take(tmp_size);
  acc_t* ghp = take(BWD && GATED ? Hh * Wh : 0);
  acc_t* ag = take(BWD ? HWp : 0);
  acc_t* ah = take(BWD ? HWp : 0);
  acc_t* mx = take(n);
  acc_t* inv = take(n);
  acc_t* mk = take(n);
  acc_t* dot = take(n);
  // per channel: its x values (in place or in `lo`) and the values the maxima compare
  // (x itself, or the gated values in `xs`)
  std::vector<const acc_t*> xp(static_cast<size_t>(n)), vp(static_cast<size_t>(n));
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();

  for (int64_t grp = begin; grp < end; ++grp) {
    const int64_t b = grp / S, i = grp % S;
    if constexpr (GATED) {
      for (int64_t kk = 0; kk < ch; ++kk) {
        const int64_t k = i * ch + kk;
        gate_plane<scalar_t, acc_t>(Hi + b * p.hs[0] + k * p.hs[1], p.hs[2], p.hs[3], Hh, Wh, H, W, tb, tmp,
                                    gate + kk * HWp);
      }
    }
    // Load, gate, and the per-channel softmax statistics (max-subtracted, as torch.softmax).
    bool group_finite = true;
    const char* next = nullptr;  // the next group's first plane, prefetched during the exp pass
    if (x_dense && grp + 1 < end) {
      const int64_t nb = (grp + 1) / S, ni = (grp + 1) % S;
      next = reinterpret_cast<const char*>(X + nb * p.xs[0] + ni * n * p.xs[1]);
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = i * n + j;
      const scalar_t* xplane = X + b * p.xs[0] + c * p.xs[1];
      const acc_t* xj;
      if (x_in_place) {
        xj = reinterpret_cast<const acc_t*>(xplane);
      } else {
        load_plane<scalar_t, acc_t>(xplane, p.xs[2], p.xs[3], H, W, lo + j * HWp);
        xj = lo + j * HWp;
      }
      xp[j] = xj;
      mk[j] = M[b * p.mask_sb + c];
      acc_t* gj = xs + j * HWp;
      const acc_t* gk = gate + (j / xi) * HWp;
      V vmax(neg_inf), vmin(-neg_inf);
      for_vec<L>(HW, [&](int64_t q, int64_t cnt) {
        V v = load_n(xj + q, cnt);
        if constexpr (GATED) {
          v = v * V::loadu(gk + q);
          v.store(gj + q);
        }
        vmax = at::vec::maximum(vmax, cnt == L ? v : V::set(V(neg_inf), v, cnt));
        vmin = at::vec::minimum(vmin, cnt == L ? v : V::set(V(-neg_inf), v, cnt));
      });
      const acc_t* vj = GATED ? gj : xj;
      vp[j] = vj;
      alignas(64) acc_t lanes[L];
      vmax.store(lanes);
      acc_t m = lanes[0];
      for (int64_t l = 1; l < L; ++l) m = math::nan_max(m, lanes[l]);
      vmin.store(lanes);
      acc_t lowest = lanes[0];
      for (int64_t l = 1; l < L; ++l) lowest = std::min(lowest, lanes[l]);
      mx[j] = m;
      const bool finite_max = std::isfinite(m);
      // every x and mask value of the group finite: no NaN anywhere in the comparisons below
      group_finite = group_finite && finite_max && lowest > neg_inf && std::isfinite(mk[j]);
      V vsum(acc_t(0));
      acc_t* ej = ex + j * HWp;
      const char* next_j = next != nullptr ? next + j * p.xs[1] * static_cast<int64_t>(sizeof(scalar_t)) : nullptr;
      for_vec<L>(HW, [&](int64_t q, int64_t cnt) {
        const V e = softmax_exp(load_n(vj + q, cnt) - V(m));
        e.store(ej + q);
        vsum = vsum + head(e, cnt);
        if (next_j != nullptr) prefetch_line(next_j + q * static_cast<int64_t>(sizeof(scalar_t)));
      });
      inv[j] = finite_max ? acc_t(1) / lane_sum(vsum) : std::numeric_limits<acc_t>::quiet_NaN();
    }

    // Per position: the cross-channel maxima (lowest index wins ties, first NaN wins).
    V gsum(acc_t(0)), hsum(acc_t(0));
    // FINITE: no NaN can occur, so "replaces" is a plain greater-than (one instruction).
    auto per_position = [&](auto finite_tag) {
      constexpr bool FINITE = decltype(finite_tag)::value;
      auto takes_over = [](const V& v, const V& best) {
        if constexpr (FINITE) {
          return v > best;
        } else {
          return replaces(v, best);
        }
      };
      for_vec<L>(HW, [&](int64_t q, int64_t cnt) {
        V gb = V(mk[0]) * load_n(vp[0] + q, cnt);
        V hb = V::loadu(ex + q) * V(inv[0]);
        V gi(acc_t(0)), hi(acc_t(0));
        for (int64_t j = 1; j < n; ++j) {
          const V v = V(mk[j]) * load_n(vp[j] + q, cnt);
          const V s = V::loadu(ex + j * HWp + q) * V(inv[j]);
          const V ug = takes_over(v, gb);
          const V uh = takes_over(s, hb);
          gb = V::blendv(gb, v, ug);
          hb = V::blendv(hb, s, uh);
          if constexpr (BWD) {
            gi = V::blendv(gi, V(static_cast<acc_t>(j)), ug);
            hi = V::blendv(hi, V(static_cast<acc_t>(j)), uh);
          }
        }
        if constexpr (BWD) {
          gi.store(ag + q);
          hi.store(ah + q);
        } else {
          gsum = gsum + head(gb, cnt);
          hsum = hsum + head(hb, cnt);
        }
      });
    };
    if (group_finite) {
      per_position(std::true_type{});
    } else {
      per_position(std::false_type{});
    }
    if constexpr (!BWD) {
      static_cast<acc_t*>(p.g)[grp] = lane_sum(gsum) / static_cast<acc_t>(HW);
      static_cast<acc_t*>(p.h)[grp] = lane_sum(hsum);
      continue;
    } else {
      const acc_t gg = static_cast<const acc_t*>(p.grad_g)[grp];
      const acc_t gh = static_cast<const acc_t*>(p.grad_h)[grp];
      const acc_t gg_hw = gg / static_cast<acc_t>(HW);  // mean's backward
      for (int64_t j = 0; j < n; ++j) {
        const V jv(static_cast<acc_t>(j));
        const V invv(inv[j]);
        acc_t* ej = ex + j * HWp;
        // dot_j = sum_p go_p s_p with go = grad_h where channel j wins p = grad_h * T_j,
        // T_j summed in one partial sum per lane (positions q = lane mod L, in order).
        V tsum(acc_t(0));
        for_vec<L>(HW, [&](int64_t q, int64_t cnt) {
          const V s = V::loadu(ej + q) * invv;
          tsum = tsum + head(V::blendv(V(acc_t(0)), s, V::loadu(ah + q) == jv), cnt);
        });
        dot[j] = gh * lane_sum(tsum);
        const V gmask(gg_hw * mk[j]);
        const V ghv(gh), dotv(dot[j]);
        const int64_t c = i * n + j;
        scalar_t* gplane = static_cast<scalar_t*>(p.grad_x) + b * p.gxs[0] + c * p.gxs[1];
        // this channel's input gradient: in place, or over its exp values in `ex`
        acc_t* out = gx_in_place ? reinterpret_cast<acc_t*>(gplane) : ej;
        const acc_t* xj = xp[j];
        const int64_t kk = j / xi;
        const acc_t* gk = gate + kk * HWp;
        acc_t* dgk = dG + kk * HWp;
        const bool first_of_block = (j % xi) == 0;
        for_vec<L>(HW, [&](int64_t q, int64_t cnt) {
          const V s = V::loadu(ej + q) * invv;
          const V gpart = V::blendv(V(acc_t(0)), gmask, V::loadu(ag + q) == jv);
          const V go = V::blendv(V(acc_t(0)), ghv, V::loadu(ah + q) == jv);
          const V dx = math::terms_combine(gpart, math::softmax_backward(s, go, dotv));
          if constexpr (GATED) {
            const V gv = V::loadu(gk + q);
            store_n(dx * gv, out + q, cnt);  // d low = d gated * gate
            const V dgate = dx * load_n(xj + q, cnt);
            (first_of_block ? dgate : V::loadu(dgk + q) + dgate).store(dgk + q);
          } else {
            store_n(dx, out + q, cnt);
          }
        });
        if (!gx_in_place) store_plane<scalar_t, acc_t>(ej, H, W, gplane, p.gxs[2], p.gxs[3]);
      }
      if constexpr (GATED) {
        for (int64_t kk = 0; kk < ch; ++kk) {
          acc_t* dgk = dG + kk * HWp;
          const acc_t* gk = gate + kk * HWp;
          for_vec<L>(HW, [&](int64_t q, int64_t cnt) {
            math::sigmoid_backward(V::loadu(dgk + q), V::loadu(gk + q)).store(dgk + q);
          });
          adjoint_plane<acc_t>(dgk, H, W, Hh, Wh, tb, tmp, ghp);
          const int64_t k = i * ch + kk;
          store_plane<scalar_t, acc_t>(ghp, Hh, Wh,
                                       static_cast<scalar_t*>(p.grad_high) + b * p.ghs[0] + k * p.ghs[1],
                                       p.ghs[2], p.ghs[3]);
        }
      }
    }
  }
}

// topdown_gate forward / backward; group = (b, high channel k).
template <typename scalar_t, bool BWD>
void gate_impl(const GateParams& p, const GateTables& tb, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  constexpr int64_t L = V::size();
  const int64_t H = p.H, W = p.W, HW = H * W, HWp = round_up(HW, L);
  const int64_t Ch = p.Ch, Hh = p.Hh, Wh = p.Wh, xi = p.xi;
  const scalar_t* Lo = static_cast<const scalar_t*>(p.low);
  const scalar_t* Hi = static_cast<const scalar_t*>(p.high);
  const int64_t tmp_size = Hh * std::max(W, Wh);
  std::vector<acc_t> buf(static_cast<size_t>(4 * HWp + tmp_size + (BWD ? Hh * Wh : 0)));
  acc_t* G = buf.data();
  acc_t* lo = G + HWp;
  acc_t* go = lo + HWp;
  acc_t* dG = go + HWp;
  acc_t* tmp = dG + HWp;
  acc_t* ghp = tmp + tmp_size;

  for (int64_t grp = begin; grp < end; ++grp) {
    const int64_t b = grp / Ch, k = grp % Ch;
    gate_plane<scalar_t, acc_t>(Hi + b * p.hs[0] + k * p.hs[1], p.hs[2], p.hs[3], Hh, Wh, H, W, tb, tmp, G);
    for (int64_t j = 0; j < xi; ++j) {
      const int64_t c = k * xi + j;
      load_plane<scalar_t, acc_t>(Lo + b * p.ls[0] + c * p.ls[1], p.ls[2], p.ls[3], H, W, lo);
      if constexpr (!BWD) {
        for_vec<L>(HW, [&](int64_t q, int64_t cnt) { (V::loadu(lo + q, cnt) * V::loadu(G + q, cnt)).store(lo + q, cnt); });
        store_plane<scalar_t, acc_t>(lo, H, W, static_cast<scalar_t*>(p.out) + b * p.os[0] + c * p.os[1], p.os[2],
                                     p.os[3]);
      } else {
        load_plane<scalar_t, acc_t>(static_cast<const scalar_t*>(p.grad_out) + b * p.gos[0] + c * p.gos[1], p.gos[2],
                                    p.gos[3], H, W, go);
        for_vec<L>(HW, [&](int64_t q, int64_t cnt) {
          const V g = V::loadu(go + q, cnt);
          const V dgate = g * V::loadu(lo + q, cnt);
          (j == 0 ? dgate : V::loadu(dG + q, cnt) + dgate).store(dG + q, cnt);
          (g * V::loadu(G + q, cnt)).store(go + q, cnt);
        });
        store_plane<scalar_t, acc_t>(go, H, W, static_cast<scalar_t*>(p.grad_low) + b * p.gls[0] + c * p.gls[1],
                                     p.gls[2], p.gls[3]);
      }
    }
    if constexpr (BWD) {
      for_vec<L>(HW, [&](int64_t q, int64_t cnt) {
        math::sigmoid_backward(V::loadu(dG + q, cnt), V::loadu(G + q, cnt)).store(dG + q, cnt);
      });
      adjoint_plane<acc_t>(dG, H, W, Hh, Wh, tb, tmp, ghp);
      store_plane<scalar_t, acc_t>(ghp, Hh, Wh, static_cast<scalar_t*>(p.grad_high) + b * p.ghs[0] + k * p.ghs[1],
                                   p.ghs[2], p.ghs[3]);
    }
  }
}

void terms_forward(c10::ScalarType dt, const TermsParams& p, const GateTables& tb, int64_t begin, int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "tdsa_fast::terms_forward", [&] {
    if (p.gated) {
      terms_impl<scalar_t, true, false>(p, tb, begin, end);
    } else {
      terms_impl<scalar_t, false, false>(p, tb, begin, end);
    }
  });
}

void terms_backward(c10::ScalarType dt, const TermsParams& p, const GateTables& tb, int64_t begin, int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "tdsa_fast::terms_backward", [&] {
    if (p.gated) {
      terms_impl<scalar_t, true, true>(p, tb, begin, end);
    } else {
      terms_impl<scalar_t, false, true>(p, tb, begin, end);
    }
  });
}

void gate_forward(c10::ScalarType dt, const GateParams& p, const GateTables& tb, int64_t begin, int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "tdsa_fast::gate_forward",
                                  [&] { gate_impl<scalar_t, false>(p, tb, begin, end); });
}

void gate_backward(c10::ScalarType dt, const GateParams& p, const GateTables& tb, int64_t begin, int64_t end) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "tdsa_fast::gate_backward",
                                  [&] { gate_impl<scalar_t, true>(p, tb, begin, end); });
}

}  // namespace

const KernelSet& kernel_set() {
  static const KernelSet ks{TDSA_FAST_STR(CPU_CAPABILITY), &terms_forward, &terms_backward, &gate_forward,
                            &gate_backward};
  return ks;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace tdsa_fast
