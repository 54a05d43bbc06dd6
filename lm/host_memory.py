"""Host memory: keep what a step frees for the next step (glibc's malloc), so XLA:CPU stops paying page faults.

XLA:CPU allocates each compiled program's temporary buffer (all its intermediate arrays: ~700 MB for a
MiniLM train step at batch 32 x 128) when the program starts and frees it when it ends. glibc's malloc hands
a request that large to the kernel as a fresh mapping and unmaps it on free (a thread outside the main
arena always does), so every step faults in every page of it again: 420,000 minor page faults and ~1 s of
kernel CPU time per MiniLM step on a 2-core machine, about a fifth of the step (bench/README.md).
`keep_freed_memory` tells glibc to serve every thread from one heap that is never unmapped or trimmed, so the
second step reuses the first step's pages. The process keeps its peak heap for its life (what a training or
serving process needs again anyway); `LM_MALLOC=system` keeps glibc's defaults.

It has to run before the threads that allocate start (a thread keeps the arena it first got): main.py calls it
first thing, before TensorFlow or JAX start theirs. Elsewhere (no glibc, or LM_MALLOC=system) it does nothing.
"""

import ctypes
import ctypes.util
import os

MALLOC_ENV = "LM_MALLOC"  # "reuse" (default) or "system" (glibc's defaults).
CHOICES = ("reuse", "system")

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


def _libc():
    """glibc's C library, or None where the C library is another (macOS, musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it.
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to reuse freed memory across steps (see the module docstring); True if it did.

    One arena for all threads (M_ARENA_MAX 1), no separate mappings for large blocks (M_MMAP_MAX 0) and no
    trimming of the heap's free top (M_TRIM_THRESHOLD: the largest size). A clear error for an unknown
    LM_MALLOC; False without glibc or with LM_MALLOC=system.
    """
    choice = os.environ.get(MALLOC_ENV, "reuse")
    if choice not in CHOICES:
        raise ValueError(f"{MALLOC_ENV}={choice!r} is not known; use one of {', '.join(CHOICES)}.")
    if choice == "system":
        return False
    libc = _libc()
    if libc is None:
        return False
    # mallopt takes an int; glibc reads the trim threshold as an unsigned size, so -1 means "never trim".
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
