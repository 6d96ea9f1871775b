// The released recipe's training window of a resized s x s image: the s x s window whose
// top-left corner is (top, left) in image pixels (the 4-pixel zero padding and random crop of
// the released script, as one shift), zero outside the image, mirrored left-right when flip is
// set, each level v written as (v - mean) / std.
//
// Plain C++17 (no DALI, no torch), included by the DALI plugin (pil_resample.h, which computes
// the resized rows and hands them here) and by the _C op released_windows
// (csrc/cpu/windows_cpu.cpp, which reads them from the memory loader's store).  Output values
// of type OutT (float, or a type constructible from float: float16, bfloat16, uint8 levels) at
// channel stride `channel` and pixel stride `pixel` (CHW: s * s and 1; HWC: 1 and 3).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace tdsa_window {

// The window's part inside the image: image rows [r0, r1) and columns [c0, c1), which land at
// output rows [r0 - top, r1 - top) and columns [o0, o1) (mirrored when flip).
struct Part {
  int64_t r0, r1, c0, c1, o0, o1;
  bool inside() const { return r0 < r1 && c0 < c1; }
};

inline Part window_part(int64_t s, int64_t top, int64_t left, bool flip) {
  Part p;
  p.r0 = std::max<int64_t>(top, 0);
  p.r1 = std::min<int64_t>(top + s, s);
  p.c0 = std::max<int64_t>(left, 0);
  p.c1 = std::min<int64_t>(left + s, s);
  const bool in = p.inside();
  p.o0 = !in ? 0 : flip ? s - (p.c1 - left) : p.c0 - left;
  p.o1 = !in ? 0 : p.o0 + (p.c1 - p.c0);
  return p;
}

// Each level's output value, (v - mean) / std as one float expression converted to OutT
// (round to nearest even, as Tensor.to).
template <typename OutT>
struct Levels {
  float mean, std;
  OutT value[256];
  Levels(float mean_, float std_) : mean(mean_), std(std_) {
    for (int v = 0; v < 256; ++v) value[v] = static_cast<OutT>((static_cast<float>(v) - mean) / std);
  }
};

// The zero fill (value[0]) of out [3, s, s] outside the part: whole rows, then the columns
// either side of it.
template <typename OutT>
void fill_outside(const Part& p, int64_t s, int64_t top, const Levels<OutT>& levels, int64_t channel,
                  int64_t pixel, OutT* out) {
  const OutT fill = levels.value[0];
  for (int64_t oy = 0; oy < s; ++oy) {
    const bool row_inside = p.inside() && oy >= p.r0 - top && oy < p.r1 - top;
    for (int64_t ch = 0; ch < 3; ++ch) {
      OutT* o = out + ch * channel + oy * s * pixel;
      if (!row_inside) {
        for (int64_t ox = 0; ox < s; ++ox) o[ox * pixel] = fill;
        continue;
      }
      for (int64_t ox = 0; ox < p.o0; ++ox) o[ox * pixel] = fill;
      for (int64_t ox = p.o1; ox < s; ++ox) o[ox * pixel] = fill;
    }
  }
}

// One channel's row of the part: row[j] is the level of image column c0 + j, written to
// o[(o0 + j) * pixel], or to o[(o1 - 1 - j) * pixel] when flip (o: the output row's start).
// float rows of unit pixel stride compute the table's expression itself, which vectorises.
template <typename OutT>
inline void put_row(const uint8_t* row, const Part& p, bool flip, const Levels<OutT>& levels, int64_t pixel,
                    OutT* o) {
  const int64_t width = p.c1 - p.c0;
  OutT* dst = o + p.o0 * pixel;
  if constexpr (std::is_same_v<OutT, float>) {
    if (pixel == 1) {
      const float mean = levels.mean, std = levels.std;
      if (flip) {
        const uint8_t* last = row + width - 1;
        for (int64_t k = 0; k < width; ++k) dst[k] = (static_cast<float>(last[-k]) - mean) / std;
      } else {
        for (int64_t k = 0; k < width; ++k) dst[k] = (static_cast<float>(row[k]) - mean) / std;
      }
      return;
    }
  }
  if (flip) {
    for (int64_t k = 0; k < width; ++k) dst[k * pixel] = levels.value[row[width - 1 - k]];
  } else {
    for (int64_t k = 0; k < width; ++k) dst[k * pixel] = levels.value[row[k]];
  }
}

}  // namespace tdsa_window
