// The CPU kernels again, with AVX-512 (F, BW, VL, DQ: the set ATen's own AVX512 kernels are
// built for) + FMA + F16C enabled for this translation unit only (GCC on x86-64): 16 float
// lanes. ops_cpu.cpp calls this variant when at::get_cpu_capability() reports AVX512 (which
// honours ATEN_CPU_CAPABILITY=avx2 / default). isa_prelude.h holds the headers included
// before the target pragma.
#include "cpu_kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(TDSA_FAST_NO_AVX512)

#include "isa_prelude.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
// GCC 12's avx512fintrin.h leaves the pass-through operand of its _mm512_undefined_*()
// helpers uninitialised on purpose; at::vec's masked loads warn on it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
// GCC's target pragma does not define the ISA macros; sleef.h (declaring the 512-bit exp
// used by Vectorized<float>::exp, exported by libtorch_cpu) keys on them.
#ifndef __AVX512F__
#define __AVX512F__ 1
#define TDSA_FAST_UNDEF_AVX512F
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#define TDSA_FAST_UNDEF_AVX2
#endif
#ifndef __AVX__
#define __AVX__ 1
#define TDSA_FAST_UNDEF_AVX
#endif
#include "kernels_impl.h"
#ifdef TDSA_FAST_UNDEF_AVX
#undef __AVX__
#endif
#ifdef TDSA_FAST_UNDEF_AVX2
#undef __AVX2__
#endif
#ifdef TDSA_FAST_UNDEF_AVX512F
#undef __AVX512F__
#endif
#pragma GCC diagnostic pop
#pragma GCC pop_options

namespace tdsa_fast {
namespace cpu {
const KernelSet* kernels_avx512() { return &AVX512::kernel_set(); }
}  // namespace cpu
}  // namespace tdsa_fast

#else

namespace tdsa_fast {
namespace cpu {
const KernelSet* kernels_avx512() { return nullptr; }
}  // namespace cpu
}  // namespace tdsa_fast

#endif
