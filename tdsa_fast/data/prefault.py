"""A fresh CPU tensor's pages faulted in during the CPU's idle time (Linux).

The first write to each 4 KB page of a fresh allocation costs a page fault and the zeroing of
the page: for the memory loader's stored split (300 MB at 224 px for Flowers-102) about 0.13 s
of one core, paid inside the first epoch by whichever thread writes first.  A thread under
``SCHED_IDLE`` (run only when a core would otherwise idle: the gaps of the decoding pipeline)
faults the pages in ahead, 2 MB at a time: with the compiled ``tdsa_fast._C.touch_pages`` (one
atomic write per page that keeps its byte, so the decoder may be writing the same memory), else
with ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14 and later).  The first is preferred: while it
runs, ``madvise`` holds the process's memory-map lock, which other threads' allocations need,
and an idle-priority thread holding it can be kept off the CPU (first epochs 4-6 % slower in
bench/RESULTS.md).  Nothing changes what the tensor holds; where neither way nor the policy is
available the thread ends and the pages fault in as usual.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Optional

import torch

__all__ = ["IdlePrefault"]

_MADV_POPULATE_WRITE = 23
_STEP = 2 << 20


def _touch_pages():
    """``tdsa_fast._C.touch_pages`` when the library is built, else None."""
    from tdsa_fast import _backend

    if not _backend._load_library():
        return None
    from tdsa_fast import _C

    return getattr(_C, "touch_pages", None)


def _madvise():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    fn = ctypes.CDLL(name, use_errno=True).madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class IdlePrefault:
    """Starts faulting in ``tensor``'s pages (a CPU tensor) in idle time; ``stop()`` ends it
    early.  ``populated`` (after the thread ended, see :meth:`wait`): whether every page was
    faulted in; ``method``: ``"touch"``, ``"madvise"`` or None (no thread).  The thread holds the
    tensor until it ends, so freeing the tensor's other references is always safe."""

    def __init__(self, tensor: torch.Tensor):
        self.populated = False
        self.method: Optional[str] = None  # "touch" or "madvise" once the thread started
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if tensor.device.type != "cpu" or not sys.platform.startswith("linux") or not hasattr(os, "SCHED_IDLE"):
            return
        touch = _touch_pages()
        madvise = _madvise() if touch is None else None  # find_library runs ldconfig: only when needed
        if touch is None and madvise is None:
            return
        self.method = "touch" if touch is not None else "madvise"
        self._thread = threading.Thread(target=self._run, args=(tensor, touch, madvise), name="tdsa-idle-prefault",
                                        daemon=True)
        self._thread.start()

    def _run(self, tensor: torch.Tensor, touch, madvise) -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
        except OSError:
            return  # at normal priority it would take cores from the decoding
        page = os.sysconf("SC_PAGE_SIZE")
        addr = tensor.data_ptr()
        start = -(-addr // page) * page
        end = (addr + tensor.numel() * tensor.element_size()) // page * page
        for a in range(start, end, _STEP):
            if self._stop.is_set():
                return
            if touch is not None:
                touch(a, min(_STEP, end - a), page)
            elif madvise(a, min(_STEP, end - a), _MADV_POPULATE_WRITE) != 0:
                return  # EINVAL before Linux 5.14: the pages fault in when written
        self.populated = True

    def stop(self) -> None:
        """Ends the thread at its next 2 MB step (without waiting for it)."""
        self._stop.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits for the thread to end; True when it has (or never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()
