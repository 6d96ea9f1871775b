// Launches of the mc_terms / tdsa_terms kernels (terms_kernels.cuh): the scratch plan
// (shared memory; a dense group too large to copy streamed, its other scratch in shared
// memory; or the global-memory fallback), then the variant for the layout.
#include "cuda_common.cuh"
#include "launchers.h"
#include "terms_kernels.cuh"

namespace tdsa_fast {
namespace cuda {
namespace {

using kernels::terms_kernel;
using kernels::TermsLayout;

template <typename scalar_t, typename acc_t, bool GATED, bool BWD>
struct TermsVariants {
  static constexpr auto dense = terms_kernel<scalar_t, acc_t, GATED, BWD, SharedScratch, DenseGroup>;
  static constexpr auto strided = terms_kernel<scalar_t, acc_t, GATED, BWD, SharedScratch, StridedGroup>;
  static constexpr auto streamed = terms_kernel<scalar_t, acc_t, GATED, BWD, SharedScratch, StreamedGroup>;
  static constexpr auto global = terms_kernel<scalar_t, acc_t, GATED, BWD, GlobalScratch, StridedGroup>;
  using Kernel = std::remove_const_t<decltype(dense)>;  // every variant's type

  // The scratch plan of `shared` for p with p.stream_low as given: sets p.cache_exp
  // (kernels::terms_cache_exp) and the scratch bytes per group.
  static ScratchPlan plan_for(TermsParams& p, const DeviceShape& d, const void* shared, int64_t* bytes) {
    const KernelInfo info = kernel_info(shared, d.dev, d.optin, false);
    p.cache_exp = kernels::terms_cache_exp(p, BWD, sizeof(scalar_t), sizeof(acc_t),
                                           static_cast<int64_t>(info.static_bytes), d.optin, d.sm_smem,
                                           min_blocks<acc_t, SharedScratch>());
    const TermsLayout Lt(p, BWD, sizeof(scalar_t), sizeof(acc_t));
    *bytes = Lt.total;
    return plan_scratch(d, static_cast<size_t>(Lt.total), p.B * p.S, shared, reinterpret_cast<const void*>(global));
  }

  // In order: the group copied into shared memory (dense or strided); a dense group whose
  // copy does not fit, streamed from global memory with the rest of its scratch in shared
  // memory; else the global-memory scratch. Sets p.stream_low / p.cache_exp, the bytes per
  // group and the kernel.
  static ScratchPlan plan(TermsParams& p, int64_t* bytes, Kernel* kernel) {
    const DeviceShape d = current_device_shape();
    const bool is_dense = kernels::terms_dense(p, BWD);
    p.stream_low = false;
    *kernel = is_dense ? dense : strided;
    const ScratchPlan pl = plan_for(p, d, reinterpret_cast<const void*>(*kernel), bytes);
    if (pl.global && is_dense) {
      TermsParams q = p;
      q.stream_low = true;
      int64_t q_bytes = 0;
      const ScratchPlan qs = plan_for(q, d, reinterpret_cast<const void*>(streamed), &q_bytes);
      if (!qs.global) {
        p = q;
        *bytes = q_bytes;
        *kernel = streamed;
        return qs;
      }
    }
    if (pl.global) *kernel = global;
    return pl;
  }

  static void launch(TermsParams p, void* workspace, cudaStream_t stream) {
    int64_t bytes = 0;
    Kernel kernel = nullptr;
    const ScratchPlan pl = plan(p, &bytes, &kernel);
    const int64_t groups = p.B * p.S;
    TORCH_CHECK(!pl.global || workspace != nullptr, "tdsa_fast: terms_launch needs a workspace");
    launch_planned(kernel, pl, p, static_cast<unsigned char*>(workspace), bytes, groups, stream);
  }
};

// Calls F::template run<TermsVariants<...>>() for the launch's GATED / BWD.
template <typename scalar_t, typename acc_t, typename F>
void with_variants(const TermsParams& p, bool bwd, const F& f) {
  if (p.gated) {
    if (bwd) {
      f(TermsVariants<scalar_t, acc_t, true, true>{});
    } else {
      f(TermsVariants<scalar_t, acc_t, true, false>{});
    }
  } else if (bwd) {
    f(TermsVariants<scalar_t, acc_t, false, true>{});
  } else {
    f(TermsVariants<scalar_t, acc_t, false, false>{});
  }
}

}  // namespace

int64_t terms_workspace(c10::ScalarType dtype, const TermsParams& p, bool backward) {
  if (p.B * p.S == 0) return 0;
  int64_t elems = 0;
  dispatch_floating(dtype, "tdsa_fast::terms_workspace", [&](auto s, auto a) {
    using acc_t = decltype(a);
    with_variants<decltype(s), acc_t>(p, backward, [&](auto v) {
      int64_t bytes = 0;
      typename decltype(v)::Kernel kernel = nullptr;
      TermsParams q = p;
      const ScratchPlan pl = decltype(v)::plan(q, &bytes, &kernel);
      elems = pl.global ? pl.grid * bytes / static_cast<int64_t>(sizeof(acc_t)) : 0;
    });
  });
  return elems;
}

void terms_launch(c10::ScalarType dtype, const TermsParams& p, bool backward, void* workspace, cudaStream_t stream) {
  if (p.B * p.S == 0) return;
  dispatch_floating(dtype, "tdsa_fast::terms_launch", [&](auto s, auto a) {
    with_variants<decltype(s), decltype(a)>(p, backward, [&](auto v) { decltype(v)::launch(p, workspace, stream); });
  });
}

}  // namespace cuda
}  // namespace tdsa_fast
