"""glibc's malloc options: set where the C library is glibc, a no-op elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys

from altclip.runtime.memory import fix_mmap_threshold, limit_malloc_arenas


def test_the_options_take_on_glibc_only():
    glibc = platform.libc_ver()[0] == "glibc" and sys.platform.startswith("linux")
    assert fix_mmap_threshold() is glibc and limit_malloc_arenas() is glibc


def test_a_fixed_threshold_gives_freed_blocks_back():
    """1 MiB blocks after a freed 32 MiB one: with glibc's moving threshold they come from the heap and, freed below
    a live block, stay resident; with the threshold fixed each is mapped and unmapped, and the memory goes back."""
    script = """
import resource, sys, torch
from altclip.runtime.memory import fix_mmap_threshold
if sys.argv[1] == "fixed":
    fix_mmap_threshold()
big = torch.empty(8 * 2**20)  # a mapped 32 MiB block, freed: glibc's threshold moves up to it
del big
blocks = [torch.ones(2**18) for _ in range(600)]  # 600 x 1 MiB
pin = torch.ones(2**18)  # above them in the heap: glibc cannot trim the heap below a live block
del blocks
print(int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize())
"""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return
    rss = {
        mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True).stdout)
        for mode in ("default", "fixed")
    }
    assert rss["fixed"] < rss["default"] - 300 * 2**20  # the 600 MiB kept by the heap with glibc's default
