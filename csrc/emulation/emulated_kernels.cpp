// The CUDA kernels of csrc/cuda/*.cuh compiled for the CPU and run by the emulation in
// cuda_emulation.h: a Python module (built by tests/test_ops_cuda.py with
// torch.utils.cpp_extension.load) whose functions take CPU tensors, run the ops' host
// wrappers that the CUDA ops run (op_wrappers.h) and launch the kernels exactly as
// csrc/cuda/*.cu do, with the group scratch in "shared memory" or, with
// force_global=True, in a global workspace with a grid smaller than the group count (the
// large-group fallback, blocks looping over groups). Not part of the package build.
#include <torch/extension.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "../op_common.h"
#include "../op_wrappers.h"
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

// Launches a kernel variant as csrc/cuda/*.cu do: the scratch in "shared memory"
// (`bytes` of dynamic shared memory per block, one block per group), or, when
// force_global, in a global workspace of `bytes` per block with fewer blocks than groups.
template <typename Kernel, typename Params>
void run(Kernel kernel, const Params& p, int64_t groups, int64_t bytes, bool global) {
  if (groups == 0) return;
  if (!global) {
    tdsa_emu::launch(static_cast<unsigned>(groups), kThreads, static_cast<size_t>(bytes), kernel, p,
                     static_cast<unsigned char*>(nullptr), int64_t{0}, groups);
  } else {
    const int64_t grid = std::min<int64_t>(groups, 3);
    std::vector<unsigned char> ws(static_cast<size_t>(grid * bytes), 0xFF);  // NaN bytes
    tdsa_emu::launch(static_cast<unsigned>(grid), kThreads, 0, kernel, p, ws.data(), bytes, groups);
  }
}

// The variant choice of csrc/cuda/*.cu: GlobalScratch + StridedGroup for the fallback, else
// shared-memory scratch, DenseGroup when every tensor of the launch is dense group-wise.
template <template <class, class> class K, typename Params>
void run_variant(const Params& p, int64_t groups, int64_t bytes, bool dense, bool global) {
  using cuda::DenseGroup;
  using cuda::GlobalScratch;
  using cuda::SharedScratch;
  using cuda::StridedGroup;
  if (global) {
    run(K<GlobalScratch, StridedGroup>::fn, p, groups, bytes, true);
  } else if (dense) {
    run(K<SharedScratch, DenseGroup>::fn, p, groups, bytes, false);
  } else {
    run(K<SharedScratch, StridedGroup>::fn, p, groups, bytes, false);
  }
}

template <typename scalar_t, typename acc_t, bool GATED, bool BWD>
struct TermsK {
  template <class Where, class Layout>
  struct K {
    static constexpr auto fn = cuda::kernels::terms_kernel<scalar_t, acc_t, GATED, BWD, Where, Layout>;
  };
};

template <typename scalar_t, typename acc_t, bool BWD>
struct GateK {
  template <class Where, class Layout>
  struct K {
    static constexpr auto fn = cuda::kernels::gate_kernel<scalar_t, acc_t, BWD, Where, Layout>;
  };
};

// The emulated-device policy of OpWrappers (csrc/op_wrappers.h): the ops below run the
// same host wrappers as the CUDA ops, with the kernel launches emulated on the CPU.
struct EmulatedDevice {
  struct Guard {
    explicit Guard(const at::Device&) {}
  };
  static inline bool force_global = false;  // set per call by the module's functions

  static void check_device(const at::Tensor&, const char*) {}

  static void run_terms(at::ScalarType dtype, const TermsParams& p, bool bwd, const at::Tensor&) {
    dispatch(dtype, [&](auto s, auto a) {
      using scalar_t = decltype(s);
      using acc_t = decltype(a);
      const cuda::kernels::TermsLayout Lt(p, bwd, sizeof(scalar_t), sizeof(acc_t));
      const int64_t groups = p.B * p.S;
      const bool dense = cuda::kernels::terms_dense(p, bwd);
      if (p.gated && bwd) run_variant<TermsK<scalar_t, acc_t, true, true>::template K>(p, groups, Lt.total, dense, force_global);
      if (p.gated && !bwd) run_variant<TermsK<scalar_t, acc_t, true, false>::template K>(p, groups, Lt.total, dense, force_global);
      if (!p.gated && bwd) run_variant<TermsK<scalar_t, acc_t, false, true>::template K>(p, groups, Lt.total, dense, force_global);
      if (!p.gated && !bwd) run_variant<TermsK<scalar_t, acc_t, false, false>::template K>(p, groups, Lt.total, dense, force_global);
    });
  }

  static void run_gate(at::ScalarType dtype, const GateParams& p, bool bwd, const at::Tensor&) {
    dispatch(dtype, [&](auto s, auto a) {
      using scalar_t = decltype(s);
      using acc_t = decltype(a);
      const cuda::kernels::GateLayout Lt(p, bwd, sizeof(scalar_t), sizeof(acc_t));
      const bool dense = cuda::kernels::gate_dense(p, bwd);
      if (bwd) {
        run_variant<GateK<scalar_t, acc_t, true>::template K>(p, p.B * p.Ch, Lt.total, dense, force_global);
      } else {
        run_variant<GateK<scalar_t, acc_t, false>::template K>(p, p.B * p.Ch, Lt.total, dense, force_global);
      }
    });
  }
};

using EmulatedOps = OpWrappers<EmulatedDevice>;

// mc_terms / tdsa_terms (with `high`): the forward when grads is empty, else the backward
// with grads = (grad_g, grad_h).
std::vector<at::Tensor> terms(const std::vector<at::Tensor>& grads, const at::Tensor& x, const at::Tensor& mask,
                              int64_t cnum, const std::optional<at::Tensor>& high, const std::string& mode,
                              bool force_global) {
  EmulatedDevice::force_global = force_global;
  if (grads.empty()) {
    auto [g, h] = high ? EmulatedOps::tdsa_terms(x, *high, mask, cnum, mode) : EmulatedOps::mc_terms(x, mask, cnum);
    return {g, h};
  }
  TORCH_CHECK(grads.size() == 2, "grads must be (grad_g, grad_h)");
  if (!high) return {EmulatedOps::mc_terms_backward(grads[0], grads[1], x, mask, cnum)};
  auto [gl, gh] = EmulatedOps::tdsa_terms_backward(grads[0], grads[1], x, *high, mask, cnum, mode);
  return {gl, gh};
}

// topdown_gate: the forward when grad_out is None, else the backward.
std::vector<at::Tensor> gate(const std::optional<at::Tensor>& grad_out, const at::Tensor& low, const at::Tensor& high,
                             const std::string& mode, bool force_global) {
  EmulatedDevice::force_global = force_global;
  if (!grad_out) return {EmulatedOps::topdown_gate(low, high, mode)};
  auto [gl, gh] = EmulatedOps::topdown_gate_backward(*grad_out, low, high, mode);
  return {gl, gh};
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
