// Launches of the topdown_gate kernels (gate_kernels.cuh).
#include "cuda_common.cuh"
#include "gate_kernels.cuh"
#include "launchers.h"

namespace tdsa_fast {
namespace cuda {
namespace {

using kernels::gate_kernel;
using kernels::gate_scratch;

template <typename scalar_t, typename acc_t>
void launch(const GateParams& p, bool bwd, void* workspace, cudaStream_t stream) {
  const int64_t groups = p.B * p.Ch;
  if (groups == 0) return;
  const int64_t elems = gate_scratch(p, bwd);
  const ScratchPlan plan = plan_scratch(static_cast<size_t>(elems) * sizeof(acc_t), 0, groups);
  TORCH_CHECK(!plan.global || workspace != nullptr, "tdsa_fast: gate_launch needs a workspace");
  acc_t* ws = static_cast<acc_t*>(workspace);
  if (bwd) {
    launch_planned(gate_kernel<scalar_t, acc_t, true>, plan, 0, p, ws, elems, groups, stream);
  } else {
    launch_planned(gate_kernel<scalar_t, acc_t, false>, plan, 0, p, ws, elems, groups, stream);
  }
}

}  // namespace

int64_t gate_workspace(c10::ScalarType dtype, const GateParams& p, bool backward) {
  const int64_t groups = p.B * p.Ch;
  if (groups == 0) return 0;
  const int64_t elems = gate_scratch(p, backward);
  const size_t acc_size = dtype == c10::ScalarType::Double ? sizeof(double) : sizeof(float);
  const ScratchPlan plan = plan_scratch(static_cast<size_t>(elems) * acc_size, 0, groups);
  return plan.global ? plan.grid * elems : 0;
}

void gate_launch(c10::ScalarType dtype, const GateParams& p, bool backward, void* workspace, cudaStream_t stream) {
  dispatch_floating(dtype, "tdsa_fast::gate_launch", [&](auto s, auto a) {
    launch<decltype(s), decltype(a)>(p, backward, workspace, stream);
  });
}

}  // namespace cuda
}  // namespace tdsa_fast
