"""Imported only as a ``forkserver`` preload (:mod:`tdsa_fast.data.worker_signals`): the
server process, and so every worker forked from it, ignores SIGTERM from its start. Never
import it in the trainer's own process."""
import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
