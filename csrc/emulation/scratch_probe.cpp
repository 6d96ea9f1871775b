// Prints the per-group scratch bytes of the CUDA kernels for one group shape and dtype,
// from the kernels' own layout code: bench/cuda_static.py reports it as the dynamic shared
// memory per block. Host-only (compiled with the C++ compiler against the emulation's CUDA
// keywords); not part of the package build.
//   scratch_probe mc|tdsa|gate n xi H W Hh Wh storage_bytes acc_bytes optin_bytes sm_bytes
//     -> "<kind>_fwd BYTES" and "<kind>_bwd BYTES" (terms kinds also "<kind>_fwd_streamed BYTES" and
//        "<kind>_bwd_streamed BYTES": the StreamedGroup plan, the group not copied)
// The terms kernels' bytes are those of the host's plan on a device with that opt-in limit and
// shared memory per SM (kernels::terms_cache_exp, with the static `red` of kWarps acc_t).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_emulation.h"
#include "../cuda/gate_kernels.cuh"
#include "../cuda/terms_kernels.cuh"

int main(int argc, char** argv) {
  if (argc != 12) {
    std::fprintf(stderr, "usage: %s mc|tdsa|gate n xi H W Hh Wh storage_bytes acc_bytes optin_bytes sm_bytes\n",
                 argv[0]);
    return 2;
  }
  const char* kind = argv[1];
  long v[10];
  for (int i = 0; i < 10; ++i) v[i] = std::atol(argv[i + 2]);
  for (int bwd = 0; bwd < 2; ++bwd) {
    long bytes = 0;
    if (std::strcmp(kind, "gate") == 0) {
      tdsa_fast::GateParams p;
      p.xi = v[1], p.H = v[2], p.W = v[3], p.Hh = v[4], p.Wh = v[5];
      bytes = static_cast<long>(tdsa_fast::cuda::kernels::GateLayout(p, bwd != 0, v[6], v[7]).total);
    } else {
      tdsa_fast::TermsParams p;
      p.cnum = v[0], p.H = v[2], p.W = v[3];
      p.gated = std::strcmp(kind, "tdsa") == 0;
      p.xi = v[1], p.Hh = v[4], p.Wh = v[5];
      using tdsa_fast::cuda::min_blocks;
      using tdsa_fast::cuda::SharedScratch;
      const int64_t blocks = v[7] == 8 ? min_blocks<double, SharedScratch>() : min_blocks<float, SharedScratch>();
      for (int stream = 0; stream < 2; ++stream) {  // the group copied, then streamed (StreamedGroup)
        p.stream_low = stream != 0;
        p.cache_exp = tdsa_fast::cuda::kernels::terms_cache_exp(p, bwd != 0, v[6], v[7],
                                                                tdsa_fast::cuda::kWarps * v[7], v[8], v[9], blocks);
        const long b = static_cast<long>(tdsa_fast::cuda::kernels::TermsLayout(p, bwd != 0, v[6], v[7]).total);
        std::printf("%s_%s%s %ld\n", kind, bwd ? "bwd" : "fwd", stream ? "_streamed" : "", b);
      }
      continue;
    }
    std::printf("%s_%s %ld\n", kind, bwd ? "bwd" : "fwd", bytes);
  }
  return 0;
}
