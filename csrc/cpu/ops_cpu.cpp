// CPU implementations of the tdsa_fast ops: argument checks, output allocation, the
// interpolation tables, and at::parallel_for over the (sample, class) groups.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Version.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../op_common.h"
#include "cpu_kernels.h"

namespace tdsa_fast {
namespace {

const cpu::KernelSet& kernels() {
  static const cpu::KernelSet* ks = [] {
    const cpu::KernelSet* avx2 = cpu::kernels_avx2();
#if defined(__x86_64__) || defined(_M_X64)
    // torch's own choice ("DEFAULT", "AVX2", "AVX512"; honours ATEN_CPU_CAPABILITY).
    const std::string cap = at::get_cpu_capability();
    if (avx2 != nullptr && (cap == "AVX2" || cap == "AVX512")) return avx2;
#else
    (void)avx2;
#endif
    return &cpu::kernels_default();
  }();
  return *ks;
}

// Tables of one axis in the accumulation type: forward taps and the CSR adjoint.
template <typename acc_t>
struct AxisStorage {
  int ntaps = 1;
  std::vector<int64_t> idx, aptr, adst;
  std::vector<acc_t> w, aw;

  void build(int mode, int64_t in, int64_t out) {
    int64_t ti[math::kMaxTaps];
    acc_t tw[math::kMaxTaps];
    ntaps = math::axis_taps<acc_t>(mode, 0, in, out, ti, tw);
    idx.resize(static_cast<size_t>(out * ntaps));
    w.resize(idx.size());
    for (int64_t d = 0; d < out; ++d) {
      math::axis_taps<acc_t>(mode, d, in, out, idx.data() + d * ntaps, w.data() + d * ntaps);
    }
    // Same (output, tap) order as math::adjoint_gather, which the CUDA kernels use.
    aptr.assign(static_cast<size_t>(in + 1), 0);
    adst.clear();
    aw.clear();
    for (int64_t s = 0; s < in; ++s) {
      aptr[s] = static_cast<int64_t>(adst.size());
      int64_t lo, hi;
      math::adjoint_range(s, in, out, &lo, &hi);
      for (int64_t d = lo; d <= hi; ++d) {
        for (int k = 0; k < ntaps; ++k) {
          if (idx[d * ntaps + k] == s) {
            adst.push_back(d);
            aw.push_back(w[d * ntaps + k]);
          }
        }
      }
    }
    aptr[in] = static_cast<int64_t>(adst.size());
  }

  cpu::AxisTable view() const {
    cpu::AxisTable t;
    t.ntaps = ntaps;
    t.idx = idx.data();
    t.w = w.data();
    t.aptr = aptr.data();
    t.adst = adst.data();
    t.aw = aw.data();
    return t;
  }
};

template <typename acc_t>
struct TableStorage {
  AxisStorage<acc_t> rows, cols;
  cpu::GateTables view(int mode, int64_t Hh, int64_t Wh, int64_t H, int64_t W) {
    rows.build(mode, Hh, H);
    cols.build(mode, Wh, W);
    cpu::GateTables t;
    t.rows = rows.view();
    t.cols = cols.view();
    t.adjoint_identity = math::adjoint_is_identity(mode, Hh, Wh, H, W);
    t.mode = mode;
    return t;
  }
};

// Runs fn(begin, end) over `groups` groups on torch's intra-op thread pool. Each group
// costs about `work` element-passes; small groups are batched per task.
template <typename F>
void for_groups(int64_t groups, int64_t work, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work));
  at::parallel_for(0, groups, grain, fn);
}

// Calls fn(GateTables) with tables in the accumulation type of `dtype`
// (no tables are needed when `gated` is false).
template <typename F>
void with_tables(at::ScalarType dtype, bool gated, int mode, int64_t Hh, int64_t Wh, int64_t H, int64_t W,
                 const F& fn) {
  if (!gated) {
    fn(cpu::GateTables{});
  } else if (dtype == at::kDouble) {
    TableStorage<double> st;
    fn(st.view(mode, Hh, Wh, H, W));
  } else {
    TableStorage<float> st;
    fn(st.view(mode, Hh, Wh, H, W));
  }
}

std::tuple<at::Tensor, at::Tensor> terms_forward(const at::Tensor& x, const at::Tensor& mask, int64_t cnum,
                                                 const at::Tensor* high, int mode) {
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
  const auto dtype = x.scalar_type();
  with_tables(dtype, p.gated, mode, p.Hh, p.Wh, p.H, p.W, [&](const cpu::GateTables& tb) {
    for_groups(B * S, 4 * cnum * p.H * p.W, [&](int64_t begin, int64_t end) {
      kernels().terms_forward(dtype, p, tb, begin, end);
    });
  });
  return {g, h};
}

void terms_backward(const at::Tensor& grad_g, const at::Tensor& grad_h, const at::Tensor& x, const at::Tensor& mask,
                    int64_t cnum, const at::Tensor* high, int mode, at::Tensor& grad_x, at::Tensor* grad_high) {
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
  const auto dtype = x.scalar_type();
  with_tables(dtype, p.gated, mode, p.Hh, p.Wh, p.H, p.W, [&](const cpu::GateTables& tb) {
    for_groups(B * S, 8 * cnum * p.H * p.W, [&](int64_t begin, int64_t end) {
      kernels().terms_backward(dtype, p, tb, begin, end);
    });
  });
}

// ---- the ops ---------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> mc_terms_cpu(const at::Tensor& feat, const at::Tensor& mask, int64_t cnum) {
  check_map(feat, "feat");
  check_cnum(feat, cnum, "cnum");
  check_mask(mask, feat, "mask");
  return terms_forward(feat, mask, cnum, nullptr, 0);
}

at::Tensor mc_terms_backward_cpu(const at::Tensor& grad_g, const at::Tensor& grad_h, const at::Tensor& feat,
                                 const at::Tensor& mask, int64_t cnum) {
  check_map(feat, "feat");
  const int64_t S = check_cnum(feat, cnum, "cnum");
  check_mask(mask, feat, "mask");
  check_grad_terms(grad_g, grad_h, feat, S);
  at::Tensor grad_feat = at::empty_like(feat);
  terms_backward(grad_g, grad_h, feat, mask, cnum, nullptr, 0, grad_feat, nullptr);
  return grad_feat;
}

at::Tensor topdown_gate_cpu(const at::Tensor& low, const at::Tensor& high, c10::string_view mode) {
  check_gate_pair(low, high);
  const int md = parse_mode(std::string_view(mode.data(), mode.size()));
  at::Tensor out = at::empty_like(low);
  if (out.numel() == 0) return out;
  GateParams p = gate_params(low, high, md);
  p.out = out.data_ptr();
  fill_strides(p.os, out);
  const auto dtype = low.scalar_type();
  with_tables(dtype, true, md, p.Hh, p.Wh, p.H, p.W, [&](const cpu::GateTables& tb) {
    for_groups(p.B * p.Ch, 2 * p.xi * p.H * p.W, [&](int64_t begin, int64_t end) {
      kernels().gate_forward(dtype, p, tb, begin, end);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> topdown_gate_backward_cpu(const at::Tensor& grad_out, const at::Tensor& low,
                                                             const at::Tensor& high, c10::string_view mode) {
  check_gate_pair(low, high);
  const int md = parse_mode(std::string_view(mode.data(), mode.size()));
  TORCH_CHECK(grad_out.sizes() == low.sizes(), "tdsa_fast: grad_out must have low's shape ", low.sizes(), ", got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.device() == low.device(), "tdsa_fast: grad_out must be on ", low.device());
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
  const auto dtype = low.scalar_type();
  with_tables(dtype, true, md, p.Hh, p.Wh, p.H, p.W, [&](const cpu::GateTables& tb) {
    for_groups(p.B * p.Ch, 4 * p.xi * p.H * p.W, [&](int64_t begin, int64_t end) {
      kernels().gate_backward(dtype, p, tb, begin, end);
    });
  });
  return {grad_low, grad_high};
}

std::tuple<at::Tensor, at::Tensor> tdsa_terms_cpu(const at::Tensor& low, const at::Tensor& high,
                                                  const at::Tensor& mask_low, int64_t cnum_low, c10::string_view mode) {
  const int64_t xi = check_gate_pair(low, high);
  check_tdsa_groups(low, cnum_low, xi);
  check_mask(mask_low, low, "mask_low");
  const int md = parse_mode(std::string_view(mode.data(), mode.size()));
  return terms_forward(low, mask_low, cnum_low, &high, md);
}

std::tuple<at::Tensor, at::Tensor> tdsa_terms_backward_cpu(const at::Tensor& grad_g, const at::Tensor& grad_h,
                                                           const at::Tensor& low, const at::Tensor& high,
                                                           const at::Tensor& mask_low, int64_t cnum_low,
                                                           c10::string_view mode) {
  const int64_t xi = check_gate_pair(low, high);
  check_tdsa_groups(low, cnum_low, xi);
  check_mask(mask_low, low, "mask_low");
  const int md = parse_mode(std::string_view(mode.data(), mode.size()));
  check_grad_terms(grad_g, grad_h, low, low.size(1) / cnum_low);
  at::Tensor grad_low = at::empty_like(low);
  at::Tensor grad_high = at::empty_like(high);
  if (low.size(0) == 0 || low.size(1) == 0) return {grad_low, grad_high.zero_()};
  terms_backward(grad_g, grad_h, low, mask_low, cnum_low, &high, md, grad_low, &grad_high);
  return {grad_low, grad_high};
}

}  // namespace

const char* cpu_kernel_variant() { return kernels().name; }

bool cpu_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY_IMPL(tdsa_fast, CPU, m) {
  m.impl("mc_terms", &mc_terms_cpu);
  m.impl("mc_terms_backward", &mc_terms_backward_cpu);
  m.impl("topdown_gate", &topdown_gate_cpu);
  m.impl("topdown_gate_backward", &topdown_gate_backward_cpu);
  m.impl("tdsa_terms", &tdsa_terms_cpu);
  m.impl("tdsa_terms_backward", &tdsa_terms_backward_cpu);
}

}  // namespace tdsa_fast
