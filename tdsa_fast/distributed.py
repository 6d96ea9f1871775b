"""The trainer's processes: one, or several started by ``torchrun`` (one per GPU, or gloo
processes on CPUs), on one node or several.

:func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``),
starts the process group (NCCL on CUDA, gloo on the CPU) and picks each process's device.
Besides the main group, a gloo group carries the small host-side agreements the trainer
needs every step (stop now? how many real samples in this step, over all ranks?), so that
they never wait for the GPU.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist


@dataclass
class Processes:
    """This process's place among the trainer's processes (``world_size`` 1: no group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None  # the gloo group of the host-side agreements

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor`` over the processes in place (on its device; no host read)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_buffers(self, modules) -> None:
        """Rank 0's buffers of ``modules`` (BatchNorm statistics, a loss's state) copied into
        every process's."""
        if self.enabled:
            for module in modules:
                for buffer in module.buffers():
                    dist.broadcast(buffer, src=0)

    def agree(self, values: list[int]) -> list[int]:
        """The sums of the host integers ``values`` over the processes (the control group)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.control)
        return t.tolist()

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0 and its result given to every process; a ``ValueError`` it
        raises is raised on every process (so no rank waits forever for a failed rank 0)."""
        if not self.enabled:
            return fn()
        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except ValueError as e:
                box[0] = ("error", str(e))
        dist.broadcast_object_list(box, src=0, group=self.control)
        status, value = box[0]
        if status == "error":
            raise ValueError(value)
        return value

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control)

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_flag: str) -> tuple[Processes, torch.device]:
    """The processes and this process's device for ``--device device_flag``.

    Under torchrun with several processes: ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK``
    with NCCL, ``cpu`` (or ``auto`` without CUDA) the CPU with gloo.

    Raises:
        ValueError: ``cuda:N`` under torchrun (each process takes its own GPU), CUDA asked
            for but absent, or fewer visible GPUs than processes on the node.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    if world_size <= 1:
        return Processes(), pick_device(device_flag)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_flag not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device_flag}: under torchrun use auto, cpu or cuda "
                         "(each process takes cuda:LOCAL_RANK)")
    use_cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible on this node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        control = dist.new_group(backend="gloo")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
        control = None  # the main group is gloo already
    return Processes(rank=rank, world_size=world_size, local_rank=local_rank, control=control), device


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only cpu and cuda are supported")
    return device


class StopRequest:
    """SIGTERM and SIGINT set :attr:`requested` instead of killing the process, so the
    trainer can finish its step, save a checkpoint and exit cleanly; a second SIGINT
    (Ctrl-C twice) interrupts at once (KeyboardInterrupt), as usual. A context manager: the previous
    handlers come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: Optional[str] = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            if signum == signal.SIGINT and self.requested == "SIGINT":
                raise KeyboardInterrupt
            return  # the first signal names the stop
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                break
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
