// The six ops' host wrappers, one template for the CPU and the CUDA registrations: the
// argument checks, the output allocation, the empty-input shortcuts and the launch
// descriptions (TermsParams, GateParams) are the same code on both devices, so the CPU
// tests cover the CUDA ops' host logic too. What differs is the device policy `Dev`:
//
//   Dev::Guard                                   constructed from the inputs' device
//                                                (CUDA: switches the current device)
//   Dev::check_device(const at::Tensor&, name)   the inputs are on this device
//   Dev::run_terms(dtype, const TermsParams&, backward, const at::Tensor& like)
//   Dev::run_gate(dtype, const GateParams&, backward, const at::Tensor& like)
//                                                run the kernels described by the params
//                                                (`like`: a tensor of the inputs' device,
//                                                for scratch allocations); called only when
//                                                there is at least one group
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string_view>
#include <tuple>

#include "op_common.h"

namespace tdsa_fast {

template <class Dev>
struct OpWrappers {
  using Pair = std::tuple<at::Tensor, at::Tensor>;

  static Pair mc_terms(const at::Tensor& feat, const at::Tensor& mask, int64_t cnum) {
    check_map(feat, "feat");
    Dev::check_device(feat, "feat");
    check_cnum(feat, cnum, "cnum");
    check_mask(mask, feat, "mask");
    return terms_forward(feat, mask, cnum, nullptr, 0);
  }

  static at::Tensor mc_terms_backward(const at::Tensor& grad_g, const at::Tensor& grad_h, const at::Tensor& feat,
                                      const at::Tensor& mask, int64_t cnum) {
    check_map(feat, "feat");
    Dev::check_device(feat, "feat");
    const int64_t S = check_cnum(feat, cnum, "cnum");
    check_mask(mask, feat, "mask");
    check_grad_terms(grad_g, grad_h, feat, S);
    const typename Dev::Guard guard(feat.device());
    at::Tensor grad_feat = at::empty_like(feat);
    terms_backward(grad_g, grad_h, feat, mask, cnum, nullptr, 0, grad_feat, nullptr);
    return grad_feat;
  }

  static at::Tensor topdown_gate(const at::Tensor& low, const at::Tensor& high, c10::string_view mode) {
    check_gate_pair(low, high);
    Dev::check_device(low, "low");
    const int md = parse_mode(std::string_view(mode.data(), mode.size()));
    const typename Dev::Guard guard(low.device());
    at::Tensor out = at::empty_like(low);
    if (out.numel() == 0) return out;
    GateParams p = gate_params(low, high, md);
    p.out = out.data_ptr();
    fill_strides(p.os, out);
    Dev::run_gate(low.scalar_type(), p, false, low);
    return out;
  }

  static Pair topdown_gate_backward(const at::Tensor& grad_out, const at::Tensor& low, const at::Tensor& high,
                                    c10::string_view mode) {
    check_gate_pair(low, high);
    Dev::check_device(low, "low");
    const int md = parse_mode(std::string_view(mode.data(), mode.size()));
    TORCH_CHECK(grad_out.sizes() == low.sizes(), "tdsa_fast: grad_out must have low's shape ", low.sizes(),
                ", got ", grad_out.sizes());
    TORCH_CHECK(grad_out.device() == low.device(), "tdsa_fast: grad_out must be on ", low.device());
    const typename Dev::Guard guard(low.device());
    at::Tensor go = grad_out.scalar_type() == low.scalar_type() ? grad_out : grad_out.to(low.scalar_type());
    at::Tensor grad_low = at::empty_like(low);
    at::Tensor grad_high = at::empty_like(high);
    if (low.numel() == 0) return {grad_low, grad_high.zero_()};
    GateParams p = gate_params(low, high, md);
    p.grad_out = go.data_ptr();
    fill_strides(p.gos, go);
    p.grad_low = grad_low.data_ptr();
    fill_strides(p.gls, grad_low);
    p.grad_high = grad_high.data_ptr();
    fill_strides(p.ghs, grad_high);
    Dev::run_gate(low.scalar_type(), p, true, low);
    return {grad_low, grad_high};
  }

  static Pair tdsa_terms(const at::Tensor& low, const at::Tensor& high, const at::Tensor& mask_low,
                         int64_t cnum_low, c10::string_view mode) {
    const int64_t xi = check_gate_pair(low, high);
    Dev::check_device(low, "low");
    check_tdsa_groups(low, cnum_low, xi);
    check_mask(mask_low, low, "mask_low");
    const int md = parse_mode(std::string_view(mode.data(), mode.size()));
    return terms_forward(low, mask_low, cnum_low, &high, md);
  }

  static Pair tdsa_terms_backward(const at::Tensor& grad_g, const at::Tensor& grad_h, const at::Tensor& low,
                                  const at::Tensor& high, const at::Tensor& mask_low, int64_t cnum_low,
                                  c10::string_view mode) {
    const int64_t xi = check_gate_pair(low, high);
    Dev::check_device(low, "low");
    check_tdsa_groups(low, cnum_low, xi);
    check_mask(mask_low, low, "mask_low");
    const int md = parse_mode(std::string_view(mode.data(), mode.size()));
    check_grad_terms(grad_g, grad_h, low, low.size(1) / cnum_low);
    const typename Dev::Guard guard(low.device());
    at::Tensor grad_low = at::empty_like(low);
    at::Tensor grad_high = at::empty_like(high);
    if (low.size(0) == 0 || low.size(1) == 0) return {grad_low, grad_high.zero_()};
    terms_backward(grad_g, grad_h, low, mask_low, cnum_low, &high, md, grad_low, &grad_high);
    return {grad_low, grad_high};
  }

 private:
  // g and h [B, S] in the accumulation dtype; `high` (the gated ops) or nullptr.
  static Pair terms_forward(const at::Tensor& x, const at::Tensor& mask, int64_t cnum, const at::Tensor* high,
                            int mode) {
    const typename Dev::Guard guard(x.device());
    const auto acc = acc_dtype(x.scalar_type());
    const int64_t B = x.size(0), S = x.size(1) / cnum;
    at::Tensor g = at::empty({B, S}, x.options().dtype(acc));
    at::Tensor h = at::empty({B, S}, x.options().dtype(acc));
    if (B * S == 0) return {g, h};
    const at::Tensor m = mask.to(acc).contiguous();
    TermsParams p = terms_params(x, m, cnum);
    if (high != nullptr) set_gate(p, *high, mode);
    p.g = g.data_ptr();
    p.h = h.data_ptr();
    Dev::run_terms(x.scalar_type(), p, false, x);
    return {g, h};
  }

  // Writes grad_x (and grad_high for the gated ops), allocated by the caller.
  static void terms_backward(const at::Tensor& grad_g, const at::Tensor& grad_h, const at::Tensor& x,
                             const at::Tensor& mask, int64_t cnum, const at::Tensor* high, int mode,
                             at::Tensor& grad_x, at::Tensor* grad_high) {
    const auto acc = acc_dtype(x.scalar_type());
    const int64_t B = x.size(0), S = x.size(1) / cnum;
    if (B * S == 0) return;
    const at::Tensor m = mask.to(acc).contiguous();
    const at::Tensor gg = grad_g.to(acc).contiguous();
    const at::Tensor gh = grad_h.to(acc).contiguous();
    TermsParams p = terms_params(x, m, cnum);
    if (high != nullptr) {
      set_gate(p, *high, mode);
      p.grad_high = grad_high->data_ptr();
      fill_strides(p.ghs, *grad_high);
    }
    p.grad_g = gg.data_ptr();
    p.grad_h = gh.data_ptr();
    p.grad_x = grad_x.data_ptr();
    fill_strides(p.gxs, grad_x);
    Dev::run_terms(x.scalar_type(), p, true, x);
  }
};

}  // namespace tdsa_fast
