// Host helpers of the CUDA kernels: where a group's scratch lives (shared memory, or a
// global-memory slice when a group does not fit), checked launches, dtype dispatch.
#pragma once

// Only light headers here (no ATen): the .cu files compile in seconds per architecture.
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
// csrc/emulation/cuda_emulation.h (included first) stands in for the CUDA runtime: the
// host code below then runs unchanged on the CPU, against an emulated device.
#ifndef TDSA_EMULATION
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>
// kernel<<<grid, threads, smem, stream>>>, spelled so that the emulation can redefine it.
#define TDSA_LAUNCH(kernel, grid, threads, smem, stream) kernel<<<grid, threads, smem, stream>>>
#endif

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "device_common.cuh"

namespace tdsa_fast {
namespace cuda {

// Per (kernel, device), queried once and cached, thread-safe: the kernel's static shared
// memory and, when `opt_in`, the opt-in to the device's whole dynamic shared memory per
// block (cudaFuncSetAttribute once, to the largest size, so that no later call with
// another size needs to set it again and no two host threads set it concurrently).
struct KernelInfo {
  size_t static_bytes = 0;
  bool opted_in = false;
};

inline KernelInfo kernel_info(const void* kernel, int dev, int optin, bool opt_in) {
  static std::mutex m;
  static std::map<std::pair<const void*, int>, KernelInfo> cache;
  std::lock_guard<std::mutex> lk(m);
  auto it = cache.find({kernel, dev});
  if (it == cache.end()) {
    cudaFuncAttributes attr{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    KernelInfo info;
    info.static_bytes = attr.sharedSizeBytes;
    it = cache.emplace(std::make_pair(kernel, dev), info).first;
  }
  if (opt_in && !it->second.opted_in) {
    const int max_dyn = optin - static_cast<int>(it->second.static_bytes);
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_dyn));
    it->second.opted_in = true;
  }
  return it->second;
}

struct DeviceShape {
  int dev = 0, optin = 0, sms = 1, sm_smem = 0;
};

// Where a kernel's per-group scratch lives: dynamic shared memory (opting in above the
// default 48 KiB when the device allows it: sharedMemPerBlockOptin), or, for groups too
// large for any block's shared memory, a global-memory slice per block (the caller
// allocates grid * bytes) with the grid sized to the blocks of the global-scratch kernel
// that can be resident at once (its occupancy times the SMs; blocks then loop over the
// groups), so that the workspace holds no slice that no block uses at a time.
// `device`: the shape it was planned for (launch_planned opts in against it, querying nothing).
struct ScratchPlan {
  bool global = false;
  size_t smem_bytes = 0;
  int64_t grid = 0;
  DeviceShape device;
};

inline DeviceShape current_device_shape() {
  DeviceShape d;
  C10_CUDA_CHECK(cudaGetDevice(&d.dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, d.dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, d.dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sm_smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, d.dev));
  d.optin = std::max(d.optin, 48 * 1024);
  return d;
}

// `shared_kernel`: the kernel that would run with the scratch in shared memory (its static
// shared memory counts against the limit); `global_kernel`: the global-scratch variant;
// `d`: the current device's shape (current_device_shape()).
inline ScratchPlan plan_scratch(const DeviceShape& d, size_t bytes, int64_t groups, const void* shared_kernel,
                                const void* global_kernel) {
  const KernelInfo info = kernel_info(shared_kernel, d.dev, d.optin, false);
  ScratchPlan plan;
  plan.device = d;
  if (bytes + info.static_bytes <= static_cast<size_t>(d.optin)) {
    plan.smem_bytes = bytes;
    plan.grid = std::min<int64_t>(groups, 2147483647);
  } else {
    int resident = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, global_kernel, kThreads, 0));
    plan.global = true;
    plan.grid = std::min<int64_t>(groups, static_cast<int64_t>(d.sms) * std::max(resident, 1));
  }
  return plan;
}

// Launches kernel on the plan; opts in (once) to more than 48 KiB of dynamic shared memory.
template <typename Kernel, typename Params>
void launch_planned(Kernel kernel, const ScratchPlan& plan, const Params& p, unsigned char* ws, int64_t ws_stride,
                    int64_t groups, cudaStream_t stream) {
  if (!plan.global) {
    const DeviceShape& d = plan.device;
    const KernelInfo info = kernel_info(reinterpret_cast<const void*>(kernel), d.dev, d.optin, false);
    if (plan.smem_bytes + info.static_bytes > 48 * 1024) {
      kernel_info(reinterpret_cast<const void*>(kernel), d.dev, d.optin, true);
    }
  }
  TDSA_LAUNCH(kernel, static_cast<unsigned>(plan.grid), kThreads, plan.global ? 0 : plan.smem_bytes, stream)
  (p, plan.global ? ws : nullptr, ws_stride, groups);
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
