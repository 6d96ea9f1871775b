"""tdsa_fast.data.prefault: a fresh CPU tensor's pages faulted in by an idle-priority thread
(Linux 5.14+; elsewhere the thread ends at once and nothing changes)."""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys

import numpy as np
import pytest
import torch

from tdsa_fast.data import prefault as prefault_module
from tdsa_fast.data.prefault import IdlePrefault

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_POPULATE_WRITE) is Linux's")


def resident_pages(t: torch.Tensor) -> tuple[int, int]:
    """(resident, total) pages of the whole pages inside ``t``'s memory, by mincore(2)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = os.sysconf("SC_PAGE_SIZE")
    addr = t.data_ptr()
    start = -(-addr // page) * page
    end = (addr + t.numel() * t.element_size()) // page * page
    vec = ctypes.create_string_buffer((end - start) // page)
    assert libc.mincore(start, end - start, vec) == 0, ctypes.get_errno()
    flags = np.frombuffer(vec.raw, dtype=np.uint8)
    return int((flags & 1).sum()), len(flags)


METHODS = ["madvise", pytest.param("touch", marks=pytest.mark.skipif(
    prefault_module._touch_pages() is None, reason="tdsa_fast._C is not built (pip install -e . builds it)"))]


@pytest.fixture(params=METHODS)
def method(request, monkeypatch):
    """Each way of faulting pages in: the compiled touch, or madvise (the touch taken away)."""
    if request.param == "madvise":
        monkeypatch.setattr(prefault_module, "_touch_pages", lambda: None)
    return request.param


@linux
def test_pages_are_faulted_in_and_the_values_kept(method):
    memory = mmap.mmap(-1, 48 << 20)  # pages never touched (torch.empty may reuse resident memory)
    t = torch.frombuffer(memory, dtype=torch.uint8)
    t[:4096].fill_(7)  # a value written before the thread runs stays
    t[-1] = 9
    before, total = resident_pages(t)
    assert before < total // 2  # fresh memory: not faulted in yet
    prefault = IdlePrefault(t)
    assert prefault.method == method
    assert prefault.wait(timeout=60)
    if not prefault.populated:
        pytest.skip(f"{method} or SCHED_IDLE not available here (madvise: Linux < 5.14?)")
    assert resident_pages(t) == (total, total)
    assert int(t[:4096].min()) == 7 == int(t[:4096].max()) and int(t[-1]) == 9
    assert int(t[4096:-1].max()) == 0


@linux
def test_values_written_while_the_pages_are_faulted_in_are_kept(method):
    """The memory loader's decoder writes the store while the thread runs: every byte that a
    concurrent writer puts there stays (the touch is an atomic write of the byte it reads)."""
    memory = mmap.mmap(-1, 32 << 20)
    t = torch.frombuffer(memory, dtype=torch.uint8)
    page = os.sysconf("SC_PAGE_SIZE")
    starts = t[::page]  # the bytes the touch writes
    prefault = IdlePrefault(t)
    for k in range(starts.numel() - 1, -1, -1):  # from the end, to meet the thread in the middle
        starts[k] = 1 + k % 251
    assert prefault.wait(timeout=60)
    want = 1 + torch.arange(starts.numel()) % 251
    assert torch.equal(starts.to(torch.int64), want)


def test_stop_ends_the_thread_and_other_devices_do_nothing():
    t = torch.empty(256 << 20, dtype=torch.uint8)
    prefault = IdlePrefault(t)
    prefault.stop()
    assert prefault.wait(timeout=60)
    del t  # the thread held its own reference while it ran
    meta = IdlePrefault(torch.empty(16, dtype=torch.uint8, device="meta"))
    assert meta.wait(timeout=0) and not meta.populated
