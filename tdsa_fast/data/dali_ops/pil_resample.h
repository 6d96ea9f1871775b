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
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace tdsa_dali {

constexpr int kPrecisionBits = 32 - 8 - 2;

// The per-output-pixel taps of one axis: output i reads in[first[i] .. first[i] + count[i])
// with weights w[i * ksize ..].
struct AxisTaps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> w;
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

inline uint8_t clip8(int32_t in) {
  if (in >= (1 << kPrecisionBits << 8)) return 255;
  if (in <= 0) return 0;
  return static_cast<uint8_t>(in >> kPrecisionBits);
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
  std::vector<uint8_t> rows;   // horizontal pass: [source rows used, window columns, 3]
  std::vector<int32_t> acc;    // vertical pass: one output row, [window columns, 3]
};

// in: [height, width, 3] uint8, rows of row_stride bytes.  out: size * size * 3 values of OutT
// (float, or a type constructible from float).  resized (optional): [3, size, size] uint8, the
// whole resized image before the window, flip and normalisation (the memory loader stores it).
template <typename OutT>
void resample_window(const uint8_t* in, int height, int width, int64_t row_stride, const WindowSpec& spec,
                     OutT* out, Scratch& scratch, uint8_t* resized = nullptr) {
  const int s = spec.size;
  const OutT fill = static_cast<OutT>((0.0f - spec.mean) / spec.std);
  // The window's part inside the resized image: resized rows [r0, r1), columns [c0, c1).
  const int r0 = std::max(spec.top, 0), r1 = std::min(spec.top + s, s);
  const int c0 = std::max(spec.left, 0), c1 = std::min(spec.left + s, s);
  const int64_t plane = static_cast<int64_t>(s) * s;
  if (r0 != spec.top || r1 != spec.top + s || c0 != spec.left || c1 != spec.left + s || r0 >= r1 ||
      c0 >= c1) {
    std::fill(out, out + 3 * plane, fill);
  }
  // The resized image's rows [R0, R1) and columns [C0, C1) computed: the window's, or all.
  const int R0 = resized ? 0 : r0, R1 = resized ? s : r1, C0 = resized ? 0 : c0, C1 = resized ? s : c1;
  if (R0 >= R1 || C0 >= C1) return;
  const int ncols = C1 - C0;

  const AxisTaps hx = axis_taps(width, spec.box_x0, spec.box_x1, s);
  const AxisTaps vy = axis_taps(height, spec.box_y0, spec.box_y1, s);
  int y_first = height, y_last = 0;
  for (int r = R0; r < R1; ++r) {
    if (vy.count[r] == 0) continue;
    y_first = std::min(y_first, vy.first[r]);
    y_last = std::max(y_last, vy.first[r] + vy.count[r]);
  }
  const int nrows = std::max(y_last - y_first, 0);

  // Horizontal pass: source rows [y_first, y_last) -> window columns, 8-bit.
  scratch.rows.resize(static_cast<size_t>(nrows) * ncols * 3);
  for (int y = 0; y < nrows; ++y) {
    const uint8_t* src = in + (y_first + y) * row_stride;
    uint8_t* dst = scratch.rows.data() + static_cast<size_t>(y) * ncols * 3;
    for (int c = C0; c < C1; ++c) {
      const int32_t* k = hx.w.data() + static_cast<size_t>(c) * hx.ksize;
      const uint8_t* p = src + hx.first[c] * 3;
      int32_t a0 = 1 << (kPrecisionBits - 1), a1 = a0, a2 = a0;
      for (int x = 0; x < hx.count[c]; ++x) {
        a0 += p[3 * x + 0] * k[x];
        a1 += p[3 * x + 1] * k[x];
        a2 += p[3 * x + 2] * k[x];
      }
      uint8_t* d = dst + (c - C0) * 3;
      d[0] = clip8(a0);
      d[1] = clip8(a1);
      d[2] = clip8(a2);
    }
  }

  // Vertical pass, one output row at a time (contiguous over columns x channels), then the
  // rounding, normalisation (divided, not multiplied by 1/std: the torch loader's values to
  // the last bit), flip and layout.
  const int width3 = ncols * 3;
  scratch.acc.resize(width3);
  int32_t* acc = scratch.acc.data();
  for (int r = R0; r < R1; ++r) {
    std::fill(acc, acc + width3, 1 << (kPrecisionBits - 1));
    const int32_t* k = vy.w.data() + static_cast<size_t>(r) * vy.ksize;
    for (int y = 0; y < vy.count[r]; ++y) {
      const uint8_t* row = scratch.rows.data() + static_cast<size_t>(vy.first[r] - y_first + y) * width3;
      const int32_t w = k[y];
      for (int j = 0; j < width3; ++j) acc[j] += row[j] * w;
    }
    if (resized) {
      for (int c = 0; c < s; ++c) {
        for (int ch = 0; ch < 3; ++ch) resized[ch * plane + static_cast<int64_t>(r) * s + c] = clip8(acc[c * 3 + ch]);
      }
    }
    if (r < r0 || r >= r1) continue;
    const int oy = r - spec.top;
    for (int c = c0; c < c1; ++c) {
      const int wx = c - spec.left;
      const int ox = spec.mirror ? s - 1 - wx : wx;
      const int32_t* a = acc + (c - C0) * 3;
      for (int ch = 0; ch < 3; ++ch) {
        const float v = (static_cast<float>(clip8(a[ch])) - spec.mean) / spec.std;
        if (spec.channels_last) {
          out[(static_cast<int64_t>(oy) * s + ox) * 3 + ch] = static_cast<OutT>(v);
        } else {
          out[ch * plane + static_cast<int64_t>(oy) * s + ox] = static_cast<OutT>(v);
        }
      }
    }
  }
}

}  // namespace tdsa_dali
