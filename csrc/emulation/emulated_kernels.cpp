// The CUDA kernels of csrc/cuda/*.cuh and their host launch code (csrc/cuda/*.cu, included
// here unchanged) compiled for the CPU and run by the emulation in cuda_emulation.h: a
// Python module (built by tests/emulation_helpers.py with torch.utils.cpp_extension.load)
// whose functions take CPU tensors and run the ops' host wrappers that the CUDA ops run
// (op_wrappers.h); the launches go through the real terms_workspace / terms_launch /
// gate_workspace / gate_launch (plan_scratch, the opt-in, the fallback's grid and
// workspace) against the emulated device, or, with force_global=True, straight to the
// global-scratch variant with a grid smaller than the group count (the large-group
// fallback, blocks looping over groups, on shapes small enough for shared memory).
// configure() sets the schedule, the fill and the device; stats() reads the counters;
// neighbour_dot() runs the planted-defect kernels of planted_defects.h. Not part of the
// package build.
#include <torch/extension.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "../op_common.h"
#include "../op_wrappers.h"
#include "cuda_emulation.h"
#include "../cuda/gate_kernels.cu"
#include "../cuda/terms_kernels.cu"
#include "planted_defects.h"

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

// A global buffer of `bytes` between guard zones, filled as fresh scratch; check() raises
// when a guard byte changed (a write out of bounds of the workspace).
struct GuardedBuffer {
  std::vector<unsigned char> raw;
  unsigned char* data = nullptr;
  size_t bytes = 0;
  explicit GuardedBuffer(size_t n) : raw(n + 2 * tdsa_emu::kGuard + 16), bytes(n) {
    const uintptr_t a = (reinterpret_cast<uintptr_t>(raw.data()) + tdsa_emu::kGuard + 15) & ~uintptr_t(15);
    data = reinterpret_cast<unsigned char*>(a);
    tdsa_emu::fill_bytes(data, n, 0x5A5A);
    for (size_t i = 0; i < tdsa_emu::kGuard; ++i) data[i - tdsa_emu::kGuard] = tdsa_emu::guard_byte(i);
    for (size_t i = 0; i < tdsa_emu::kGuard; ++i) data[n + i] = tdsa_emu::guard_byte(i);
  }
  void check() const {
    for (size_t i = 0; i < tdsa_emu::kGuard; ++i) {
      TORCH_CHECK(data[i - tdsa_emu::kGuard] == tdsa_emu::guard_byte(i) && data[bytes + i] == tdsa_emu::guard_byte(i),
                  "global workspace out of bounds: a guard byte of the ", bytes, "-byte workspace changed");
    }
  }
};

// The large-group fallback forced on a small shape: the global-scratch variant with a
// workspace of `bytes` per block and fewer blocks than groups.
template <typename Kernel, typename Params>
void run_forced_global(Kernel kernel, const Params& p, int64_t groups, int64_t bytes) {
  if (groups == 0) return;
  const int64_t grid = std::min<int64_t>(groups, 3);
  GuardedBuffer ws(static_cast<size_t>(grid * bytes));
  tdsa_emu::launch(reinterpret_cast<const void*>(kernel), static_cast<unsigned>(grid), kThreads, 0, kernel, p, ws.data,
                   bytes, groups);
  tdsa_emu::launch_check();
  ws.check();
}

// The real host path: *_workspace sizes the global workspace (0 when a group fits in
// shared memory), allocated here like ops_cuda.cpp's (acc_t values), then *_launch.
template <typename Workspace, typename Launch>
void run_host_path(at::ScalarType dtype, const Workspace& workspace, const Launch& launch) {
  const int64_t elems = workspace();
  const int64_t acc = dtype == at::kDouble ? 8 : 4;
  GuardedBuffer ws(static_cast<size_t>(elems * acc));
  launch(elems > 0 ? static_cast<void*>(ws.data) : nullptr);
  ws.check();
}

// The emulated-device policy of OpWrappers (csrc/op_wrappers.h): the ops below run the
// same host wrappers as the CUDA ops, with the kernel launches emulated on the CPU.
struct EmulatedDevice {
  struct Guard {
    explicit Guard(const at::Device&) {}
  };
  static inline bool force_global = false;  // set per call by the module's functions

  static void check_device(const at::Tensor&, const char*) {}

  static void run_terms(at::ScalarType dtype, const TermsParams& p, bool bwd, const at::Tensor&) {
    if (!force_global) {
      run_host_path(
          dtype, [&] { return cuda::terms_workspace(dtype, p, bwd); },
          [&](void* ws) { cuda::terms_launch(dtype, p, bwd, ws, nullptr); });
      return;
    }
    dispatch(dtype, [&](auto s, auto a) {
      using scalar_t = decltype(s);
      using acc_t = decltype(a);
      using cuda::GlobalScratch;
      using cuda::StridedGroup;
      using cuda::kernels::terms_kernel;
      const cuda::kernels::TermsLayout Lt(p, bwd, sizeof(scalar_t), sizeof(acc_t));
      const int64_t groups = p.B * p.S;
      if (p.gated && bwd) run_forced_global(terms_kernel<scalar_t, acc_t, true, true, GlobalScratch, StridedGroup>, p, groups, Lt.total);
      if (p.gated && !bwd) run_forced_global(terms_kernel<scalar_t, acc_t, true, false, GlobalScratch, StridedGroup>, p, groups, Lt.total);
      if (!p.gated && bwd) run_forced_global(terms_kernel<scalar_t, acc_t, false, true, GlobalScratch, StridedGroup>, p, groups, Lt.total);
      if (!p.gated && !bwd) run_forced_global(terms_kernel<scalar_t, acc_t, false, false, GlobalScratch, StridedGroup>, p, groups, Lt.total);
    });
  }

  static void run_gate(at::ScalarType dtype, const GateParams& p, bool bwd, const at::Tensor&) {
    if (!force_global) {
      run_host_path(
          dtype, [&] { return cuda::gate_workspace(dtype, p, bwd); },
          [&](void* ws) { cuda::gate_launch(dtype, p, bwd, ws, nullptr); });
      return;
    }
    dispatch(dtype, [&](auto s, auto a) {
      using scalar_t = decltype(s);
      using acc_t = decltype(a);
      using cuda::GlobalScratch;
      using cuda::StridedGroup;
      using cuda::kernels::gate_kernel;
      const cuda::kernels::GateLayout Lt(p, bwd, sizeof(scalar_t), sizeof(acc_t));
      if (bwd) {
        run_forced_global(gate_kernel<scalar_t, acc_t, true, GlobalScratch, StridedGroup>, p, p.B * p.Ch, Lt.total);
      } else {
        run_forced_global(gate_kernel<scalar_t, acc_t, false, GlobalScratch, StridedGroup>, p, p.B * p.Ch, Lt.total);
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

namespace {

using namespace tdsa_fast;
using cuda::kThreads;

// The planted-defect kernel of planted_defects.h on x [groups, n] (float32 or bfloat16,
// float accumulation): out [groups] float32.
at::Tensor neighbour_dot(const at::Tensor& x, int64_t defect, int64_t grid) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x: a contiguous [groups, n] tensor");
  const int64_t groups = x.size(0), n = x.size(1);
  at::Tensor out = at::empty({groups}, x.options().dtype(at::kFloat));
  const size_t bytes = static_cast<size_t>(cuda::planted::neighbour_dot_bytes(n, 4));
  auto go = [&](auto s, auto k) {
    using scalar_t = decltype(s);
    tdsa_emu::launch(reinterpret_cast<const void*>(k), static_cast<unsigned>(std::min(grid, groups)), kThreads, bytes, k,
                     static_cast<const scalar_t*>(x.data_ptr()), static_cast<int>(n), out.data_ptr<float>(), groups);
    tdsa_emu::launch_check();
  };
  using namespace cuda::planted;
  auto with_defect = [&](auto s) {
    using scalar_t = decltype(s);
    switch (defect) {
      case kNone:
        return go(s, neighbour_dot_kernel<scalar_t, float, kNone>);
      case kMissingBarrier:
        return go(s, neighbour_dot_kernel<scalar_t, float, kMissingBarrier>);
      case kUninitialisedRead:
        return go(s, neighbour_dot_kernel<scalar_t, float, kUninitialisedRead>);
      case kOutOfBounds:
        return go(s, neighbour_dot_kernel<scalar_t, float, kOutOfBounds>);
      case kDivergentBarrier:
        return go(s, neighbour_dot_kernel<scalar_t, float, kDivergentBarrier>);
      default:
        TORCH_CHECK(false, "unknown defect ", defect);
    }
  };
  if (x.scalar_type() == at::kBFloat16) {
    with_defect(c10::BFloat16{});
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "x: float32 or bfloat16");
    with_defect(float{});
  }
  return out;
}

// Sets what is given (None keeps the current value).
void configure(std::optional<int64_t> schedule, std::optional<int64_t> seed, std::optional<int64_t> fill,
               std::optional<int64_t> sms, std::optional<int64_t> optin, std::optional<int64_t> occupancy,
               std::optional<int64_t> sm_smem) {
  TORCH_CHECK(!schedule || (*schedule >= 0 && *schedule <= 2), "schedule: 0 (forward), 1 (reverse), 2 (seeded random)");
  TORCH_CHECK(!fill || (*fill >= -1 && *fill <= 255), "fill: a byte, or -1 for seeded random bytes");
  tdsa_emu::Config& c = tdsa_emu::config();
  if (schedule) c.schedule = static_cast<int>(*schedule);
  if (seed) c.seed = static_cast<uint64_t>(*seed);
  if (fill) c.fill = static_cast<int>(*fill);
  if (sms) c.sms = static_cast<int>(*sms);
  if (optin) c.optin = static_cast<int>(*optin);
  if (occupancy) c.occupancy = static_cast<int>(*occupancy);
  if (sm_smem) c.sm_smem = static_cast<int>(*sm_smem);
}

std::map<std::string, int64_t> config() {
  const tdsa_emu::Config& c = tdsa_emu::config();
  return {{"schedule", c.schedule}, {"seed", static_cast<int64_t>(c.seed)}, {"fill", c.fill}, {"sms", c.sms},
          {"optin", c.optin},       {"occupancy", c.occupancy},             {"static_smem", static_cast<int64_t>(c.static_smem)},
          {"sm_smem", c.sm_smem}};
}

std::map<std::string, int64_t> stats(bool reset) {
  tdsa_emu::Stats& s = tdsa_emu::stats();
  std::map<std::string, int64_t> r{{"launches", s.launches},
                                   {"blocks", s.blocks},
                                   {"switches", s.switches},
                                   {"barriers", s.barriers},
                                   {"set_attribute", s.set_attribute},
                                   {"opt_in_launches", s.opt_in_launches},
                                   {"max_dynamic_smem", static_cast<int64_t>(s.max_dynamic_smem)},
                                   {"max_grid", s.max_grid},
                                   {"no_dynamic_smem_launches", s.no_dynamic_smem_launches},
                                   {"threads", kThreads}};
  if (reset) s = tdsa_emu::Stats{};
  return r;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("terms", &terms, "mc_terms / tdsa_terms kernels (forward when grads is empty, else backward)");
  m.def("gate", &gate, "topdown_gate kernels (forward when grad_out is None, else backward)");
  m.def("neighbour_dot", &neighbour_dot, "the planted-defect kernel (defect 0: none)", pybind11::arg("x"),
        pybind11::arg("defect"), pybind11::arg("grid") = 3);
  m.def("configure", &configure, "the schedule, seed, fill and emulated device (None: unchanged)",
        pybind11::arg("schedule") = pybind11::none(), pybind11::arg("seed") = pybind11::none(),
        pybind11::arg("fill") = pybind11::none(), pybind11::arg("sms") = pybind11::none(),
        pybind11::arg("optin") = pybind11::none(), pybind11::arg("occupancy") = pybind11::none(),
        pybind11::arg("sm_smem") = pybind11::none());
  m.def("config", &config, "the current configuration");
  m.def("stats", &stats, "the emulation's counters", pybind11::arg("reset") = false);
}
