"""Dynamic batching: instances from concurrent requests are gathered into one model batch.

A batch closes when it holds `max_batch_size` instances or when its first instance has waited `max_wait_ms`;
with `close_when_idle`, also as soon as no other request is on its way in: the server brackets the reading
and checking of each request with `arriving()`, and a batch then waits for company only while some request
is inside that bracket (so a lone client is not made to wait `max_wait_ms` for nobody).

The queue is bounded (`max_queue` instances): a request whose instances do not all fit is refused whole (the
server answers 503), never half-queued. Instances are validated before they are
queued, so a batch holds only servable inputs; should the model still fail on a batch, each of its
instances is retried alone, so the failure stays with the instance that caused it.
"""

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The queue cannot take the request's instances now."""


class NotServing(RuntimeError):
    """The batcher is stopped or draining."""


@dataclasses.dataclass
class _Item:
    example: object
    future: Future


class DynamicBatcher:
    """Runs `predict(examples) -> array [n, ...]` on batches of at most `max_batch_size` examples."""

    def __init__(self, predict: Callable[[list], np.ndarray], max_batch_size: int, max_wait_ms: float,
                 max_queue: int, on_batch: Callable[[int], None] | None = None,
                 on_queue_depth: Callable[[int], None] | None = None, close_when_idle: bool = False):
        if max_batch_size <= 0 or max_queue < max_batch_size or max_wait_ms < 0:
            raise ValueError(f"Batching needs max_batch_size > 0 (got {max_batch_size}), max_queue >= "
                             f"max_batch_size (got {max_queue}) and max_wait_ms >= 0 (got {max_wait_ms}).")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.close_when_idle = close_when_idle
        self._on_batch = on_batch or (lambda size: None)
        self._on_queue_depth = on_queue_depth or (lambda depth: None)
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._accepting = False
        self._arriving = 0  # Requests being read and checked, not yet submitted (or refused).
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            self._accepting = True
        self._thread = threading.Thread(target=self._loop, name="dynamic-batcher", daemon=True)
        self._thread.start()

    def submit(self, examples: list) -> list[Future]:
        """Queues all `examples` or none; one future per example."""
        with self._cond:
            if not self._accepting:
                raise NotServing("The model is not accepting requests (starting or shutting down).")
            if len(self._queue) + len(examples) > self.max_queue:
                raise QueueFull(f"The queue is full ({len(self._queue)} of {self.max_queue} instances waiting); "
                                "retry later.")
            items = [_Item(example, Future()) for example in examples]
            self._queue.extend(items)
            self._on_queue_depth(len(self._queue))
            self._cond.notify()
        return [item.future for item in items]

    @contextlib.contextmanager
    def arriving(self):
        """Brackets the reading, checking and `submit` of one request: the open batch may wait for it."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify()

    def stop(self) -> None:
        """Refuses new instances, finishes every queued one, then ends the batching thread."""
        with self._cond:
            self._accepting = False
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if not self._accepting:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait_s
            while len(self._queue) < self.max_batch_size and self._accepting:
                if self.close_when_idle and not self._arriving:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            self._on_queue_depth(len(self._queue))
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._on_batch(len(batch))
            try:
                outputs = self._predict([item.example for item in batch])
                for item, output in zip(batch, outputs):
                    item.future.set_result(output)
            except Exception as batch_error:  # Each instance gets its own verdict below.
                if len(batch) == 1:
                    log.exception("Model failure on a batch of 1.")
                    batch[0].future.set_exception(batch_error)
                    continue
                log.warning("Model failure on a batch of %d (%s); retrying each instance alone.", len(batch),
                            batch_error)
                for item in batch:
                    try:
                        item.future.set_result(self._predict([item.example])[0])
                    except Exception as error:
                        item.future.set_exception(error)
