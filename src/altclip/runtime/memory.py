"""glibc's malloc, told how a long-running process of large tensors should use it (Linux only).

By default glibc raises its mmap threshold each time a mapped block is freed, up to 32 MiB; after that, tensors
below it come from the heap, where freed memory stays with the process and fragments. A training step that frees
and reallocates many such tensors then holds far more than it uses: LoRA fine-tuning at BAAI/AltCLIP's size
peaked at 18.1 GiB of resident memory with glibc's default and 9.8 GiB with the threshold fixed at 128 KiB, full
fine-tuning at 18.0 and 15.1 GiB, for steps 10 to 13% longer (``benchmarks/finetune.py``).
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
MMAP_THRESHOLD = 128 * 1024  # glibc's starting value, kept: every block at least this large is mapped and unmapped


def _mallopt(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(option, value))
    except (OSError, AttributeError):
        return False


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas. By default every thread that allocates may get an arena of its own (up to 8 per
    core), each keeping the memory freed in it; with a thread pool decoding uploads the server's RSS then climbs
    for the first thousand or so requests (by 9 to 12% in benchmarks/serve.py). Two arenas keep it flat. The same
    as MALLOC_ARENA_MAX=2; call it before the threads start. False where the C library is not glibc."""
    return _mallopt(M_ARENA_MAX, arenas)


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Keep glibc's mmap threshold at ``size`` (the same as MALLOC_MMAP_THRESHOLD_): blocks at least this large
    go back to the system when freed (see the module docstring). False where the C library is not glibc."""
    return _mallopt(M_MMAP_THRESHOLD, size)
