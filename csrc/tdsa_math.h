// Per-element math of the MC / TDSA kernels, shared by the CPU and the CUDA code.
//
// Everything here is a small inline __host__ __device__ function with no dependency on
// torch, so the CPU kernels (which the CPU tests run) execute exactly the same formulas
// as the CUDA kernels: the interpolation taps and weights (F.interpolate with
// align_corners=False), their adjoint, the cubic weights, the sigmoid and its gradient,
// the NaN-aware "replaces the current maximum" rule of torch.max(dim), and the gradient
// of one element of the (g, h) terms.
//
// C++17; also valid C++20 and CUDA C++.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TDSA_HD __host__ __device__ __forceinline__
#else
#define TDSA_HD inline
#endif

#define TDSA_FAST_STR_(x) #x
#define TDSA_FAST_STR(x) TDSA_FAST_STR_(x)

namespace tdsa_fast {
namespace math {

// Upsampling modes, in the order of the `mode` strings of the ops.
enum Mode : int { kNearest = 0, kBilinear = 1, kBicubic = 2 };

// At most this many source taps per output index along one axis (bicubic).
constexpr int kMaxTaps = 4;

template <typename T>
TDSA_HD bool is_nan(T x) {
  return x != x;  // no -ffast-math anywhere in this project
}

// torch.max(x, dim) scans the channels in ascending order and keeps the first maximal
// one; a NaN counts as the maximum and the first NaN wins. `replaces(v, best)` is true
// when channel value `v` (later index) takes over from the current `best`.
template <typename T>
TDSA_HD bool replaces(T v, T best) {
  return v > best || (is_nan(v) && !is_nan(best));
}

template <typename T>
TDSA_HD T neg_inf() {
  return -static_cast<T>(INFINITY);
}

// Maximum that propagates NaN (the per-channel max of the softmax shift).
template <typename T>
TDSA_HD T nan_max(T a, T b) {
  return is_nan(a) ? a : (is_nan(b) ? b : (b > a ? b : a));
}

TDSA_HD float exp_(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return std::exp(x);
#endif
}
TDSA_HD double exp_(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// The helpers below are plain arithmetic templates: the CPU kernels instantiate them
// with at::vec::Vectorized<acc_t>, the CUDA kernels with float / double.

// sigmoid(x) = 1 / (1 + exp(-x)), from e = exp(-x) (the caller picks the exp).
template <typename T>
TDSA_HD T sigmoid_of_exp(T e) {
  return T(1) / (T(1) + e);
}

template <typename T>
TDSA_HD T sigmoid(T x) {
  return sigmoid_of_exp(exp_(-x));
}

// d sigmoid: grad * (1 - s) * s, in the order of torch's sigmoid_backward.
template <typename T>
TDSA_HD T sigmoid_backward(T grad, T s) {
  return grad * (T(1) - s) * s;
}

// One element of the softmax backward: s * (go - dot) with dot = sum_p go_p * s_p.
template <typename T>
TDSA_HD T softmax_backward(T s, T go, T dot) {
  return s * (go - dot);
}

// Gradient of (g, h) with respect to one element x_{m,p} of a group (docs/method.md):
//   gpart = grad_g / HW * mask_m where m is the lowest-index argmax of mask * x at p, else 0;
//   hpart = softmax_backward(s_{m,p}, go, dot_m) with go = grad_h where m is the argmax of
//           the softmax values at p (else 0) and dot_m = sum_p go_p s_{m,p}
//         = s_{m,p} ([a(p) = m] - T_m) grad_h.
// The two autograd branches of the reference add up in this order.
template <typename T>
TDSA_HD T terms_combine(T gpart, T hpart) {
  return gpart + hpart;
}

// Keys' cubic convolution, A = -0.75 (PyTorch's bicubic), taps at -1, 0, 1, 2.
template <typename T>
TDSA_HD T cubic_conv1(T x, T A) {  // |x| <= 1
  return ((A + T(2)) * x - (A + T(3))) * x * x + T(1);
}
template <typename T>
TDSA_HD T cubic_conv2(T x, T A) {  // 1 < |x| < 2
  return ((A * x - T(5) * A) * x + T(8) * A) * x - T(4) * A;
}
template <typename T>
TDSA_HD void cubic_coeffs(T t, T* c) {
  const T A = T(-0.75);
  c[0] = cubic_conv2<T>(t + T(1), A);
  c[1] = cubic_conv1<T>(t, A);
  const T t2 = T(1) - t;
  c[2] = cubic_conv1<T>(t2, A);
  c[3] = cubic_conv2<T>(t2 + T(1), A);
}

// Source taps of output index `dst` along one axis of F.interpolate(size=out,
// align_corners=False) from `in` samples (in <= out here, but any sizes work).
// Writes up to kMaxTaps (index, weight) pairs, returns their count. Every tap is
// kept even when its weight is 0, because PyTorch multiplies it too (0 * inf = NaN).
//   nearest : src = min(floor(dst * (float)in/out), in - 1)          (float math, as ATen)
//   bilinear: same size -> (dst, 1), (dst, 0) (ATen's special case); else
//             src = max((dst + .5) * scale - .5, 0), i0 = min(floor(src), in - 1),
//             i1 = min(i0 + 1, in - 1), weights (1 - l, l), l = src - i0
//   bicubic : src = (dst + .5) * scale - .5 (not clamped), i0 = floor(src), t = src - i0,
//             taps i0 - 1 .. i0 + 2 clamped to [0, in - 1], Keys weights of t
template <typename T>
TDSA_HD int axis_taps(int mode, int64_t dst, int64_t in, int64_t out, int64_t* idx, T* w) {
  if (mode == kNearest) {
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    int64_t s = static_cast<int64_t>(floorf(static_cast<float>(dst) * scale));
    idx[0] = s < in - 1 ? s : in - 1;
    w[0] = T(1);
    return 1;
  }
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  if (mode == kBilinear) {
    if (in == out) {
      idx[0] = dst;
      idx[1] = dst;
      w[0] = T(1);
      w[1] = T(0);
      return 2;
    }
    T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
    if (src < T(0)) src = T(0);
    int64_t i0 = static_cast<int64_t>(floor(src));
    if (i0 > in - 1) i0 = in - 1;
    T l = src - static_cast<T>(i0);
    l = l < T(0) ? T(0) : (l > T(1) ? T(1) : l);
    idx[0] = i0;
    idx[1] = i0 < in - 1 ? i0 + 1 : i0;
    w[0] = T(1) - l;
    w[1] = l;
    return 2;
  }
  // bicubic
  const T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  int64_t i0 = static_cast<int64_t>(floor(src));
  if (i0 > in - 1) i0 = in - 1;
  T t = src - static_cast<T>(i0);
  t = t < T(0) ? T(0) : (t > T(1) ? T(1) : t);
  cubic_coeffs<T>(t, w);
  for (int k = 0; k < 4; ++k) {
    int64_t j = i0 - 1 + k;
    j = j < 0 ? 0 : (j > in - 1 ? in - 1 : j);
    idx[k] = j;
  }
  return 4;
}

// The output indices whose taps can reach source index `s` lie in [*lo, *hi]
// (a safe superset: the taps span at most 4 source samples around dst*in/out, and the
// clamped border taps only reach s = 0 and s = in - 1, whose ranges extend to the ends).
TDSA_HD void adjoint_range(int64_t s, int64_t in, int64_t out, int64_t* lo, int64_t* hi) {
  int64_t a = ((s - 2) * out) / in - 3;
  int64_t b = ((s + 3) * out + in - 1) / in + 3;
  if (s <= 2) a = 0;
  if (s >= in - 3) b = out - 1;
  *lo = a < 0 ? 0 : a;
  *hi = b > out - 1 ? out - 1 : b;
}

// PyTorch's upsample backward has one special case its forward lacks: bicubic with
// equal input and output sizes (both axes) is a plain copy of the gradient.
TDSA_HD bool adjoint_is_identity(int mode, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w) {
  return mode == kBicubic && in_h == out_h && in_w == out_w;
}

// Gathered adjoint along one axis: sum over the output indices d in adjoint_range(s)
// (ascending) and over their taps (ascending) that land on s, of weight * g(d).
// `g` is any callable d -> T. The CPU kernels tabulate the same (d, weight) pairs in the
// same order, so both devices sum the same terms in the same order.
template <typename T, typename G>
TDSA_HD T adjoint_gather(int mode, int64_t s, int64_t in, int64_t out, const G& g) {
  int64_t lo, hi;
  adjoint_range(s, in, out, &lo, &hi);
  T acc = T(0);
  int64_t idx[kMaxTaps];
  T w[kMaxTaps];
  for (int64_t d = lo; d <= hi; ++d) {
    const int n = axis_taps<T>(mode, d, in, out, idx, w);
    for (int k = 0; k < n; ++k) {
      if (idx[k] == s) acc += w[k] * g(d);
    }
  }
  return acc;
}

}  // namespace math
}  // namespace tdsa_fast
