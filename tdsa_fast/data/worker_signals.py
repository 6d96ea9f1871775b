"""The stop signals in the PyTorch loader's worker processes: ignored.

Slurm, systemd and ``kill -TERM -- -PGID`` (and Ctrl-C in a terminal) signal the whole
process group. The trainer's main process answers SIGTERM and SIGINT by finishing its step,
saving ``last.pt`` and exiting 0 (:class:`tdsa_fast.distributed.StopRequest`); its
DataLoader workers must not die first, or the main process fails on their death instead of
saving. So every worker ignores both signals from its start (``worker_init_fn``), and the
``forkserver`` process that the workers are forked from when DALI is loaded ignores SIGTERM
(it ignores SIGINT itself) by importing :mod:`tdsa_fast.data.forkserver_signals` as a
preload, so that its children are born ignoring it and it survives to start later workers.
The workers still stop when their loader closes (the main process tells them through their
queues, and they exit when it dies).
"""
from __future__ import annotations

import signal

__all__ = ["STOP_SIGNALS", "ignore_stop_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """Ignores :data:`STOP_SIGNALS` in this process (a DataLoader ``worker_init_fn``)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
