// The CPU kernels again, with AVX2 + FMA + F16C enabled for this translation unit only
// (GCC on x86-64), so one build runs everywhere: ops_cpu.cpp calls this variant when
// at::get_cpu_capability() reports AVX2 (or AVX512 in a build without the AVX-512 variant;
// it honours ATEN_CPU_CAPABILITY). isa_prelude.h holds the headers included before the
// target pragma.
#include "cpu_kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(TDSA_FAST_NO_AVX2)

#include "isa_prelude.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
// GCC's target pragma does not define the ISA macros; sleef.h (declaring the 256-bit
// exp used by Vectorized<float>::exp, exported by libtorch_cpu) keys on them.
#ifndef __AVX__
#define __AVX__ 1
#define TDSA_FAST_UNDEF_AVX
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#define TDSA_FAST_UNDEF_AVX2
#endif
#include "kernels_impl.h"
#ifdef TDSA_FAST_UNDEF_AVX
#undef __AVX__
#endif
#ifdef TDSA_FAST_UNDEF_AVX2
#undef __AVX2__
#endif
#pragma GCC pop_options

namespace tdsa_fast {
namespace cpu {
const KernelSet* kernels_avx2() { return &AVX2::kernel_set(); }
}  // namespace cpu
}  // namespace tdsa_fast

#else

namespace tdsa_fast {
namespace cpu {
const KernelSet* kernels_avx2() { return nullptr; }
}  // namespace cpu
}  // namespace tdsa_fast

#endif
