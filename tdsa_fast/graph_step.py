"""The replay-safe training step of ``--cuda-graph``: forward, loss, backward and the SGD
update of one fixed-shape batch, captured once in a CUDA graph (``torch.cuda.CUDAGraph``)
and replayed for every full batch, so a step costs one graph launch instead of hundreds of
kernel launches.

What stays correct under replay, and how:

* **inputs**: every batch is copied into static image / label buffers that the graph reads;
  a batch of another shape (the epoch's partial last batch, a batch that lost images under
  ``--skip-bad-images``) runs the plain eager step instead (:meth:`GraphStep.fits`), so every
  batch the plain trainer trains on is trained on, with the same math;
* **channel masks** of the MC/TDSA term: drawn outside the graph, each step, from the
  trainer's generator seeded by :func:`tdsa_fast.data.sharding.step_seed` -- the very draws
  of the plain step -- and copied into static mask buffers (they are ``[1, S*cnum]``: a few
  hundred bytes);
* **learning rate** (and momentum, weight decay): ``torch.optim.SGD`` bakes its Python
  hyper-parameters into the captured kernels, so the step keys the graph by them and
  captures again when the scheduler changes one (twice in the paper's recipe);
* **loss sums**: the graph writes ``[loss * n, ce * n, correct]`` (float64) into a static
  tensor; the trainer adds it to its running sums on the device, as the plain step does.
  Nothing in the step reads a value back to the host.

The first ``warmup`` fitting steps run the same body eagerly (on a side stream on CUDA, as
PyTorch's whole-network capture recipe): they are real training steps (they create the SGD
momentum buffers, compile ``--compile``'s kernels, pick cuDNN algorithms), and on CUDA they
run under ``torch.cuda.set_sync_debug_mode("error")``, so a loss that synchronises with the
host is refused with a clear message before any capture. A capture that fails is refused
the same way (:class:`GraphCaptureError`); capturing executes nothing, so the weights are
those of the last completed step.

Without CUDA (``capture=False``) the same replay-safe path runs uncaptured -- static
buffers, masks drawn outside the body, the sums tensor -- which is what the CPU tests compare
with the plain step.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

from tdsa_fast.models import ModelOutput

if TYPE_CHECKING:
    from tdsa_fast.config import TrainConfig

__all__ = ["GraphCaptureError", "GraphStep", "check_graph_options"]


class GraphCaptureError(ValueError):
    """The step cannot be captured in a CUDA graph (a host sync, a dynamic shape, ...)."""


def check_graph_options(cfg: TrainConfig, device: torch.device, world_size: int) -> None:
    """Refuses ``--cuda-graph`` with the options whose step cannot be replayed as captured."""
    if not cfg.cuda_graph:
        return
    if world_size > 1:
        raise ValueError("--cuda-graph runs in one process only: the DistributedDataParallel all-reduce (and "
                         "--skip-bad-images' per-step vote) is not captured; drop --cuda-graph under torchrun")
    if cfg.amp and cfg.amp_dtype == "float16":
        raise ValueError("--cuda-graph with --amp-dtype float16: the gradient scaler reads its inf check back "
                         "to the host every step, which a CUDA graph cannot replay; use --amp (bfloat16, no "
                         "scaler) or drop --cuda-graph")


class GraphStep:
    """One replay-safe training step (see the module docstring).

    ``net``: the trainer's :class:`tdsa_fast.train.TrainingModule` (not DDP-wrapped);
    ``amp_dtype``: the autocast dtype (None: no autocast);
    ``capture``: capture a CUDA graph (CUDA only), else run the replay-safe body uncaptured.

    :meth:`fits` says whether a batch can take this step; :meth:`step` trains on it and
    returns the static ``[loss * n, ce * n, correct]`` float64 tensor (valid until the next
    step). ``captures`` counts the graph captures (or, uncaptured, the times one would be
    captured); ``replayed`` the steps run by the graph (or the uncaptured body after warmup).
    """

    def __init__(self, net: nn.Module, objective: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, amp_dtype: Optional[torch.dtype] = None, capture: bool = True,
                 warmup: int = 3, log: Callable = print):
        if capture and device.type != "cuda":
            raise ValueError(f"a CUDA graph needs a CUDA device, not {device}")
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError(f"the replay-safe step updates with torch.optim.SGD, not {type(optimizer).__name__}")
        self.net, self.objective, self.optimizer, self.device = net, objective, optimizer, device
        self.amp_dtype = amp_dtype
        self.capture, self.warmup, self.log = capture, max(int(warmup), 1), log
        self.images: Optional[torch.Tensor] = None  # the static buffers
        self.labels: Optional[torch.Tensor] = None
        self.masks: Optional[tuple[torch.Tensor, ...]] = None
        self.map_shapes: Optional[tuple] = None  # (middle, high) shapes, for drawing the masks
        self.sums: Optional[torch.Tensor] = None
        self.graph = None
        self.key = None  # the optimiser hyper-parameters the graph was captured with
        self.eager_steps = 0  # warmup steps run eagerly
        self.captures = 0
        self.replayed = 0
        self._stream = torch.cuda.Stream(device) if capture else None

    # -- what fits ---------------------------------------------------------------------------
    def fits(self, images: torch.Tensor, labels: torch.Tensor, n: int) -> bool:
        """A full batch (every image real) of the captured shape, dtype and memory layout."""
        if n != images.shape[0] or labels.shape[0] != n:
            return False
        if self.images is None:
            return True
        return (images.shape == self.images.shape and images.dtype == self.images.dtype
                and images.stride() == self.images.stride() and labels.dtype == self.labels.dtype
                and images.device == self.images.device)

    def _hyper_key(self) -> tuple:
        return tuple((g["lr"], g["momentum"], g["weight_decay"], g["dampening"], g["nesterov"],
                      g.get("maximize", False)) for g in self.optimizer.param_groups)

    # -- the step ----------------------------------------------------------------------------
    def _draw_masks(self, generator: Optional[torch.Generator]) -> Optional[tuple[torch.Tensor, ...]]:
        """The plain step's draws (TrainingObjective.draw_masks on maps of the step's shapes)."""
        middle, high = (torch.zeros((), device=self.device).expand(s) for s in self.map_shapes)
        stand_in = ModelOutput(logits=None, middle=middle, high=high)
        return self.objective.draw_masks(stand_in, generator)

    def _autocast(self):
        """Autocast without its weight cache (cast weights must not outlive a captured region;
        the cast values are the same)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def _body(self, masks, generator: Optional[torch.Generator] = None) -> None:
        """Forward, loss, backward, SGD update and the step's sums, from the static buffers
        (the masks given, or -- the first step -- drawn from ``generator`` as the plain step)."""
        n = self.labels.shape[0]
        with self._autocast():
            loss, ce, scores = self.net(self.images, self.labels, generator, masks=masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.sums.copy_(torch.stack([loss.detach().double() * n, ce.detach().double() * n,
                                     (scores.detach().argmax(1) == self.labels).sum().double()]))

    def step(self, images: torch.Tensor, labels: torch.Tensor,
             generator: Optional[torch.Generator]) -> torch.Tensor:
        """Trains on one fitting batch; the masks come from ``generator`` (seeded by the caller)."""
        if self.images is None:
            self._first(images, labels, generator)
            return self.sums
        self.images.copy_(images)
        self.labels.copy_(labels)
        masks = self._draw_masks(generator) if self.masks is not None else None
        if masks is not None:
            for static, drawn in zip(self.masks, masks):
                static.copy_(drawn)
        if self.eager_steps < self.warmup:
            self._eager()
            return self.sums
        key = self._hyper_key()
        if key != self.key:
            if self.key is not None:
                self.log(f"cuda graph: the optimiser's hyper-parameters changed ({self._describe(key)}); "
                         "capturing the step again")
            self._capture(key)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body(self.masks)
        self.replayed += 1
        return self.sums

    def _first(self, images, labels, generator) -> None:
        """The first step: the static buffers, and the maps' shapes from the plain draw."""
        self.images = torch.empty_like(images).copy_(images)  # keeps the memory layout
        self.labels = labels.clone()
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        with self._sync_check():
            self._body(None, generator)
        drawn, self.map_shapes = self.net.drawn_masks, self.net.map_shapes
        self.masks = None if drawn is None else tuple(m.detach().clone() for m in drawn)
        self.eager_steps = 1

    def _eager(self) -> None:
        with self._sync_check():
            self._body(self.masks)
        self.eager_steps += 1

    @contextlib.contextmanager
    def _sync_check(self):
        """On CUDA: the warmup on a side stream, with host syncs an error."""
        if not self.capture:
            yield
            return
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        before = torch.cuda.get_sync_debug_mode()
        try:
            with torch.cuda.stream(self._stream):
                torch.cuda.set_sync_debug_mode("error")
                try:
                    yield
                except RuntimeError as e:
                    if "synchroniz" in str(e).lower():
                        raise GraphCaptureError(
                            f"--cuda-graph: the training step synchronises with the host ({e}); it cannot be "
                            "captured in a CUDA graph. Train without --cuda-graph (this loss or model reads a "
                            "value back every step)") from e
                    raise
                finally:
                    torch.cuda.set_sync_debug_mode(before)
        finally:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)

    def _capture(self, key) -> None:
        self.key = key
        self.captures += 1
        if not self.capture:
            return
        self.graph = None  # the previous graph (and its memory pool) goes first
        torch.cuda.synchronize(self.device)
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates its own grads
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the torch loader's pin-memory thread may call the CUDA runtime
            # (cudaHostAlloc, event queries) while this thread captures; "global" would fail
            # the capture for calls that never touch the captured stream
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._body(self.masks)
        except Exception as e:  # nothing ran: the weights are the last completed step's
            raise GraphCaptureError(f"--cuda-graph: the training step could not be captured in a CUDA graph "
                                    f"({type(e).__name__}: {e}); train without --cuda-graph") from e
        self.graph = graph

    def _describe(self, key) -> str:
        return ", ".join(f"lr {g[0]:.4g}" for g in key)
