// Interface between the CPU op wrappers (ops_cpu.cpp) and the CPU kernels, which are
// compiled three times (kernels_default.cpp; kernels_avx2.cpp and kernels_avx512.cpp, each
// with its instruction set enabled for that translation unit only) and picked at run time
// from at::get_cpu_capability().
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../kernel_params.h"

namespace tdsa_fast {
namespace cpu {

// Interpolation taps of one axis (forward: per output index, `ntaps` source indices and
// weights) and their adjoint in CSR form (per source index, the (output index, weight)
// pairs in ascending output order, then ascending tap order: the order in which the CUDA
// kernel's math::adjoint_gather sums them). Weights are acc_t.
struct AxisTable {
  int ntaps = 1;
  const int64_t* idx = nullptr;   // [out * ntaps]
  const void* w = nullptr;        // [out * ntaps]
  const int64_t* aptr = nullptr;  // [in + 1]
  const int64_t* adst = nullptr;  // [aptr[in]]
  const void* aw = nullptr;       // [aptr[in]]
};

struct GateTables {
  AxisTable rows;  // H_high -> H_low
  AxisTable cols;  // W_high -> W_low
  bool adjoint_identity = false;  // math::adjoint_is_identity
  int mode = 0;                   // math::Mode
};

using TermsFn = void (*)(c10::ScalarType, const TermsParams&, const GateTables&, int64_t, int64_t);
using GateFn = void (*)(c10::ScalarType, const GateParams&, const GateTables&, int64_t, int64_t);

// Each function processes the groups [begin, end) sequentially with its own scratch.
struct KernelSet {
  const char* name;
  TermsFn terms_forward;
  TermsFn terms_backward;
  GateFn gate_forward;
  GateFn gate_backward;
};

const KernelSet& kernels_default();
const KernelSet* kernels_avx2();    // nullptr when this build has no AVX2 variant
const KernelSet* kernels_avx512();  // nullptr when this build has no AVX-512 variant

}  // namespace cpu
}  // namespace tdsa_fast
