// Pillow's bilinear resampling (Image.resize(size, Image.BILINEAR, box)) fused with the
// released recipe's window crop, the horizontal flip and the normalisation.
//
// Plain C++ (no DALI, no torch): the DALI operator of resample_window_op.cc runs it per sample.
// It follows Pillow's src/libImaging/Resample.c for 8-bit images: triangle filter widened by
// the downscale factor (antialiasing), coefficients normalised per output pixel and rounded to
// 22-bit fixed point, a horizontal pass into an 8-bit image, then a vertical pass, each
// rounding half up and clipping to 0..255.  Pillow's Resample.c as published runs the passes
// in this order; the Pillow 13.0 this project was measured with runs the vertical pass first
// for some sizes (measured at a 224 px output: images taller than 224 and narrower than about
// (height + 224) / 2), and there the two differ by at most one grey level where the
// intermediate rounding differs (tests/test_dali_plugin.py checks both).  Only the rows and
// columns the window keeps are computed, unless the whole resized image is asked for too.
//
// The loops differ from Pillow's, not the sums: when upscaling, every output reads a fixed
// 3 taps (zero weights past Pillow's count of 2 or 3, so the integer sums are unchanged),
// unrolled at compile time; when downscaling (every filter padded to ksize taps) and compiled
// with AVX2, the horizontal pass multiplies two taps at once in 32-bit lanes; the horizontal
// pass writes one plane per channel so the vertical pass runs over contiguous rows.  The
// window, the flip and the normalisation are released_window.h's, which the _C op
// released_windows shares.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "released_window.h"

namespace tdsa_dali {

constexpr int kPrecisionBits = 32 - 8 - 2;

// The per-output-pixel taps of one axis: output i reads in[first[i] .. first[i] + count[i])
// with weights w[i * ksize ..].
struct AxisTaps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> w;
  bool padded = false;  // pad_taps made every output of its range read exactly ksize taps
};

inline double bilinear_filter(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the source interval [in0, in1) of an
// axis of in_size pixels resampled to out_size pixels.
inline AxisTaps axis_taps(int in_size, double in0, double in1, int out_size) {
  AxisTaps t;
  const double scale = (in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filterscale;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.w.assign(static_cast<size_t>(out_size) * t.ksize, 0);
  std::vector<double> k(t.ksize);
  const double ss = 1.0 / filterscale;
  for (int i = 0; i < out_size; ++i) {
    const double center = in0 + (i + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = bilinear_filter((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? k[x] / ww : k[x];
      t.w[static_cast<size_t>(i) * t.ksize + x] =
          static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
    }
    t.first[i] = xmin;
    t.count[i] = std::max(xmax, 0);
  }
  return t;
}

// Pillow's clip8: in >> 22 clamped to 0..255 (written without branches).
inline uint8_t clip8(int32_t in) {
  const int32_t v = in >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Makes outputs [i0, i1) of t read exactly t.ksize inputs from [lo, hi): first moved back
// where the filter would leave the range, weights shifted to match and zero elsewhere (the
// integer sums are unchanged).  False (t unchanged) when the range is shorter than ksize.
inline bool pad_taps(AxisTaps& t, int lo, int hi, int i0, int i1) {
  const int k = t.ksize;
  if (hi - lo < k) return false;
  for (int i = i0; i < i1; ++i) {
    const int first = t.count[i] > 0 ? t.first[i] : lo;
    const int moved = std::max(lo, std::min(first, hi - k));
    const int shift = first - moved;
    int32_t* w = t.w.data() + static_cast<size_t>(i) * k;
    if (shift > 0) {
      for (int x = t.count[i] - 1; x >= 0; --x) w[x + shift] = w[x];
      std::fill(w, w + shift, 0);
    }
    t.first[i] = moved;
    t.count[i] = k;
  }
  t.padded = true;
  return true;
}

// What one sample asks for.  The resized image is size x size (Pillow's resize of the source
// box [box_x0, box_x1) x [box_y0, box_y1)); the output is its size x size window whose top-left
// corner is (top, left) in resized pixels, zero-valued (before normalisation) where the window
// leaves the resized image, flipped left-right when mirror is set, and normalised as
// (v - mean) / std.
struct WindowSpec {
  int size;
  double box_x0, box_y0, box_x1, box_y1;
  int top, left;
  bool mirror;
  float mean, std;
  bool channels_last;  // output [size, size, 3] instead of [3, size, size]
};

// Scratch buffers kept per thread between samples.
struct Scratch {
  std::vector<uint8_t> rows;   // horizontal pass: [3][source rows used][computed columns]
  std::vector<uint8_t> level;  // vertical pass: one resized row, [3][computed columns]
  std::vector<int32_t> acc;    // vertical pass with taps not unrolled: [computed columns]
  std::vector<int32_t> coef;   // horizontal pass with AVX2: [computed columns][tap pairs][8]
  std::vector<int> pairs;      // horizontal pass with AVX2: [computed columns] tap pairs read
};

// Horizontal pass of one source row (HWC) into the three channel rows d[0..2], columns
// [c0, c1) of the resized image.  K > 0: every output reads K taps (padded); 0: t.count.
template <int K>
inline void horizontal_row(const uint8_t* src, const AxisTaps& t, int c0, int c1, uint8_t* d0, uint8_t* d1,
                           uint8_t* d2) {
  for (int c = c0; c < c1; ++c) {
    const int32_t* k = t.w.data() + static_cast<size_t>(c) * t.ksize;
    const uint8_t* p = src + t.first[c] * 3;
    const int n = K > 0 ? K : t.count[c];
    int32_t a0 = 1 << (kPrecisionBits - 1), a1 = a0, a2 = a0;
    for (int x = 0; x < n; ++x) {
      a0 += p[3 * x + 0] * k[x];
      a1 += p[3 * x + 1] * k[x];
      a2 += p[3 * x + 2] * k[x];
    }
    d0[c - c0] = clip8(a0);
    d1[c - c0] = clip8(a1);
    d2[c - c0] = clip8(a2);
  }
}

#if defined(__AVX2__)
// The weights of the AVX2 horizontal pass, for outputs [c0, c1): output c's taps up to its last
// nonzero weight (Pillow's ksize is about twice the taps an output reads) in pairs[c - c0]
// pairs, each 8 lanes [w, w, w, 0] of tap 2m then of tap 2m + 1, at coef[(c - c0) * stride].
// Returns the stride (8 x the largest number of pairs).
inline int pair_weights(const AxisTaps& t, int c0, int c1, std::vector<int32_t>& coef, std::vector<int>& pairs) {
  pairs.resize(c1 - c0);
  int most = 1;
  for (int c = c0; c < c1; ++c) {
    const int32_t* k = t.w.data() + static_cast<size_t>(c) * t.ksize;
    int used = t.ksize;
    while (used > 1 && k[used - 1] == 0) --used;
    pairs[c - c0] = (used + 1) / 2;
    most = std::max(most, pairs[c - c0]);
  }
  const int stride = most * 8;
  coef.assign(static_cast<size_t>(c1 - c0) * stride, 0);
  for (int c = c0; c < c1; ++c) {
    const int32_t* k = t.w.data() + static_cast<size_t>(c) * t.ksize;
    int32_t* e = coef.data() + static_cast<size_t>(c - c0) * stride;
    for (int x = 0; x < 2 * pairs[c - c0] && x < t.ksize; ++x) {
      int32_t* lane = e + (x / 2) * 8 + (x % 2) * 4;
      lane[0] = lane[1] = lane[2] = k[x];
    }
  }
  return stride;
}

// The horizontal pass of one source row (HWC) for outputs [c0, c1) of padded taps, with the
// weights of pair_weights: two taps per multiply of eight 32-bit lanes (R, G, B, - of tap 2m |
// of tap 2m + 1), the same integer sums as horizontal_row in another order.  An output whose
// 8-byte loads would pass the row's end (the last few) is summed by the scalar loop.
inline void horizontal_row_avx2(const uint8_t* src, int width, const AxisTaps& t, const int32_t* coef, int stride,
                                const int* pairs, int c0, int c1, uint8_t* d0, uint8_t* d1, uint8_t* d2) {
  const __m128i spread = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m128i half = _mm_set1_epi32(1 << (kPrecisionBits - 1));
  const __m128i zero = _mm_setzero_si128(), top = _mm_set1_epi32(255);
  for (int c = c0; c < c1; ++c) {
    const int first = t.first[c], n = pairs[c - c0];
    if (first + 2 * n > width - 1) {  // the 8-byte loads would read past the row
      horizontal_row<0>(src, t, c, c + 1, d0 + (c - c0), d1 + (c - c0), d2 + (c - c0));
      continue;
    }
    const uint8_t* p = src + first * 3;
    const int32_t* e = coef + static_cast<size_t>(c - c0) * stride;
    __m256i acc = _mm256_setzero_si256();
    for (int m = 0; m < n; ++m) {
      const __m128i bytes = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 6 * m)), spread);
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + 8 * m));
      acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(bytes), w));
    }
    __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    sum = _mm_min_epi32(_mm_max_epi32(_mm_srai_epi32(_mm_add_epi32(sum, half), kPrecisionBits), zero), top);
    d0[c - c0] = static_cast<uint8_t>(_mm_cvtsi128_si32(sum));
    d1[c - c0] = static_cast<uint8_t>(_mm_extract_epi32(sum, 1));
    d2[c - c0] = static_cast<uint8_t>(_mm_extract_epi32(sum, 2));
  }
}
#endif

// Vertical pass of one output row of one channel: rows[y * n_cols ..] for the taps' rows,
// into level[0 .. n_cols).  K > 0: K taps (padded); 0: n taps through acc.
template <int K>
inline void vertical_row(const uint8_t* rows, int n_cols, const int32_t* k, int n, uint8_t* level, int32_t* acc) {
  if constexpr (K > 0) {
    for (int j = 0; j < n_cols; ++j) {
      int32_t a = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < K; ++y) a += rows[static_cast<size_t>(y) * n_cols + j] * k[y];
      level[j] = clip8(a);
    }
  } else {
    std::fill(acc, acc + n_cols, 1 << (kPrecisionBits - 1));
    for (int y = 0; y < n; ++y) {
      const uint8_t* row = rows + static_cast<size_t>(y) * n_cols;
      const int32_t w = k[y];
      for (int j = 0; j < n_cols; ++j) acc[j] += row[j] * w;
    }
    for (int j = 0; j < n_cols; ++j) level[j] = clip8(acc[j]);
  }
}

// Both passes over the computed rows [R0, R1) and columns [C0, C1), calling emit(r, level)
// with level[ch * n_cols + j] the resized image's value at (r, C0 + j, ch).  KX, KY: the
// horizontal and vertical taps unrolled (0: not).
template <int KX, int KY, typename Emit>
void resample_rows(const uint8_t* in, int64_t row_stride, const AxisTaps& hx, const AxisTaps& vy, int R0, int R1,
                   int C0, int C1, int y_first, int n_rows, Scratch& scratch, Emit&& emit) {
  const int n_cols = C1 - C0;
  const size_t plane_rows = static_cast<size_t>(n_rows) * n_cols;
  scratch.rows.resize(3 * plane_rows);
  uint8_t* rows = scratch.rows.data();
#if defined(__AVX2__)
  if (KX == 0 && hx.padded) {
    const int stride = pair_weights(hx, C0, C1, scratch.coef, scratch.pairs);
    const int row_pixels = static_cast<int>(row_stride / 3);  // the loads stay inside a row's bytes
    for (int y = 0; y < n_rows; ++y) {
      uint8_t* d = rows + static_cast<size_t>(y) * n_cols;
      horizontal_row_avx2(in + (y_first + y) * row_stride, row_pixels, hx, scratch.coef.data(), stride,
                          scratch.pairs.data(), C0, C1, d,
                          d + plane_rows, d + 2 * plane_rows);
    }
  } else
#endif
  for (int y = 0; y < n_rows; ++y) {
    uint8_t* d = rows + static_cast<size_t>(y) * n_cols;
    horizontal_row<KX>(in + (y_first + y) * row_stride, hx, C0, C1, d, d + plane_rows, d + 2 * plane_rows);
  }
  scratch.level.resize(3 * static_cast<size_t>(n_cols));
  scratch.acc.resize(n_cols);
  uint8_t* level = scratch.level.data();
  for (int r = R0; r < R1; ++r) {
    const int32_t* k = vy.w.data() + static_cast<size_t>(r) * vy.ksize;
    const size_t first = static_cast<size_t>(vy.first[r] - y_first) * n_cols;
    for (int ch = 0; ch < 3; ++ch) {
      vertical_row<KY>(rows + ch * plane_rows + first, n_cols, k, vy.count[r], level + ch * n_cols,
                       scratch.acc.data());
    }
    emit(r, static_cast<const uint8_t*>(level));
  }
}

// Upscaling's ksize 3 unrolled (Pillow's counts of 2 or 3 padded to 3); larger filters,
// whose counts are close to their ksize, read Pillow's counts.
template <int KY, typename... Args>
void resample_rows_kx(int kx, Args&&... args) {
  if (kx == 3) return resample_rows<3, KY>(std::forward<Args>(args)...);
  return resample_rows<0, KY>(std::forward<Args>(args)...);
}

template <typename... Args>
void resample_rows_k(int kx, int ky, Args&&... args) {
  if (ky == 3) return resample_rows_kx<3>(kx, std::forward<Args>(args)...);
  return resample_rows_kx<0>(kx, std::forward<Args>(args)...);
}

// in: [height, width, 3] uint8, rows of row_stride bytes.  out: size * size * 3 values of OutT
// (float, or a type constructible from float).  resized (optional): [3, size, size] uint8, the
// whole resized image before the window, flip and normalisation (the second output, or a row of the store).
template <typename OutT>
void resample_window(const uint8_t* in, int height, int width, int64_t row_stride, const WindowSpec& spec,
                     OutT* out, Scratch& scratch, uint8_t* resized = nullptr) {
  const int s = spec.size;
  const int64_t plane = static_cast<int64_t>(s) * s;
  const tdsa_window::Levels<OutT> levels(spec.mean, spec.std);
  const tdsa_window::Part part = tdsa_window::window_part(s, spec.top, spec.left, spec.mirror);
  const int64_t pixel = spec.channels_last ? 3 : 1, channel = spec.channels_last ? 1 : plane;
  tdsa_window::fill_outside(part, s, spec.top, levels, channel, pixel, out);
  // The resized image's rows [R0, R1) and columns [C0, C1) computed: the window's, or all.
  const int R0 = resized ? 0 : static_cast<int>(part.r0), R1 = resized ? s : static_cast<int>(part.r1);
  const int C0 = resized ? 0 : static_cast<int>(part.c0), C1 = resized ? s : static_cast<int>(part.c1);
  if (R0 >= R1 || C0 >= C1) return;
  const int n_cols = C1 - C0;

  AxisTaps hx = axis_taps(width, spec.box_x0, spec.box_x1, s);
  AxisTaps vy = axis_taps(height, spec.box_y0, spec.box_y1, s);
  int y_first = height, y_last = 0;
  for (int r = R0; r < R1; ++r) {
    if (vy.count[r] == 0) continue;
    y_first = std::min(y_first, vy.first[r]);
    y_last = std::max(y_last, vy.first[r] + vy.count[r]);
  }
  if (y_first >= y_last) y_first = y_last = 0;  // no row reads the image: every level is 0
  const int n_rows = y_last - y_first;
#if defined(__AVX2__)
  constexpr bool kPadEvery = true;  // the AVX2 horizontal pass reads every filter padded
#else
  constexpr bool kPadEvery = false;  // the scalar loop would only sum the padding's zeros
#endif
  const bool x_padded = (hx.ksize == 3 || kPadEvery) && pad_taps(hx, 0, width, C0, C1);
  const int kx = x_padded && hx.ksize == 3 ? 3 : 0;
  const int ky = vy.ksize == 3 && pad_taps(vy, y_first, y_last, R0, R1) ? 3 : 0;

  auto emit = [&](int r, const uint8_t* level) {
    if (resized) {
      for (int ch = 0; ch < 3; ++ch) {
        std::copy(level + ch * n_cols, level + (ch + 1) * n_cols, resized + ch * plane + static_cast<int64_t>(r) * s);
      }
    }
    if (r < part.r0 || r >= part.r1 || !part.inside()) return;
    OutT* o = out + (r - spec.top) * s * pixel;
    for (int ch = 0; ch < 3; ++ch) {
      tdsa_window::put_row(level + ch * n_cols + (part.c0 - C0), part, spec.mirror, levels, pixel, o + ch * channel);
    }
  };
  resample_rows_k(kx, ky, in, row_stride, hx, vy, R0, R1, C0, C1, y_first, n_rows, scratch, emit);
}

}  // namespace tdsa_dali
