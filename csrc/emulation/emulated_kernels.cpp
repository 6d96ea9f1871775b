// The CUDA kernels of csrc/cuda/*.cuh compiled for the CPU and run by the emulation in
// cuda_emulation.h: a Python module (built by tests/test_ops_cuda.py with
// torch.utils.cpp_extension.load) whose functions take CPU tensors and launch the kernels
// exactly as csrc/cuda/*.cu do, with the group scratch in "shared memory" or, with
// force_global=True, in a global workspace with a grid smaller than the group count (the
// large-group fallback, blocks looping over groups). Not part of the package build.
#include <torch/extension.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "../op_common.h"
#include "cuda_emulation.h"
#include "../cuda/gate_kernels.cuh"
#include "../cuda/terms_kernels.cuh"

namespace {

using namespace tdsa_fast;
using cuda::kThreads;

template <typename F>
void dispatch(at::ScalarType dt, const F& f) {
  switch (dt) {
    case at::kFloat:
      f(float{}, float{});
      break;
    case at::kDouble:
      f(double{}, double{});
      break;
    case at::kHalf:
      f(c10::Half{}, float{});
      break;
    case at::kBFloat16:
      f(c10::BFloat16{}, float{});
      break;
    default:
      TORCH_CHECK(false, "unsupported dtype");
  }
}

template <typename acc_t, typename Kernel, typename Params>
void run(Kernel kernel, const Params& p, int64_t groups, int64_t per_group, size_t static_bytes, bool force_global) {
  (void)static_bytes;
  if (groups == 0) return;
  if (!force_global) {
    tdsa_emu::launch(static_cast<unsigned>(groups), kThreads, static_cast<size_t>(per_group) * sizeof(acc_t), kernel, p,
                     static_cast<acc_t*>(nullptr), int64_t{0}, groups);
  } else {
    const int64_t grid = std::min<int64_t>(groups, 3);
    std::vector<acc_t> ws(static_cast<size_t>(grid * per_group), std::numeric_limits<acc_t>::quiet_NaN());
    tdsa_emu::launch(static_cast<unsigned>(grid), kThreads, 0, kernel, p, ws.data(), per_group, groups);
  }
}

std::vector<at::Tensor> terms(const std::vector<at::Tensor>& grads, const at::Tensor& x, const at::Tensor& mask,
                              int64_t cnum, const std::optional<at::Tensor>& high, const std::string& mode,
                              bool force_global) {
  const bool bwd = !grads.empty();
  const auto acc = acc_dtype(x.scalar_type());
  const int64_t B = x.size(0), S = x.size(1) / cnum;
  const at::Tensor m = mask.to(acc).contiguous();
  TermsParams p = terms_params(x, m, cnum);
  const int md = parse_mode(mode);
  if (high) set_gate(p, *high, md);
  at::Tensor g = at::empty({B, S}, x.options().dtype(acc)), h = at::empty({B, S}, x.options().dtype(acc));
  at::Tensor gg, gh, gx, ghigh;
  if (bwd) {
    gg = grads[0].to(acc).contiguous();
    gh = grads[1].to(acc).contiguous();
    gx = at::empty_like(x);
    p.grad_g = gg.data_ptr();
    p.grad_h = gh.data_ptr();
    p.grad_x = gx.data_ptr();
    fill_strides(p.gxs, gx);
    if (high) {
      ghigh = at::empty_like(*high);
      p.grad_high = ghigh.data_ptr();
      fill_strides(p.ghs, ghigh);
    }
  } else {
    p.g = g.data_ptr();
    p.h = h.data_ptr();
  }
  dispatch(x.scalar_type(), [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using acc_t = decltype(a);
    const cuda::kernels::TermsLayout Lt(p, bwd);
    const int64_t groups = B * S;
    if (p.gated && bwd) run<acc_t>(cuda::kernels::terms_kernel<scalar_t, acc_t, true, true>, p, groups, Lt.total, 0, force_global);
    if (p.gated && !bwd) run<acc_t>(cuda::kernels::terms_kernel<scalar_t, acc_t, true, false>, p, groups, Lt.total, 0, force_global);
    if (!p.gated && bwd) run<acc_t>(cuda::kernels::terms_kernel<scalar_t, acc_t, false, true>, p, groups, Lt.total, 0, force_global);
    if (!p.gated && !bwd) run<acc_t>(cuda::kernels::terms_kernel<scalar_t, acc_t, false, false>, p, groups, Lt.total, 0, force_global);
  });
  if (!bwd) return {g, h};
  if (high) return {gx, ghigh};
  return {gx};
}

std::vector<at::Tensor> gate(const std::optional<at::Tensor>& grad_out, const at::Tensor& low, const at::Tensor& high,
                             const std::string& mode, bool force_global) {
  const bool bwd = grad_out.has_value();
  GateParams p = gate_params(low, high, parse_mode(mode));
  at::Tensor out, go, gl, gh;
  if (bwd) {
    go = grad_out->to(low.scalar_type());
    gl = at::empty_like(low);
    gh = at::empty_like(high);
    p.grad_out = go.data_ptr();
    fill_strides(p.gos, go);
    p.grad_low = gl.data_ptr();
    fill_strides(p.gls, gl);
    p.grad_high = gh.data_ptr();
    fill_strides(p.ghs, gh);
  } else {
    out = at::empty_like(low);
    p.out = out.data_ptr();
    fill_strides(p.os, out);
  }
  dispatch(low.scalar_type(), [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using acc_t = decltype(a);
    const int64_t per_group = cuda::kernels::gate_scratch(p, bwd);
    if (bwd) {
      run<acc_t>(cuda::kernels::gate_kernel<scalar_t, acc_t, true>, p, p.B * p.Ch, per_group, 0, force_global);
    } else {
      run<acc_t>(cuda::kernels::gate_kernel<scalar_t, acc_t, false>, p, p.B * p.Ch, per_group, 0, force_global);
    }
  });
  if (bwd) return {gl, gh};
  return {out};
}

}  // namespace

namespace tdsa_fast {
// Referenced by op_common.h's declarations; unused here.
const char* cpu_kernel_variant() { return "emulation"; }
bool cpu_openmp() { return false; }
}  // namespace tdsa_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("terms", &terms, "mc_terms / tdsa_terms kernels (forward when grads is empty, else backward)");
  m.def("gate", &gate, "topdown_gate kernels (forward when grad_out is None, else backward)");
}
