"""Data-loading worker processes: what each one does as it starts (``worker_init_fn``)."""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent(worker_id: int) -> None:
    """Linux: a worker is killed when the main process dies, even by ``kill -9``.

    Otherwise an orphaned worker blocks for ever flushing its queue into a pipe no one reads.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent was already gone before the request took effect
            os._exit(1)
