// CUDA implementations of the tdsa_fast ops: argument checks (shared with the CPU ops),
// output allocation, and the launches on the current stream of the inputs' device.
// Host code only (compiled by the C++ compiler); the kernels are in *_kernels.cu.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string_view>

#include "../op_common.h"
#include "launchers.h"

namespace tdsa_fast {
namespace {

// The kernels index inside one group with 32-bit ints.
void check_group_size(int64_t elems, const char* what) {
  TORCH_CHECK(elems < std::numeric_limits<int>::max(), "tdsa_fast (CUDA): one group of ", what, " holds ", elems,
              " elements, more than the kernels' 32-bit in-group indexing allows");
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "tdsa_fast: ", name, " must be a CUDA tensor");
}

// Global scratch for groups too large for shared memory (rare), then the launch on the
// current stream.
at::Tensor workspace(const at::Tensor& like, int64_t elems) {
  return at::empty({elems}, like.options().dtype(acc_dtype(like.scalar_type())));
}

void launch_terms(const at::Tensor& x, const TermsParams& p, bool backward) {
  const int64_t elems = cuda::terms_workspace(x.scalar_type(), p, backward);
  at::Tensor ws = elems > 0 ? workspace(x, elems) : at::Tensor();
  cuda::terms_launch(x.scalar_type(), p, backward, elems > 0 ? ws.data_ptr() : nullptr,
                     at::cuda::getCurrentCUDAStream());
}

void launch_gate(const at::Tensor& low, const GateParams& p, bool backward) {
  const int64_t elems = cuda::gate_workspace(low.scalar_type(), p, backward);
  at::Tensor ws = elems > 0 ? workspace(low, elems) : at::Tensor();
  cuda::gate_launch(low.scalar_type(), p, backward, elems > 0 ? ws.data_ptr() : nullptr,
                    at::cuda::getCurrentCUDAStream());
}

std::tuple<at::Tensor, at::Tensor> terms_forward(const at::Tensor& x, const at::Tensor& mask, int64_t cnum,
                                                 const at::Tensor* high, int mode) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto acc = acc_dtype(x.scalar_type());
  const int64_t B = x.size(0), S = x.size(1) / cnum;
  at::Tensor g = at::empty({B, S}, x.options().dtype(acc));
  at::Tensor h = at::empty({B, S}, x.options().dtype(acc));
  if (B * S == 0) return {g, h};
  check_group_size(cnum * x.size(2) * x.size(3), "the map");
  if (high != nullptr) {
    check_group_size(cnum * std::max(x.size(2), high->size(2)) * std::max(x.size(3), high->size(3)), "the gate");
  }
  const at::Tensor m = mask.to(acc).contiguous();
  TermsParams p = terms_params(x, m, cnum);
  if (high != nullptr) set_gate(p, *high, mode);
  p.g = g.data_ptr();
  p.h = h.data_ptr();
  launch_terms(x, p, false);
  return {g, h};
}

void terms_backward(const at::Tensor& grad_g, const at::Tensor& grad_h, const at::Tensor& x, const at::Tensor& mask,
                    int64_t cnum, const at::Tensor* high, int mode, at::Tensor& grad_x, at::Tensor* grad_high) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto acc = acc_dtype(x.scalar_type());
  const int64_t B = x.size(0), S = x.size(1) / cnum;
  if (B * S == 0) return;
  check_group_size(cnum * x.size(2) * x.size(3), "the map");
  const at::Tensor m = mask.to(acc).contiguous();
  const at::Tensor gg = grad_g.to(acc).contiguous();
  const at::Tensor gh = grad_h.to(acc).contiguous();
  TermsParams p = terms_params(x, m, cnum);
  if (high != nullptr) {
    check_group_size(cnum * std::max(x.size(2), high->size(2)) * std::max(x.size(3), high->size(3)), "the gate");
    set_gate(p, *high, mode);
    p.grad_high = grad_high->data_ptr();
    fill_strides(p.ghs, *grad_high);
  }
  p.grad_g = gg.data_ptr();
  p.grad_h = gh.data_ptr();
  p.grad_x = grad_x.data_ptr();
  fill_strides(p.gxs, grad_x);
  launch_terms(x, p, true);
}

std::tuple<at::Tensor, at::Tensor> mc_terms_cuda(const at::Tensor& feat, const at::Tensor& mask, int64_t cnum) {
  check_map(feat, "feat");
  check_cuda(feat, "feat");
  check_cnum(feat, cnum, "cnum");
  check_mask(mask, feat, "mask");
  return terms_forward(feat, mask, cnum, nullptr, 0);
}

at::Tensor mc_terms_backward_cuda(const at::Tensor& grad_g, const at::Tensor& grad_h, const at::Tensor& feat,
                                  const at::Tensor& mask, int64_t cnum) {
  check_map(feat, "feat");
  check_cuda(feat, "feat");
  const int64_t S = check_cnum(feat, cnum, "cnum");
  check_mask(mask, feat, "mask");
  check_grad_terms(grad_g, grad_h, feat, S);
  at::Tensor grad_feat = at::empty_like(feat);
  terms_backward(grad_g, grad_h, feat, mask, cnum, nullptr, 0, grad_feat, nullptr);
  return grad_feat;
}

GateParams gate_setup(const at::Tensor& low, const at::Tensor& high, int md) {
  const int64_t hmax = std::max(low.size(2), high.size(2)), wmax = std::max(low.size(3), high.size(3));
  check_group_size((low.size(1) / high.size(1) + 2) * hmax * wmax, "the gate");
  return gate_params(low, high, md);
}

at::Tensor topdown_gate_cuda(const at::Tensor& low, const at::Tensor& high, c10::string_view mode) {
  check_gate_pair(low, high);
  check_cuda(low, "low");
  const int md = parse_mode(std::string_view(mode.data(), mode.size()));
  const c10::cuda::CUDAGuard guard(low.device());
  at::Tensor out = at::empty_like(low);
  if (out.numel() == 0) return out;
  GateParams p = gate_setup(low, high, md);
  p.out = out.data_ptr();
  fill_strides(p.os, out);
  launch_gate(low, p, false);
  return out;
}

std::tuple<at::Tensor, at::Tensor> topdown_gate_backward_cuda(const at::Tensor& grad_out, const at::Tensor& low,
                                                              const at::Tensor& high, c10::string_view mode) {
  check_gate_pair(low, high);
  check_cuda(low, "low");
  const int md = parse_mode(std::string_view(mode.data(), mode.size()));
  TORCH_CHECK(grad_out.sizes() == low.sizes(), "tdsa_fast: grad_out must have low's shape ", low.sizes(), ", got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.device() == low.device(), "tdsa_fast: grad_out must be on ", low.device());
  const c10::cuda::CUDAGuard guard(low.device());
  at::Tensor go = grad_out.scalar_type() == low.scalar_type() ? grad_out : grad_out.to(low.scalar_type());
  at::Tensor grad_low = at::empty_like(low);
  at::Tensor grad_high = at::empty_like(high);
  if (low.numel() == 0) return {grad_low, grad_high.zero_()};
  GateParams p = gate_setup(low, high, md);
  p.grad_out = go.data_ptr();
  fill_strides(p.gos, go);
  p.grad_low = grad_low.data_ptr();
  fill_strides(p.gls, grad_low);
  p.grad_high = grad_high.data_ptr();
  fill_strides(p.ghs, grad_high);
  launch_gate(low, p, true);
  return {grad_low, grad_high};
}

std::tuple<at::Tensor, at::Tensor> tdsa_terms_cuda(const at::Tensor& low, const at::Tensor& high,
                                                   const at::Tensor& mask_low, int64_t cnum_low, c10::string_view mode) {
  const int64_t xi = check_gate_pair(low, high);
  check_cuda(low, "low");
  check_tdsa_groups(low, cnum_low, xi);
  check_mask(mask_low, low, "mask_low");
  const int md = parse_mode(std::string_view(mode.data(), mode.size()));
  return terms_forward(low, mask_low, cnum_low, &high, md);
}

std::tuple<at::Tensor, at::Tensor> tdsa_terms_backward_cuda(const at::Tensor& grad_g, const at::Tensor& grad_h,
                                                            const at::Tensor& low, const at::Tensor& high,
                                                            const at::Tensor& mask_low, int64_t cnum_low,
                                                            c10::string_view mode) {
  const int64_t xi = check_gate_pair(low, high);
  check_cuda(low, "low");
  check_tdsa_groups(low, cnum_low, xi);
  check_mask(mask_low, low, "mask_low");
  const int md = parse_mode(std::string_view(mode.data(), mode.size()));
  check_grad_terms(grad_g, grad_h, low, low.size(1) / cnum_low);
  const c10::cuda::CUDAGuard guard(low.device());
  at::Tensor grad_low = at::empty_like(low);
  at::Tensor grad_high = at::empty_like(high);
  if (low.size(0) == 0 || low.size(1) == 0) return {grad_low, grad_high.zero_()};
  terms_backward(grad_g, grad_h, low, mask_low, cnum_low, &high, md, grad_low, &grad_high);
  return {grad_low, grad_high};
}

}  // namespace

TORCH_LIBRARY_IMPL(tdsa_fast, CUDA, m) {
  m.impl("mc_terms", &mc_terms_cuda);
  m.impl("mc_terms_backward", &mc_terms_backward_cuda);
  m.impl("topdown_gate", &topdown_gate_cuda);
  m.impl("topdown_gate_backward", &topdown_gate_backward_cuda);
  m.impl("tdsa_terms", &tdsa_terms_cuda);
  m.impl("tdsa_terms_backward", &tdsa_terms_backward_cuda);
}

}  // namespace tdsa_fast
