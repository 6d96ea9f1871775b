"""Python-side registrations of the compiled ops ``torch.ops.tdsa_fast.*``.

Importing this module loads the extension ``tdsa_fast._C`` (whose C++ ``TORCH_LIBRARY``
block defines the six loss ops of :data:`OPS` and whose CPU / CUDA sources register the
kernels, plus the memory loader's CPU batch op ``released_windows``, :data:`DATA_OPS`) and adds:

* ``torch.library.register_fake`` for all seven ops, so they trace under
  ``torch.compile(fullgraph=True)``, FakeTensor and meta devices;
* ``torch.library.register_autograd`` for the three forward ops ``mc_terms``,
  ``topdown_gate`` and ``tdsa_terms``: the context saves the op's *inputs* only (no
  intermediate, in particular not the gated middle map), and the backward calls the
  hand-written backward ops, which recompute the per-channel softmax statistics.
  Masks get no gradient (``None``). The backward ops have no autograd formula of their
  own, so when a backward runs with ``create_graph=True`` (double backward, gradient
  penalties) it computes the gradients with the reference's formula
  (:mod:`tdsa_fast.reference`) instead, which is differentiable again: second-order
  gradients are the reference's, never a silent ``None``.

``tdsa_fast._backend`` imports this module right after ``tdsa_fast._C``, so everything
that goes through ``tdsa_fast.functional`` has these registrations.

Autocast: the ops are not in autocast's op lists, so under ``torch.autocast`` they run in
the dtype of their inputs (the Autocast dispatch key falls through to the kernels). The
kernels accumulate float16 / bfloat16 in float32 and return ``g``, ``h`` in float32.
``middle`` and ``high`` must share a dtype (``tdsa_fast.functional`` raises ``ValueError``
otherwise; the op raises ``RuntimeError``); masks of any floating or bool dtype are
accepted (``tdsa_fast.functional`` casts them to the features' dtype first, which is exact
for 0/1 masks).

Layouts: the kernels read and write any strides (NCHW-contiguous, channels_last, channel
slices, transposed views) directly, without a hidden copy of the feature maps; outputs
shaped like an input are allocated with ``torch.empty_like`` (same strides for dense
inputs, contiguous otherwise). Only the small ``[B, C]`` mask and ``[B, S]`` gradients of
g and h are converted to the accumulation dtype and made contiguous.
"""
from __future__ import annotations

import torch

from tdsa_fast import reference

OPS = (
    "mc_terms",
    "mc_terms_backward",
    "topdown_gate",
    "topdown_gate_backward",
    "tdsa_terms",
    "tdsa_terms_backward",
)
DATA_OPS = ("released_windows",)  # CPU only: the CUDA loader gathers with torch ops

try:
    from tdsa_fast import _C
except ImportError as exc:  # not built: tdsa_fast falls back to the reference
    _C = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _terms_like(x: torch.Tensor, cnum) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = x.shape[0], x.shape[1]
    torch._check(cnum >= 1 and c % cnum == 0, lambda: f"tdsa_fast: cnum={cnum} must divide the {c} channels")
    s = c // cnum
    return x.new_empty((b, s), dtype=_acc(x.dtype)), x.new_empty((b, s), dtype=_acc(x.dtype))


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _differentiable_grads(fn, inputs: tuple, needs: tuple, grads: tuple) -> list:
    """The gradients of ``fn(*inputs)`` (the reference op) for the inputs that ``needs``, with
    a graph of their own (a backward under ``create_graph=True``); None for the others."""
    wrt = [x for x, need in zip(inputs, needs) if need]
    with torch.enable_grad():
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        got = iter(torch.autograd.grad(outs, wrt, [_zeros_if_none(g, o) for g, o in zip(grads, outs)],
                                       create_graph=True, allow_unused=True))
    return [next(got) if need else None for need in needs]


def _register() -> None:
    # ---- fake (meta) implementations --------------------------------------------------
    @torch.library.register_fake("tdsa_fast::mc_terms")
    def _mc_terms_fake(feat, mask, cnum):
        return _terms_like(feat, cnum)

    @torch.library.register_fake("tdsa_fast::mc_terms_backward")
    def _mc_terms_backward_fake(grad_g, grad_h, feat, mask, cnum):
        return torch.empty_like(feat)

    @torch.library.register_fake("tdsa_fast::topdown_gate")
    def _topdown_gate_fake(middle, high, mode):
        torch._check(middle.dtype == high.dtype, lambda: "tdsa_fast: middle and high must share a dtype")
        return torch.empty_like(middle)

    @torch.library.register_fake("tdsa_fast::topdown_gate_backward")
    def _topdown_gate_backward_fake(grad_out, middle, high, mode):
        return torch.empty_like(middle), torch.empty_like(high)

    @torch.library.register_fake("tdsa_fast::tdsa_terms")
    def _tdsa_terms_fake(middle, high, mask_middle, cnum_middle, mode):
        torch._check(middle.dtype == high.dtype, lambda: "tdsa_fast: middle and high must share a dtype")
        return _terms_like(middle, cnum_middle)

    @torch.library.register_fake("tdsa_fast::tdsa_terms_backward")
    def _tdsa_terms_backward_fake(grad_g, grad_h, middle, high, mask_middle, cnum_middle, mode):
        return torch.empty_like(middle), torch.empty_like(high)

    @torch.library.register_fake("tdsa_fast::released_windows")
    def _released_windows_fake(images, idx, tops, lefts, flips, dtype, channels_last):
        s = images.shape[-1]
        out = images.new_empty((idx.shape[0], 3, s, s), dtype=dtype)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    # ---- autograd ----------------------------------------------------------------------
    def _mc_setup(ctx, inputs, output):
        feat, mask, cnum = inputs
        ctx.save_for_backward(feat, mask)
        ctx.cnum = cnum

    def _mc_backward(ctx, grad_g, grad_h):
        feat, mask = ctx.saved_tensors
        if torch.is_grad_enabled() and ctx.needs_input_grad[0]:  # create_graph=True
            return (*_differentiable_grads(lambda f: reference.mc_terms(f, mask, ctx.cnum), (feat,), (True,),
                                           (grad_g, grad_h)), None, None)
        grad_feat = None
        if ctx.needs_input_grad[0]:
            like = feat.new_empty((feat.shape[0], feat.shape[1] // ctx.cnum), dtype=_acc(feat.dtype))
            grad_feat = torch.ops.tdsa_fast.mc_terms_backward(
                _zeros_if_none(grad_g, like), _zeros_if_none(grad_h, like), feat, mask, ctx.cnum
            )
        return grad_feat, None, None

    torch.library.register_autograd("tdsa_fast::mc_terms", _mc_backward, setup_context=_mc_setup)

    def _gate_setup(ctx, inputs, output):
        middle, high, mode = inputs
        ctx.save_for_backward(middle, high)
        ctx.mode = mode

    def _gate_backward(ctx, grad_out):
        middle, high = ctx.saved_tensors
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None
        if torch.is_grad_enabled():
            return (*_differentiable_grads(lambda lo, hi: reference.topdown_gate(lo, hi, ctx.mode), (middle, high),
                                           ctx.needs_input_grad[:2], (grad_out,)), None)
        grad_middle, grad_high = torch.ops.tdsa_fast.topdown_gate_backward(
            _zeros_if_none(grad_out, middle), middle, high, ctx.mode
        )
        return (
            grad_middle if ctx.needs_input_grad[0] else None,
            grad_high if ctx.needs_input_grad[1] else None,
            None,
        )

    torch.library.register_autograd("tdsa_fast::topdown_gate", _gate_backward, setup_context=_gate_setup)

    def _tdsa_setup(ctx, inputs, output):
        middle, high, mask_middle, cnum_middle, mode = inputs
        ctx.save_for_backward(middle, high, mask_middle)
        ctx.cnum_middle = cnum_middle
        ctx.mode = mode

    def _tdsa_backward(ctx, grad_g, grad_h):
        middle, high, mask_middle = ctx.saved_tensors
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None, None, None
        if torch.is_grad_enabled():
            terms = lambda lo, hi: reference.tdsa_terms(lo, hi, mask_middle, ctx.cnum_middle, ctx.mode)  # noqa: E731
            return (*_differentiable_grads(terms, (middle, high), ctx.needs_input_grad[:2], (grad_g, grad_h)),
                    None, None, None)
        like = middle.new_empty((middle.shape[0], middle.shape[1] // ctx.cnum_middle), dtype=_acc(middle.dtype))
        grad_middle, grad_high = torch.ops.tdsa_fast.tdsa_terms_backward(
            _zeros_if_none(grad_g, like), _zeros_if_none(grad_h, like), middle, high, mask_middle, ctx.cnum_middle, ctx.mode
        )
        return (
            grad_middle if ctx.needs_input_grad[0] else None,
            grad_high if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
        )

    torch.library.register_autograd("tdsa_fast::tdsa_terms", _tdsa_backward, setup_context=_tdsa_setup)


if _C is not None:
    _register()


def build_info() -> dict:
    """How the compiled library was built, and which kernels are registered.

    ``{"compiled": False, "error": ...}`` when ``tdsa_fast._C`` is not importable; else
    ``_C.build_info()`` (build_system, built_with_torch, cuda, cuda_version,
    cuda_arch_list, cuda_home, cpu_kernels, openmp, cplusplus, compiler) plus
    ``compiled: True`` and ``kernels``: the dispatch keys (CPU, CUDA) with a kernel
    registered for every op.
    """
    if _C is None:
        return {"compiled": False, "error": str(_IMPORT_ERROR)}
    info = dict(_C.build_info())
    info["compiled"] = True
    info["kernels"] = [
        key
        for key in ("CPU", "CUDA")
        if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"tdsa_fast::{op}", key) for op in OPS)
    ]
    return info
