"""Ctrl-C in child processes the tests start.

A process started with SIGINT ignored (a background job of a non-interactive shell, `nohup`,
some CI runners) passes that on, and Python then installs no `KeyboardInterrupt` handler at
all. The Ctrl-C tests start their child with `preexec_fn=sigint_default`, so that its Python
sets up Ctrl-C as it does under a terminal, whatever the test runner was started from.
"""

from __future__ import annotations

import signal


def sigint_default() -> None:
    """In the child, between fork and exec: SIGINT back to its default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
