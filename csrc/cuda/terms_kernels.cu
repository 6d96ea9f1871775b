// Launches of the mc_terms / tdsa_terms kernels (terms_kernels.cuh).
#include "cuda_common.cuh"
#include "launchers.h"
#include "terms_kernels.cuh"

namespace tdsa_fast {
namespace cuda {
namespace {

using kernels::terms_kernel;
using kernels::TermsLayout;

template <typename scalar_t, typename acc_t>
void launch(const TermsParams& p, bool bwd, void* workspace, cudaStream_t stream) {
  const int64_t groups = p.B * p.S;
  if (groups == 0) return;
  const TermsLayout Lt(p, bwd);
  const ScratchPlan plan = plan_scratch(static_cast<size_t>(Lt.total) * sizeof(acc_t), kWarps * sizeof(acc_t), groups);
  TORCH_CHECK(!plan.global || workspace != nullptr, "tdsa_fast: terms_launch needs a workspace");
  acc_t* ws = static_cast<acc_t*>(workspace);
  const size_t st = kWarps * sizeof(acc_t);
  if (p.gated) {
    if (bwd) {
      launch_planned(terms_kernel<scalar_t, acc_t, true, true>, plan, st, p, ws, Lt.total, groups, stream);
    } else {
      launch_planned(terms_kernel<scalar_t, acc_t, true, false>, plan, st, p, ws, Lt.total, groups, stream);
    }
  } else if (bwd) {
    launch_planned(terms_kernel<scalar_t, acc_t, false, true>, plan, st, p, ws, Lt.total, groups, stream);
  } else {
    launch_planned(terms_kernel<scalar_t, acc_t, false, false>, plan, st, p, ws, Lt.total, groups, stream);
  }
}

}  // namespace

int64_t terms_workspace(c10::ScalarType dtype, const TermsParams& p, bool backward) {
  const int64_t groups = p.B * p.S;
  if (groups == 0) return 0;
  const TermsLayout Lt(p, backward);
  const size_t acc_size = dtype == c10::ScalarType::Double ? sizeof(double) : sizeof(float);
  const ScratchPlan plan = plan_scratch(static_cast<size_t>(Lt.total) * acc_size, kWarps * acc_size, groups);
  return plan.global ? plan.grid * Lt.total : 0;
}

void terms_launch(c10::ScalarType dtype, const TermsParams& p, bool backward, void* workspace, cudaStream_t stream) {
  dispatch_floating(dtype, "tdsa_fast::terms_launch", [&](auto s, auto a) {
    launch<decltype(s), decltype(a)>(p, backward, workspace, stream);
  });
}

}  // namespace cuda
}  // namespace tdsa_fast
