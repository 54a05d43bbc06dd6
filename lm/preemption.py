"""Preemption: SIGTERM asks the run to save a checkpoint and stop at a step every process agrees on.

With several processes, JAX's preemption service (started by `jax.distributed.initialize`) catches SIGTERM
on any host and `multihost_utils.reached_preemption_sync_point(step)` turns true on every process at the
same step. A single process has no such service: a SIGTERM handler sets a flag that the loop reads each
step. Either way the check is a host-side read, with no device sync.
"""

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class PreemptionWatch:
    """`reached(step)` is True once SIGTERM arrived (any process); call it every step, on every process."""

    def __init__(self):
        self._signalled = threading.Event()
        self._previous = None
        self._distributed = jax.process_count() > 1
        if not self._distributed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        log.warning("SIGTERM received: saving a checkpoint after the current step, then stopping.")
        self._signalled.set()

    def reached(self, step: int) -> bool:
        if self._distributed:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
