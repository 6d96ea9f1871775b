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

#include <cstdint>

#include "released_window.h"  // tdsa_fast/data/dali_ops: shared with the DALI plugin

namespace tdsa_fast {
namespace {

// One image's window into out (its [3, s, s] values at channel stride `channel` and pixel
// stride `pixel`).
template <typename OutT>
void window(const uint8_t* img, int64_t s, int64_t top, int64_t left, bool flip,
            const tdsa_window::Levels<OutT>& levels, int64_t channel, int64_t pixel, OutT* out) {
  const tdsa_window::Part part = tdsa_window::window_part(s, top, left, flip);
  tdsa_window::fill_outside(part, s, top, levels, channel, pixel, out);
  if (!part.inside()) return;
  for (int64_t y = part.r0; y < part.r1; ++y) {
    OutT* o = out + (y - top) * s * pixel;
    for (int64_t ch = 0; ch < 3; ++ch) {
      tdsa_window::put_row(img + ch * s * s + y * s + part.c0, part, flip, levels, pixel, o + ch * channel);
    }
  }
}

template <typename OutT>
void windows(const at::Tensor& images, const int64_t* idx, const int64_t* tops, const int64_t* lefts,
             const bool* flips, bool channels_last, at::Tensor& out) {
  const int64_t n = out.size(0), s = images.size(-1), per_image = 3 * s * s;
  const uint8_t* base = images.data_ptr<uint8_t>();
  OutT* dst = out.data_ptr<OutT>();
  const tdsa_window::Levels<OutT> levels(127.5f, 127.5f);  // torch's float32 sub then div
  const int64_t channel = channels_last ? 1 : s * s, pixel = channels_last ? 3 : 1;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      window(base + idx[j] * per_image, s, tops[j], lefts[j], flips[j], levels, channel, pixel,
             dst + j * per_image);
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
