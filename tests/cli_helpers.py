"""Running a command's ``main(argv)`` in-process, as a new interpreter would, for the tests."""
from __future__ import annotations

import signal

import torch


def run_main(main, argv, capsys) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``main(argv)``: argparse's ``SystemExit`` is caught
    and its code returned; any other exception propagates (the test fails on a traceback).
    torch's thread count, which ``--threads`` sets, and the SIGINT/SIGTERM handlers a command
    installs are restored."""
    threads = torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    finally:
        torch.set_num_threads(threads)
        for s, handler in handlers.items():
            signal.signal(s, handler)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err
