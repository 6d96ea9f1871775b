// Host entry points of the CUDA kernels (csrc/cuda/*.cu), called by ops_cuda.cu on the
// current stream of the current device; every launch is checked.
#pragma once

#include <c10/core/ScalarType.h>
#ifndef TDSA_EMULATION
#include <cuda_runtime_api.h>
#endif

#include <cstdint>

#include "../kernel_params.h"

namespace tdsa_fast {
namespace cuda {

// Each op is two calls: *_workspace returns how many accumulation-type values of global
// scratch the launch needs (0 when a group fits in shared memory, the usual case); the
// caller allocates them (float32, or float64 for float64 maps) and passes the pointer.
int64_t terms_workspace(c10::ScalarType dtype, const TermsParams& p, bool backward);
void terms_launch(c10::ScalarType dtype, const TermsParams& p, bool backward, void* workspace, cudaStream_t stream);
int64_t gate_workspace(c10::ScalarType dtype, const GateParams& p, bool backward);
void gate_launch(c10::ScalarType dtype, const GateParams& p, bool backward, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace tdsa_fast
