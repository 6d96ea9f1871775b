// The memory loader's CPU batch (tdsa_fast/data/memory_loader.py): for each j, the s x s window
// of the stored image images[idx[j]] whose corner is (tops[j], lefts[j]) (zeros outside the
// image), mirrored when flips[j], normalised to (v - 127.5) / 127.5 and written once, in the
// output dtype and layout.  The same values, bit for bit, as the Python path
// (finished_windows: the windows pasted into a float32 batch, then finish_images), which
// writes and rereads the float batch three times.
//
//   released_windows(images uint8 [N, 3, s, s] contiguous, idx / tops / lefts int64 [n],
//                    flips bool [n], dtype, channels_last) -> [n, 3, s, s] dtype
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

namespace tdsa_fast {
namespace {

// Each level's normalised value: torch's float32 sub then div (each rounded to float32), then
// the conversion to OutT (round to nearest even, as Tensor.to).
template <typename OutT>
std::array<OutT, 256> level_values() {
  std::array<OutT, 256> value;
  for (int v = 0; v < 256; ++v) value[v] = static_cast<OutT>((static_cast<float>(v) - 127.5f) / 127.5f);
  return value;
}

// dst[k * pixel] = value[row[k]] for k < width (row read backwards when flip).  float32
// NCHW rows compute the table's expression itself, which vectorises; other rows look it up.
template <typename OutT>
inline void levels_row(const uint8_t* row, int64_t width, bool flip, const std::array<OutT, 256>& value,
                       int64_t pixel, OutT* dst) {
  if constexpr (std::is_same_v<OutT, float>) {
    if (pixel == 1) {
      if (flip) {
        const uint8_t* last = row + width - 1;
        for (int64_t k = 0; k < width; ++k) dst[k] = (static_cast<float>(last[-k]) - 127.5f) / 127.5f;
      } else {
        for (int64_t k = 0; k < width; ++k) dst[k] = (static_cast<float>(row[k]) - 127.5f) / 127.5f;
      }
      return;
    }
  }
  if (flip) {
    for (int64_t k = 0; k < width; ++k) dst[k * pixel] = value[row[width - 1 - k]];
  } else {
    for (int64_t k = 0; k < width; ++k) dst[k * pixel] = value[row[k]];
  }
}

// One image's window into out (its [3, s, s] values at channel stride `channel` and pixel
// stride `pixel`): rows and columns outside the stored image take value[0].
template <typename OutT>
void window(const uint8_t* img, int64_t s, int64_t top, int64_t left, bool flip, const std::array<OutT, 256>& value,
            int64_t channel, int64_t pixel, OutT* out) {
  const int64_t plane = s * s;
  // The window's part inside the image: image columns [c0, c1) land at output columns
  // [o0, o0 + c1 - c0) (mirrored when flip).
  const int64_t c0 = std::max<int64_t>(left, 0), c1 = std::min<int64_t>(left + s, s);
  const int64_t width = std::max<int64_t>(c1 - c0, 0);
  const int64_t o0 = flip ? s - (c1 - left) : c0 - left;
  const OutT fill = value[0];
  for (int64_t oy = 0; oy < s; ++oy) {
    const int64_t y = top + oy;
    const bool inside = y >= 0 && y < s && width > 0;
    for (int64_t ch = 0; ch < 3; ++ch) {
      OutT* o = out + ch * channel + oy * s * pixel;
      if (!inside) {
        for (int64_t ox = 0; ox < s; ++ox) o[ox * pixel] = fill;
        continue;
      }
      for (int64_t ox = 0; ox < o0; ++ox) o[ox * pixel] = fill;
      for (int64_t ox = o0 + width; ox < s; ++ox) o[ox * pixel] = fill;
      levels_row(img + ch * plane + y * s + c0, width, flip, value, pixel, o + o0 * pixel);
    }
  }
}

template <typename OutT>
void windows(const at::Tensor& images, const int64_t* idx, const int64_t* tops, const int64_t* lefts,
             const bool* flips, bool channels_last, at::Tensor& out) {
  const int64_t n = out.size(0), s = images.size(-1), per_image = 3 * s * s;
  const uint8_t* base = images.data_ptr<uint8_t>();
  OutT* dst = out.data_ptr<OutT>();
  const auto value = level_values<OutT>();
  const int64_t channel = channels_last ? 1 : s * s, pixel = channels_last ? 3 : 1;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      window(base + idx[j] * per_image, s, tops[j], lefts[j], flips[j], value, channel, pixel, dst + j * per_image);
    }
  });
}

at::Tensor released_windows(const at::Tensor& images, const at::Tensor& idx, const at::Tensor& tops,
                            const at::Tensor& lefts, const at::Tensor& flips, at::ScalarType dtype,
                            bool channels_last) {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == 3 && images.size(2) == images.size(3),
              "released_windows: images must be [N, 3, s, s], got ", images.sizes());
  TORCH_CHECK(images.scalar_type() == at::kByte && images.is_contiguous(),
              "released_windows: images must be contiguous uint8, got ", images.scalar_type());
  const int64_t n = idx.numel(), count = images.size(0), s = images.size(-1);
  for (const at::Tensor* t : {&idx, &tops, &lefts}) {
    TORCH_CHECK(t->dim() == 1 && t->numel() == n && t->scalar_type() == at::kLong && t->is_contiguous(),
                "released_windows: idx, tops and lefts must be contiguous int64 [n] (n = ", n, ")");
  }
  TORCH_CHECK(flips.dim() == 1 && flips.numel() == n && flips.scalar_type() == at::kBool && flips.is_contiguous(),
              "released_windows: flips must be contiguous bool [n] (n = ", n, ")");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "released_windows: dtype must be float32, float16 or bfloat16, got ", dtype);
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t j = 0; j < n; ++j) {
    TORCH_CHECK(ip[j] >= 0 && ip[j] < count, "released_windows: idx[", j, "] = ", ip[j], " is outside [0, ", count,
                ")");
  }
  // [n, 3, s, s] with NCHW or NHWC (channels_last) strides, every element written below.
  at::Tensor out = at::empty(channels_last ? at::IntArrayRef{n, s, s, 3} : at::IntArrayRef{n, 3, s, s},
                             images.options().dtype(dtype));
  if (channels_last) out = out.permute({0, 3, 1, 2});
  if (n == 0) return out;
  const int64_t* tp = tops.data_ptr<int64_t>();
  const int64_t* lp = lefts.data_ptr<int64_t>();
  const bool* fp = flips.data_ptr<bool>();
  if (dtype == at::kFloat) {
    windows<float>(images, ip, tp, lp, fp, channels_last, out);
  } else if (dtype == at::kHalf) {
    windows<c10::Half>(images, ip, tp, lp, fp, channels_last, out);
  } else {
    windows<c10::BFloat16>(images, ip, tp, lp, fp, channels_last, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tdsa_fast, CPU, m) { m.impl("released_windows", &released_windows); }

}  // namespace tdsa_fast
