// CPU implementations of the tdsa_fast ops: the CPU policy of the shared wrappers
// (op_wrappers.h: checks, allocation), the interpolation tables, and at::parallel_for over
// the groups.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../op_common.h"
#include "../op_wrappers.h"
#include "cpu_kernels.h"

namespace tdsa_fast {
namespace {

const cpu::KernelSet& kernels() {
  static const cpu::KernelSet* ks = [] {
    const cpu::KernelSet* avx2 = cpu::kernels_avx2();
    const cpu::KernelSet* avx512 = cpu::kernels_avx512();
#if defined(__x86_64__) || defined(_M_X64)
    // torch's own choice ("DEFAULT", "AVX2", "AVX512"; honours ATEN_CPU_CAPABILITY).
    const std::string cap = at::get_cpu_capability();
    if (avx512 != nullptr && cap == "AVX512") return avx512;
    if (avx2 != nullptr && (cap == "AVX2" || cap == "AVX512")) return avx2;
#else
    (void)avx2, (void)avx512;
#endif
    return &cpu::kernels_default();
  }();
  return *ks;
}

// Tables of one axis in the accumulation type: forward taps and the CSR adjoint.
template <typename acc_t>
struct AxisStorage {
  int ntaps = 1;
  std::vector<int64_t> idx, aptr, adst;
  std::vector<acc_t> w, aw;

  void build(int mode, int64_t in, int64_t out) {
    int64_t ti[math::kMaxTaps];
    acc_t tw[math::kMaxTaps];
    ntaps = math::axis_taps<acc_t>(mode, 0, in, out, ti, tw);
    idx.resize(static_cast<size_t>(out * ntaps));
    w.resize(idx.size());
    for (int64_t d = 0; d < out; ++d) {
      math::axis_taps<acc_t>(mode, d, in, out, idx.data() + d * ntaps, w.data() + d * ntaps);
    }
    // Same (output, tap) order as math::adjoint_gather, which the CUDA kernels use.
    aptr.assign(static_cast<size_t>(in + 1), 0);
    adst.clear();
    aw.clear();
    for (int64_t s = 0; s < in; ++s) {
      aptr[s] = static_cast<int64_t>(adst.size());
      int64_t lo, hi;
      math::adjoint_range(s, in, out, &lo, &hi);
      for (int64_t d = lo; d <= hi; ++d) {
        for (int k = 0; k < ntaps; ++k) {
          if (idx[d * ntaps + k] == s) {
            adst.push_back(d);
            aw.push_back(w[d * ntaps + k]);
          }
        }
      }
    }
    aptr[in] = static_cast<int64_t>(adst.size());
  }

  cpu::AxisTable view() const {
    cpu::AxisTable t;
    t.ntaps = ntaps;
    t.idx = idx.data();
    t.w = w.data();
    t.aptr = aptr.data();
    t.adst = adst.data();
    t.aw = aw.data();
    return t;
  }
};

template <typename acc_t>
struct TableStorage {
  AxisStorage<acc_t> rows, cols;
  cpu::GateTables view(int mode, int64_t Hh, int64_t Wh, int64_t H, int64_t W) {
    rows.build(mode, Hh, H);
    cols.build(mode, Wh, W);
    cpu::GateTables t;
    t.rows = rows.view();
    t.cols = cols.view();
    t.adjoint_identity = math::adjoint_is_identity(mode, Hh, Wh, H, W);
    t.mode = mode;
    return t;
  }
};

// Runs fn(begin, end) over `groups` groups on torch's intra-op thread pool. Each group
// costs about `work` element-passes; small groups are batched per task.
template <typename F>
void for_groups(int64_t groups, int64_t work, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work));
  at::parallel_for(0, groups, grain, fn);
}

// Calls fn(GateTables) with tables in the accumulation type of `dtype`
// (no tables are needed when `gated` is false).
template <typename F>
void with_tables(at::ScalarType dtype, bool gated, int mode, int64_t Hh, int64_t Wh, int64_t H, int64_t W,
                 const F& fn) {
  if (!gated) {
    fn(cpu::GateTables{});
  } else if (dtype == at::kDouble) {
    TableStorage<double> st;
    fn(st.view(mode, Hh, Wh, H, W));
  } else {
    TableStorage<float> st;
    fn(st.view(mode, Hh, Wh, H, W));
  }
}

// The CPU policy of OpWrappers: no device switch; the kernels run over the (sample, class)
// groups (terms) or (sample, high channel) groups (gate) on torch's intra-op pool.
struct CpuDevice {
  struct Guard {
    explicit Guard(const at::Device&) {}
  };

  static void check_device(const at::Tensor&, const char*) {}  // the CPU dispatch key says so

  static void run_terms(at::ScalarType dtype, const TermsParams& p, bool backward, const at::Tensor&) {
    with_tables(dtype, p.gated, p.mode, p.Hh, p.Wh, p.H, p.W, [&](const cpu::GateTables& tb) {
      for_groups(p.B * p.S, (backward ? 8 : 4) * p.cnum * p.H * p.W, [&](int64_t begin, int64_t end) {
        if (backward) {
          kernels().terms_backward(dtype, p, tb, begin, end);
        } else {
          kernels().terms_forward(dtype, p, tb, begin, end);
        }
      });
    });
  }

  static void run_gate(at::ScalarType dtype, const GateParams& p, bool backward, const at::Tensor&) {
    with_tables(dtype, true, p.mode, p.Hh, p.Wh, p.H, p.W, [&](const cpu::GateTables& tb) {
      for_groups(p.B * p.Ch, (backward ? 4 : 2) * p.xi * p.H * p.W, [&](int64_t begin, int64_t end) {
        if (backward) {
          kernels().gate_backward(dtype, p, tb, begin, end);
        } else {
          kernels().gate_forward(dtype, p, tb, begin, end);
        }
      });
    });
  }
};

using CpuOps = OpWrappers<CpuDevice>;

}  // namespace

const char* cpu_kernel_variant() { return kernels().name; }

bool cpu_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY_IMPL(tdsa_fast, CPU, m) {
  m.impl("mc_terms", &CpuOps::mc_terms);
  m.impl("mc_terms_backward", &CpuOps::mc_terms_backward);
  m.impl("topdown_gate", &CpuOps::topdown_gate);
  m.impl("topdown_gate_backward", &CpuOps::topdown_gate_backward);
  m.impl("tdsa_terms", &CpuOps::tdsa_terms);
  m.impl("tdsa_terms_backward", &CpuOps::tdsa_terms_backward);
}

}  // namespace tdsa_fast
