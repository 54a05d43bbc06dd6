"""Host memory: keep what a step frees for the next step (glibc's malloc), so XLA:CPU stops paying page faults.

XLA:CPU allocates each compiled program's temporary buffer (all its intermediate arrays: 1,644 MiB for a
MiniLM train step at batch 32 x 128) when the program starts and frees it when it ends. glibc's malloc hands
a request that large to the kernel as a fresh mapping and unmaps it on free (a thread outside the main
arena always does), so every step faults in every page of it again: 420,000 minor page faults (1.6 GiB of
4 KiB pages) and ~1 s of kernel CPU time per MiniLM step on a 2-core machine, which took 3.3 s a step instead
of 2.6 s (bench/profile_step.py, bench/README.md).
`keep_freed_memory` tells glibc to serve every thread from one heap that is never unmapped or trimmed, so the
second step reuses the first step's pages. The process keeps its peak heap for its life (what a training
process needs again anyway); `LM_MALLOC=system` keeps glibc's defaults.

It has to run before the threads that allocate start (a thread keeps the arena it first got): main.py calls it
first thing, before TensorFlow or JAX start theirs. For --mode=serve main.py passes default="system" (many
request threads would share the one arena: it served fewer requests per second in bench/serve_load.py), which
LM_MALLOC=reuse overrides. Called once JAX, TensorFlow, numpy or torch is imported, too late to help, it changes
nothing; without glibc, or with LM_MALLOC=system, neither.
"""

import ctypes
import os
import sys

MALLOC_ENV = "LM_MALLOC"  # "reuse" (default) or "system" (glibc's defaults).
CHOICES = ("reuse", "system")

# Libraries that start threads (which then keep the malloc arena they first got) when imported or first used.
THREADED_LIBRARIES = ("jax", "tensorflow", "numpy", "torch")

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


def glibc():
    """The process's own C library if it is glibc, else None (macOS, musl, Windows)."""
    try:
        libc = ctypes.CDLL(None)  # The symbols the process already has: its own C library.
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it.
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def keep_freed_memory(default: str = "reuse") -> bool:
    """Sets glibc's malloc to reuse freed memory across steps (see the module docstring); True if it did.

    One arena for all threads (M_ARENA_MAX 1), no separate mappings for large blocks (M_MMAP_MAX 0) and no
    trimming of the heap's free top (M_TRIM_THRESHOLD: the largest size). LM_MALLOC, when set, wins over
    `default` (one of CHOICES). A clear error for an unknown LM_MALLOC; False without glibc, with "system", or
    once a THREADED_LIBRARIES module is imported.
    """
    choice = os.environ.get(MALLOC_ENV, "") or default
    if choice not in CHOICES:
        raise ValueError(f"{MALLOC_ENV}={choice!r} is not known; use one of {', '.join(CHOICES)}.")
    if choice == "system" or any(name in sys.modules for name in THREADED_LIBRARIES):
        return False
    libc = glibc()
    if libc is None:
        return False
    # mallopt takes an int; glibc reads the trim threshold as an unsigned size, so -1 means "never trim".
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
    results = [libc.mallopt(param, value) for param, value in settings]
    return all(result == 1 for result in results)
