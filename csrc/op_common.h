// Host-side argument checks and launch descriptions shared by the CPU and CUDA op
// wrappers. The Python layer (tdsa_fast.functional) raises ValueError for bad input
// before any op runs; these TORCH_CHECKs (RuntimeError) protect direct torch.ops calls,
// so that no shape mismatch can reach a kernel and read out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string_view>
#include <tuple>

#include "kernel_params.h"
#include "tdsa_math.h"

namespace tdsa_fast {

inline int parse_mode(std::string_view mode) {
  if (mode == "nearest") return math::kNearest;
  if (mode == "bilinear") return math::kBilinear;
  if (mode == "bicubic") return math::kBicubic;
  TORCH_CHECK(false, "tdsa_fast: mode must be nearest, bilinear or bicubic; got '", std::string(mode), "'");
  return 0;
}

inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "tdsa_fast: ", name, " must be 4-D [B, C, H, W], got ", t.sizes());
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, "tdsa_fast: ", name,
              " must be float16, bfloat16, float32 or float64, got ", st);
  TORCH_CHECK(t.size(2) > 0 && t.size(3) > 0, "tdsa_fast: ", name, " must have non-empty H and W, got ", t.sizes());
}

inline void check_mask(const at::Tensor& mask, const at::Tensor& feat, const char* name) {
  TORCH_CHECK(mask.dim() == 2 && mask.size(1) == feat.size(1) && (mask.size(0) == 1 || mask.size(0) == feat.size(0)),
              "tdsa_fast: ", name, " must be [B, C] or [1, C] for a map of shape ", feat.sizes(), ", got ",
              mask.sizes());
  TORCH_CHECK(mask.is_floating_point() || mask.scalar_type() == at::kBool, "tdsa_fast: ", name,
              " must be floating or bool, got ", mask.scalar_type());
  TORCH_CHECK(mask.device() == feat.device(), "tdsa_fast: ", name, " is on ", mask.device(), " but the map is on ",
              feat.device());
}

inline int64_t check_cnum(const at::Tensor& feat, int64_t cnum, const char* name) {
  TORCH_CHECK(cnum >= 1 && feat.size(1) % cnum == 0, "tdsa_fast: ", name, "=", cnum,
              " must be positive and divide the channel count of a map of shape ", feat.sizes());
  // the kernels store channel indices in float
  TORCH_CHECK(cnum <= (int64_t{1} << 24), "tdsa_fast: ", name, "=", cnum, " is larger than 2^24");
  return feat.size(1) / cnum;
}

// low [B, C, H, W] and high [B, Ch, Hh, Wh]: same device, dtype and batch, Ch divides C.
// Returns xi = C / Ch. Any spatial sizes work (the upsample formulas hold for any ratio).
inline int64_t check_gate_pair(const at::Tensor& low, const at::Tensor& high) {
  check_map(low, "low");
  check_map(high, "high");
  TORCH_CHECK(low.device() == high.device(), "tdsa_fast: low is on ", low.device(), " but high is on ", high.device());
  TORCH_CHECK(low.scalar_type() == high.scalar_type(), "tdsa_fast: low and high must share a dtype, got ",
              low.scalar_type(), " and ", high.scalar_type());
  TORCH_CHECK(low.size(0) == high.size(0), "tdsa_fast: low ", low.sizes(), " and high ", high.sizes(),
              " must have the same batch size");
  TORCH_CHECK(high.size(1) >= 1 && low.size(1) % high.size(1) == 0, "tdsa_fast: low channels must be a multiple of high channels, got low ",
              low.sizes(), " and high ", high.sizes());
  return low.size(1) / high.size(1);
}

// The class groups of the two levels must line up: cnum_low is a multiple of xi.
inline void check_tdsa_groups(const at::Tensor& low, int64_t cnum_low, int64_t xi) {
  check_cnum(low, cnum_low, "cnum_low");
  TORCH_CHECK(cnum_low % xi == 0, "tdsa_fast: cnum_low=", cnum_low, " must be a multiple of xi = C_low / C_high = ", xi,
              " so that each class is gated by its own high channels");
}

inline void check_grad_terms(const at::Tensor& gg, const at::Tensor& gh, const at::Tensor& feat, int64_t S) {
  for (const auto* t : {&gg, &gh}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == feat.size(0) && t->size(1) == S, "tdsa_fast: grad_g / grad_h must be [",
                feat.size(0), ", ", S, "], got ", t->sizes());
    TORCH_CHECK(t->is_floating_point(), "tdsa_fast: grad_g / grad_h must be floating, got ", t->scalar_type());
    TORCH_CHECK(t->device() == feat.device(), "tdsa_fast: grad_g / grad_h are on ", t->device(), " but the map is on ",
                feat.device());
  }
}

inline void fill_strides(int64_t* dst, const at::Tensor& t) {
  for (int d = 0; d < 4; ++d) dst[d] = t.stride(d);
}

// The parts of a TermsParams that the forward and the backward share. `mask_acc` must be
// the mask converted to the accumulation dtype and made contiguous (it is tiny).
inline TermsParams terms_params(const at::Tensor& x, const at::Tensor& mask_acc, int64_t cnum) {
  TermsParams p;
  p.x = x.data_ptr();
  p.B = x.size(0);
  p.C = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  fill_strides(p.xs, x);
  p.cnum = cnum;
  p.S = x.size(1) / cnum;
  p.mask = mask_acc.data_ptr();
  p.mask_sb = mask_acc.size(0) == 1 ? 0 : mask_acc.size(1);
  return p;
}

inline void set_gate(TermsParams& p, const at::Tensor& high, int mode) {
  p.gated = true;
  p.high = high.data_ptr();
  p.Ch = high.size(1);
  p.Hh = high.size(2);
  p.Wh = high.size(3);
  fill_strides(p.hs, high);
  p.xi = p.C / p.Ch;
  p.mode = mode;
}

inline GateParams gate_params(const at::Tensor& low, const at::Tensor& high, int mode) {
  GateParams p;
  p.low = low.data_ptr();
  p.B = low.size(0);
  p.C = low.size(1);
  p.H = low.size(2);
  p.W = low.size(3);
  fill_strides(p.ls, low);
  p.high = high.data_ptr();
  p.Ch = high.size(1);
  p.Hh = high.size(2);
  p.Wh = high.size(3);
  fill_strides(p.hs, high);
  p.xi = p.C / p.Ch;
  p.mode = mode;
  return p;
}

// Which CPU kernel variant runs ("DEFAULT" or "AVX2"), and whether the CPU ops were
// compiled with OpenMP (at::parallel_for then runs on torch's pool); in cpu/ops_cpu.cpp.
const char* cpu_kernel_variant();
bool cpu_openmp();

}  // namespace tdsa_fast
