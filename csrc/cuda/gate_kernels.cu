// Launches of the topdown_gate kernels (gate_kernels.cuh): the scratch plan, then the
// variant for the layout.
#include "cuda_common.cuh"
#include "gate_kernels.cuh"
#include "launchers.h"

namespace tdsa_fast {
namespace cuda {
namespace {

using kernels::gate_kernel;
using kernels::GateLayout;

template <typename scalar_t, typename acc_t, bool BWD>
struct GateVariants {
  static constexpr auto dense = gate_kernel<scalar_t, acc_t, BWD, SharedScratch, DenseGroup>;
  static constexpr auto strided = gate_kernel<scalar_t, acc_t, BWD, SharedScratch, StridedGroup>;
  static constexpr auto global = gate_kernel<scalar_t, acc_t, BWD, GlobalScratch, StridedGroup>;

  static ScratchPlan plan(const GateParams& p, int64_t* bytes) {
    const GateLayout Lt(p, BWD, sizeof(scalar_t), sizeof(acc_t));
    *bytes = Lt.total;
    const void* shared = reinterpret_cast<const void*>(kernels::gate_dense(p, BWD) ? dense : strided);
    return plan_scratch(current_device_shape(), static_cast<size_t>(Lt.total), p.B * p.Ch, shared,
                        reinterpret_cast<const void*>(global));
  }

  static void launch(const GateParams& p, void* workspace, cudaStream_t stream) {
    int64_t bytes = 0;
    const ScratchPlan pl = plan(p, &bytes);
    const int64_t groups = p.B * p.Ch;
    if (pl.global) {
      TORCH_CHECK(workspace != nullptr, "tdsa_fast: gate_launch needs a workspace");
      launch_planned(global, pl, p, static_cast<unsigned char*>(workspace), bytes, groups, stream);
    } else {
      launch_planned(kernels::gate_dense(p, BWD) ? dense : strided, pl, p, nullptr, 0, groups, stream);
    }
  }
};

template <typename scalar_t, typename acc_t, typename F>
void with_variants(bool bwd, const F& f) {
  if (bwd) {
    f(GateVariants<scalar_t, acc_t, true>{});
  } else {
    f(GateVariants<scalar_t, acc_t, false>{});
  }
}

}  // namespace

int64_t gate_workspace(c10::ScalarType dtype, const GateParams& p, bool backward) {
  if (p.B * p.Ch == 0) return 0;
  int64_t elems = 0;
  dispatch_floating(dtype, "tdsa_fast::gate_workspace", [&](auto s, auto a) {
    using acc_t = decltype(a);
    with_variants<decltype(s), acc_t>(backward, [&](auto v) {
      int64_t bytes = 0;
      const ScratchPlan pl = decltype(v)::plan(p, &bytes);
      elems = pl.global ? pl.grid * bytes / static_cast<int64_t>(sizeof(acc_t)) : 0;
    });
  });
  return elems;
}

void gate_launch(c10::ScalarType dtype, const GateParams& p, bool backward, void* workspace, cudaStream_t stream) {
  if (p.B * p.Ch == 0) return;
  dispatch_floating(dtype, "tdsa_fast::gate_launch", [&](auto s, auto a) {
    with_variants<decltype(s), decltype(a)>(backward, [&](auto v) { decltype(v)::launch(p, workspace, stream); });
  });
}

}  // namespace cuda
}  // namespace tdsa_fast
