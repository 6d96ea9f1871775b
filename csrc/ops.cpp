// The tdsa_fast operator library: one TORCH_LIBRARY block with the six loss schemas and the
// memory loader's batch op (released_windows, CPU only). The CPU kernels are registered in
// cpu/ops_cpu.cpp and cpu/windows_cpu.cpp, the CUDA kernels in cuda/ops_cuda.cu
// (TORCH_LIBRARY_IMPL per dispatch key, as in pytorch/extension-cpp). Fake (meta)
// implementations and the autograd formulas are registered from Python in
// tdsa_fast/_ops.py, which tdsa_fast._backend imports right after this library.
//
// Shapes (S = C / cnum classes; g and h are float32, or float64 for float64 maps):
//   mc_terms(feat [B,C,H,W], mask [B|1,C], cnum)                    -> (g [B,S], h [B,S])
//   mc_terms_backward(grad_g, grad_h, feat, mask, cnum)               -> grad_feat (like feat)
//   topdown_gate(low [B,C,H,W], high [B,C/xi,Hh,Wh], mode)           -> gated (like low)
//   topdown_gate_backward(grad_out, low, high, mode)                  -> (grad_low, grad_high)
//   tdsa_terms(low, high, mask_low [B|1,C], cnum_low, mode)           -> (g, h)
//   tdsa_terms_backward(grad_g, grad_h, low, high, mask_low, cnum_low, mode) -> (grad_low, grad_high)
//   released_windows(images uint8 [N,3,s,s], idx, tops, lefts [n] int64, flips [n] bool, dtype,
//                    channels_last)                                  -> [n,3,s,s] dtype in [-1, 1]
#include <torch/library.h>

TORCH_LIBRARY(tdsa_fast, m) {
  m.def("mc_terms(Tensor feat, Tensor mask, int cnum) -> (Tensor, Tensor)");
  m.def("mc_terms_backward(Tensor grad_g, Tensor grad_h, Tensor feat, Tensor mask, int cnum) -> Tensor");
  m.def("topdown_gate(Tensor low, Tensor high, str mode) -> Tensor");
  m.def("topdown_gate_backward(Tensor grad_out, Tensor low, Tensor high, str mode) -> (Tensor, Tensor)");
  m.def("tdsa_terms(Tensor low, Tensor high, Tensor mask_low, int cnum_low, str mode) -> (Tensor, Tensor)");
  m.def(
      "tdsa_terms_backward(Tensor grad_g, Tensor grad_h, Tensor low, Tensor high, Tensor mask_low, int cnum_low, "
      "str mode) -> (Tensor, Tensor)");
  m.def(
      "released_windows(Tensor images, Tensor idx, Tensor tops, Tensor lefts, Tensor flips, ScalarType dtype, "
      "bool channels_last) -> Tensor");
}
