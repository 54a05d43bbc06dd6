"""The progress line: steps/s and ETA from COMPLETED steps, and the final metrics as a short table.

The training loop dispatches steps ahead of the device (JAX runs them asynchronously), so counting
dispatched steps overstates the speed and says "ETA 0m" while minutes of queued work remain. `Progress`
is handed, with each dispatched step, a value that the step produces (its loss); a step counts as
completed once that value is ready (`is_ready()`, which never blocks), and the rate is measured between
completed steps only, over the last `window` of them.

On an interactive terminal the line is redrawn in place (`\\r`) at most every `redraw_seconds`, and log
records clear it first so that they do not mix with it; otherwise (a file, a pipe, a batch job's log)
it is one log line every `every_steps` completed steps.
"""

import collections
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Ready(Protocol):
    def is_ready(self) -> bool: ...


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    def __init__(self, total_steps: int, start_step: int, every_steps: int, *, window: int = 50,
                 clock: Callable[[], float] = time.monotonic, stream: Any = None, interactive: bool | None = None,
                 redraw_seconds: float = 0.5):
        self.total_steps = total_steps
        self.every_steps = every_steps
        self.clock = clock
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = _is_terminal(self.stream) if interactive is None else interactive
        self.redraw_seconds = redraw_seconds
        self.completed = start_step
        self._start_time = clock()
        # (completed step, when): the first entry is the first step completed here, so compile time is left out.
        self._times: collections.deque[tuple[int, float]] = collections.deque(maxlen=window + 1)
        self._pending: collections.deque[tuple[int, Ready]] = collections.deque()
        self._last_drawn = -math.inf
        self._last_logged = start_step
        self._open_line = False
        self._clear = _ClearLineFilter(self)

    def update(self, step: int, done: Ready) -> None:
        """Records dispatched `step` (`done` becomes ready when it has run), then reports what has completed.

        The last step (`total_steps`) finishes the line: it waits for that step.
        """
        self._pending.append((step, done))
        if step >= self.total_steps:
            self.finish()
            return
        self._collect()
        self._report()

    def poll(self) -> None:
        """Reports the steps that completed since the last call, without dispatching one."""
        self._collect()
        self._report()

    def wait(self) -> None:
        """Blocks until every dispatched step has run (the loop's own sync point), then reports."""
        self._drain()
        self._report()

    def finish(self) -> None:
        """Waits for the dispatched steps, draws the final line and ends it."""
        self._drain()
        if not self.interactive:
            self._report()
        else:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
            self._clear.remove()

    def steps_per_second(self) -> float:
        """Completed steps per second over the window; NaN until steps completed at two different times."""
        if len(self._times) < 2:
            return math.nan
        (first_step, first_time), (last_step, last_time) = self._times[0], self._times[-1]
        if last_step - first_step < 1 or last_time <= first_time:
            return math.nan
        return (last_step - first_step) / (last_time - first_time)

    def eta_seconds(self) -> float:
        rate = self.steps_per_second()
        return (self.total_steps - self.completed) / rate if rate > 0 else math.nan

    def line(self) -> str:
        rate = self.steps_per_second()
        percent = 100.0 * self.completed / max(self.total_steps, 1)
        speed = "? steps/s" if math.isnan(rate) else f"{rate:.3g} steps/s"
        elapsed = format_duration(self.clock() - self._start_time)
        return (f"step {self.completed}/{self.total_steps} ({percent:.0f}%), {speed}, "
                f"ETA {format_duration(self.eta_seconds())}, elapsed {elapsed}")

    def _drain(self) -> None:
        while self._pending:
            _block(self._pending[0][1])
            self._collect()

    def _collect(self) -> None:
        """Moves the steps whose values are ready from pending to completed, in order; the clock dates them."""
        now = None
        while self._pending and self._pending[0][1].is_ready():
            step, _ = self._pending.popleft()
            now = self.clock() if now is None else now
            self.completed = step
        if now is not None:
            self._times.append((self.completed, now))

    def _report(self) -> None:
        if self.interactive:
            self._draw()
        elif self.completed - self._last_logged >= self.every_steps or (
                self.completed == self.total_steps and self._last_logged < self.total_steps):
            self._last_logged = self.completed
            log.info("%s", self.line())

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_drawn < self.redraw_seconds:
            return
        self._last_drawn = now
        if not self._open_line:
            self._clear.install()
        self.stream.write("\r\x1b[K" + self.line())
        self.stream.flush()
        self._open_line = True

    def clear_line(self) -> None:
        if self._open_line:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._open_line = False


class _ClearLineFilter(logging.Filter):
    """On the root logger's handlers: clears an open progress line before a log record is written."""

    def __init__(self, progress: Progress):
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.clear_line()
        return True

    def install(self) -> None:
        for handler in logging.getLogger().handlers:
            if self not in handler.filters:
                handler.addFilter(self)

    def remove(self) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self)


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _block(done: Any) -> None:
    if hasattr(done, "block_until_ready"):
        done.block_until_ready()
    else:
        while not done.is_ready():
            time.sleep(0.01)


def metrics_table(results: dict[str, dict], digits: int = 4) -> str:
    """{split: metrics} -> a small aligned table of the scalar metrics, one column per split.

    Per-class lists and the confusion matrix stay in metrics_<split>.json.
    """
    splits = list(results)
    keys = sorted({key for result in results.values() for key, value in result.items() if _is_scalar(value)})
    rows = [["metric", *splits]]
    for key in keys:
        cells = []
        for split in splits:
            value = results[split].get(key)
            if not _is_scalar(value):
                cells.append("")
            elif float(value).is_integer() and key in ("step", "num_examples"):
                cells.append(str(int(value)))
            else:
                cells.append(f"{value:.{digits}f}")
        rows.append([key, *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(lines)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
