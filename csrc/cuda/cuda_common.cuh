// Host helpers of the CUDA kernels: where a group's scratch lives (shared memory, or a
// global-memory slice when a group does not fit), checked launches, dtype dispatch.
#pragma once

// Only light headers here (no ATen): the .cu files compile in seconds per architecture.
#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "device_common.cuh"

namespace tdsa_fast {
namespace cuda {

// Where a kernel's per-group scratch lives: dynamic shared memory (opting in above the
// default 48 KiB when the device allows it: sharedMemPerBlockOptin), or, for groups too
// large for any block's shared memory, a global-memory slice per block (the caller
// allocates grid * elems values) with the grid capped so that the workspace stays small
// (blocks then loop over the groups).
struct ScratchPlan {
  bool global = false;
  size_t smem_bytes = 0;
  int64_t grid = 0;
};

inline ScratchPlan plan_scratch(size_t bytes, size_t static_bytes, int64_t groups) {
  int dev = 0, optin = 0, sms = 1;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const size_t limit = std::max<size_t>(static_cast<size_t>(optin), 48 * 1024);
  ScratchPlan plan;
  if (bytes + static_bytes <= limit) {
    plan.smem_bytes = bytes;
    plan.grid = std::min<int64_t>(groups, 2147483647);
  } else {
    plan.global = true;
    plan.grid = std::min<int64_t>(groups, static_cast<int64_t>(sms) * 8);
  }
  return plan;
}

// Launches kernel on the plan; opts in to more than 48 KiB of dynamic shared memory first.
template <typename Kernel, typename Params, typename acc_t>
void launch_planned(Kernel kernel, const ScratchPlan& plan, size_t static_bytes, const Params& p, acc_t* ws,
                    int64_t ws_stride, int64_t groups, cudaStream_t stream) {
  if (!plan.global && plan.smem_bytes + static_bytes > 48 * 1024) {
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.smem_bytes)));
  }
  kernel<<<static_cast<unsigned>(plan.grid), kThreads, plan.global ? 0 : plan.smem_bytes, stream>>>(
      p, plan.global ? ws : nullptr, ws_stride, groups);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(scalar_t{}, acc_t{}) for the storage dtype (float16 / bfloat16 / float32 with
// float accumulation, float64 with double).
template <typename F>
void dispatch_floating(c10::ScalarType dtype, const char* name, const F& f) {
  switch (dtype) {
    case c10::ScalarType::Float:
      f(float{}, float{});
      break;
    case c10::ScalarType::Double:
      f(double{}, double{});
      break;
    case c10::ScalarType::Half:
      f(c10::Half{}, float{});
      break;
    case c10::ScalarType::BFloat16:
      f(c10::BFloat16{}, float{});
      break;
    default:
      TORCH_CHECK(false, name, ": unsupported dtype ", dtype);
  }
}

}  // namespace cuda
}  // namespace tdsa_fast
