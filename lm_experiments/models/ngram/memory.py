"""glibc's allocator, tuned while a large corpus is counted and estimated (see
``reusing_freed_memory``): the only ctypes in the project, and a no-op where it does not apply."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

_ALLOCATOR_LOCK = threading.Lock()


@contextlib.contextmanager
def reusing_freed_memory(num_tokens: int):
    """While counting and estimating a large corpus, let glibc's malloc reuse freed arrays.

    glibc serves an allocation larger than its mmap threshold (at most 32 MB) with a fresh
    ``mmap`` that ``free`` returns to the kernel, so each of the many large temporaries of a big
    corpus is page-faulted (zeroed) anew: on the project's VMs that made a 16M-token 5-gram grow
    as n^1.2-1.4 instead of n log n. Here ``mmap`` is off and trimming deferred, so freed arrays
    are reused; afterwards the heap is trimmed and the limits are set to glibc's own steady state
    (mmap above 32 MB, trim above 64 MB). It is process-wide, so it is used only where it
    matters (more than 2^20 tokens), one estimation at a time, and never
    where the user set glibc's ``MALLOC_*`` variables or the C library is not glibc.
    """
    large = num_tokens > 2**20  # temporaries of 8 MB and more; the default corpora are smaller
    user_tuned = any(k.startswith("MALLOC_") for k in os.environ)
    libc = _glibc() if large and not user_tuned else None
    if libc is None or not _ALLOCATOR_LOCK.acquire(blocking=False):
        yield  # small corpus, not glibc, user-tuned, or another estimation is running
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
    try:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, 65536)  # glibc's default
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)
        libc.malloc_trim(0)
        _ALLOCATOR_LOCK.release()


def _glibc():
    """The C library if it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None
