// The CPU kernels for the baseline instruction set (at::vec's DEFAULT implementation).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "kernels_impl.h"

namespace tdsa_fast {
namespace cpu {
const KernelSet& kernels_default() { return DEFAULT::kernel_set(); }
}  // namespace cpu
}  // namespace tdsa_fast
