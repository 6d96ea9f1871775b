// Plain-old-data descriptions of one launch of the kernels, shared by the host wrappers
// (csrc/cpu/ops_cpu.cpp, csrc/cuda/ops_cuda.cu) and the kernels. Sizes and strides are in
// elements; pointers are untyped (the kernels cast them to the dispatched storage type
// `scalar_t` or to the accumulation type `acc_t` as documented per field).
#pragma once

#include <cstdint>
#include <limits>

namespace tdsa_fast {

// The CUDA terms kernels' backward keeps each position's winning channels (of g's and of h's
// maps) as 2-byte indices, not 4 (at 448 px the gated backward then fits sm_80's opt-in): a
// class may have at most kMaxGroupChannels channels there, which the CUDA host checks.
using WinnerIndex = uint16_t;
constexpr int64_t kMaxGroupChannels = int64_t{std::numeric_limits<WinnerIndex>::max()} + 1;

// mc_terms (gated = false) and tdsa_terms (gated = true), forward and backward.
// One group = one (sample b, class i) pair; group index = b * S + i.
struct TermsParams {
  // x: the feature map (mc_terms) or the middle map `low` (tdsa_terms), [B, C, H, W], scalar_t.
  const void* x = nullptr;
  int64_t B = 0, C = 0, H = 0, W = 0;
  int64_t xs[4] = {0, 0, 0, 0};
  int64_t cnum = 1;  // channels per class of x
  int64_t S = 0;     // classes
  // mask: acc_t, contiguous [Bm, C]; mask_sb = 0 for a shared [1, C] mask, else C.
  const void* mask = nullptr;
  int64_t mask_sb = 0;
  // Gate (gated only): high [B, Ch, Hh, Wh], scalar_t; xi = C / Ch; mode = math::Mode.
  bool gated = false;
  const void* high = nullptr;
  int64_t Ch = 0, Hh = 0, Wh = 0;
  int64_t hs[4] = {0, 0, 0, 0};
  int64_t xi = 1;
  int mode = 0;
  // Scratch plan (host): exp(x - max) of every element kept in scratch (the `ex` region),
  // so that each is computed once per launch; see kernels::terms_cache_exp.
  bool cache_exp = false;
  // Scratch plan (host): the group of x is read from global memory in every pass instead of
  // copied into scratch (kernels' StreamedGroup layout: a dense group whose copy does not
  // fit a block's shared memory); the rest of the scratch stays in shared memory.
  bool stream_low = false;
  // Forward outputs: g, h, acc_t, contiguous [B, S].
  void* g = nullptr;
  void* h = nullptr;
  // Backward inputs: grad_g, grad_h, acc_t, contiguous [B, S].
  const void* grad_g = nullptr;
  const void* grad_h = nullptr;
  // Backward outputs (scalar_t): grad_x like x (strides gxs), grad_high like high (strides ghs).
  void* grad_x = nullptr;
  int64_t gxs[4] = {0, 0, 0, 0};
  void* grad_high = nullptr;
  int64_t ghs[4] = {0, 0, 0, 0};
};

// topdown_gate forward and backward. One group = one (sample b, high channel k) pair,
// which gates the xi low channels [k*xi, (k+1)*xi).
struct GateParams {
  const void* low = nullptr;  // [B, C, H, W], scalar_t
  int64_t B = 0, C = 0, H = 0, W = 0;
  int64_t ls[4] = {0, 0, 0, 0};
  const void* high = nullptr;  // [B, Ch, Hh, Wh], scalar_t
  int64_t Ch = 0, Hh = 0, Wh = 0;
  int64_t hs[4] = {0, 0, 0, 0};
  int64_t xi = 1;
  int mode = 0;
  void* out = nullptr;  // forward output, like low
  int64_t os[4] = {0, 0, 0, 0};
  const void* grad_out = nullptr;  // backward input, like low
  int64_t gos[4] = {0, 0, 0, 0};
  void* grad_low = nullptr;
  int64_t gls[4] = {0, 0, 0, 0};
  void* grad_high = nullptr;
  int64_t ghs[4] = {0, 0, 0, 0};
};

}  // namespace tdsa_fast
