// CUDA implementations of the tdsa_fast ops: the CUDA policy of the wrappers shared with
// the CPU ops (op_wrappers.h: checks, allocation), and the launches on the current stream
// of the inputs' device.
// Host code only (compiled by the C++ compiler); the kernels are in *_kernels.cu.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../op_common.h"
#include "../op_wrappers.h"
#include "launchers.h"

namespace tdsa_fast {
namespace {

// The kernels index inside one group with 32-bit ints.
void check_group_size(int64_t elems, const char* what) {
  TORCH_CHECK(elems < std::numeric_limits<int>::max(), "tdsa_fast (CUDA): one group of ", what, " holds ", elems,
              " elements, more than the kernels' 32-bit in-group indexing allows");
}

// Global scratch for groups too large for shared memory (rare).
at::Tensor workspace(const at::Tensor& like, int64_t elems) {
  return at::empty({elems}, like.options().dtype(acc_dtype(like.scalar_type())));
}

// The CUDA policy of OpWrappers: the inputs' device made current, the group-size limits of
// the kernels checked, the launches on that device's current stream.
struct CudaDevice {
  using Guard = c10::cuda::CUDAGuard;

  static void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), "tdsa_fast: ", name, " must be a CUDA tensor");
  }

  static void run_terms(at::ScalarType dtype, const TermsParams& p, bool backward, const at::Tensor& like) {
    check_group_size(p.cnum * p.H * p.W, "the map");
    TORCH_CHECK(p.cnum <= kMaxGroupChannels, "tdsa_fast (CUDA): ", p.cnum,
                " channels per class, more than the kernels' ", kMaxGroupChannels);
    if (p.gated) check_group_size(p.cnum * std::max(p.H, p.Hh) * std::max(p.W, p.Wh), "the gate");
    const int64_t elems = cuda::terms_workspace(dtype, p, backward);
    at::Tensor ws = elems > 0 ? workspace(like, elems) : at::Tensor();
    cuda::terms_launch(dtype, p, backward, elems > 0 ? ws.data_ptr() : nullptr, at::cuda::getCurrentCUDAStream());
  }

  static void run_gate(at::ScalarType dtype, const GateParams& p, bool backward, const at::Tensor& like) {
    check_group_size((p.xi + 2) * std::max(p.H, p.Hh) * std::max(p.W, p.Wh), "the gate");
    const int64_t elems = cuda::gate_workspace(dtype, p, backward);
    at::Tensor ws = elems > 0 ? workspace(like, elems) : at::Tensor();
    cuda::gate_launch(dtype, p, backward, elems > 0 ? ws.data_ptr() : nullptr, at::cuda::getCurrentCUDAStream());
  }
};

using CudaOps = OpWrappers<CudaDevice>;

}  // namespace

TORCH_LIBRARY_IMPL(tdsa_fast, CUDA, m) {
  m.impl("mc_terms", &CudaOps::mc_terms);
  m.impl("mc_terms_backward", &CudaOps::mc_terms_backward);
  m.impl("topdown_gate", &CudaOps::topdown_gate);
  m.impl("topdown_gate_backward", &CudaOps::topdown_gate_backward);
  m.impl("tdsa_terms", &CudaOps::tdsa_terms);
  m.impl("tdsa_terms_backward", &CudaOps::tdsa_terms_backward);
}

}  // namespace tdsa_fast
