"""Memory given back: glibc's allocator told to return large blocks to the system when freed.

A request's arrays (its body, decoded pictures, model inputs, a batch's outputs) are hundreds of
kilobytes to megabytes. glibc serves blocks above its mmap threshold with mmap and unmaps them when
freed, but raises that threshold every time such a block is freed, up to 32 MiB: soon every one of
them comes from the heap, whose free space is fragmented and kept, so a worker's resident memory
grows in steps under steady load and does not come back (docs/reliability.md measures it). Fixing
the threshold (which also stops its adjustment) keeps large blocks mmapped for good, as
MALLOC_MMAP_THRESHOLD_ would from the environment. Not glibc (musl, macOS): nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("bentoml.image_classifier")

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def give_back_large_blocks(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; whether it was set (False: not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, threshold) == 1
    if not done:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed: memory may grow in steps under load", threshold)
    return done
