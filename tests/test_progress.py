"""The progress line counts completed steps, not dispatched ones (a fake clock and a slow device; no wall time)."""

import io
import logging
import math
import os
import pathlib
import subprocess
import sys

import pytest

import lm
from lm import progress

ROOT = pathlib.Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeStep:
    """A dispatched step's output: ready once the fake device has run it."""

    def __init__(self, device: "SlowDevice", step: int):
        self.device, self.step = device, step

    def is_ready(self) -> bool:
        return self.step <= self.device.done

    def block_until_ready(self):
        self.device.run_until(self.step)
        return self


class SlowDevice:
    """Runs one step every `seconds_per_step` of the fake clock, however far ahead the host dispatches."""

    def __init__(self, clock: FakeClock, seconds_per_step: float, start: float = 0.0):
        self.clock, self.seconds_per_step, self.start, self.done = clock, seconds_per_step, start, 0

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.done = max(0, int((self.clock.now - self.start) // self.seconds_per_step))

    def run_until(self, step: int) -> None:
        self.advance(max(0.0, self.start + step * self.seconds_per_step - self.clock.now))


def test_rate_and_eta_come_from_completed_steps():
    clock = FakeClock()
    device = SlowDevice(clock, seconds_per_step=2.0)
    bar = progress.Progress(100, 0, every_steps=10, clock=clock, interactive=False)
    # The host dispatches 50 steps in 1 fake second: a dispatch counter would claim 50 steps/s and an ETA of 1 s.
    for step in range(1, 51):
        device.advance(1.0 / 50)
        bar.update(step, FakeStep(device, step))
    assert bar.completed == 0
    assert math.isnan(bar.steps_per_second())
    # 20 more seconds: the device finished 10 steps at one step per 2 s; the other 40 dispatched are still queued.
    for _ in range(20):
        device.advance(1.0)
        bar.poll()
    assert bar.completed == 10
    assert bar.steps_per_second() == pytest.approx(0.5)
    assert bar.eta_seconds() == pytest.approx(90 * 2.0)
    assert "step 10/100" in bar.line() and "0.5 steps/s" in bar.line() and "ETA 3m00s" in bar.line()


def test_compile_time_of_the_first_step_is_not_in_the_rate():
    clock = FakeClock()
    device = SlowDevice(clock, seconds_per_step=1.0, start=60.0)  # 60 s of compilation before step 1 runs.
    bar = progress.Progress(10, 0, every_steps=100, clock=clock, interactive=False)
    for step in range(1, 10):  # Dispatched at once, ahead of the device.
        bar.update(step, FakeStep(device, step))
    device.advance(64.5)
    bar.poll()
    assert bar.completed == 4
    for _ in range(3):
        device.advance(1.0)
        bar.poll()
    assert bar.completed == 7
    assert bar.steps_per_second() == pytest.approx(1.0)  # Not 7 steps / 67.5 s.


def test_the_last_step_waits_and_logs_the_final_line(caplog):
    clock = FakeClock()
    device = SlowDevice(clock, seconds_per_step=3.0)
    bar = progress.Progress(4, 0, every_steps=2, clock=clock, interactive=False)
    with caplog.at_level(logging.INFO, logger="lm.progress"):
        for step in range(1, 5):
            bar.update(step, FakeStep(device, step))
    assert bar.completed == 4 and clock.now == pytest.approx(12.0)
    lines = [r.getMessage() for r in caplog.records if r.name == "lm.progress"]
    assert lines and lines[-1].startswith("step 4/4 (100%)")


def test_terminal_line_is_redrawn_in_place():
    clock, stream = FakeClock(), io.StringIO()
    device = SlowDevice(clock, seconds_per_step=1.0)
    bar = progress.Progress(3, 0, every_steps=1, clock=clock, stream=stream, interactive=True, redraw_seconds=0.0)
    for step in range(1, 4):
        device.advance(1.0)
        bar.update(step, FakeStep(device, step))
    text = stream.getvalue()
    assert text.count("\r") >= 3 and text.endswith("\n") and text.count("\n") == 1
    assert "step 3/3 (100%)" in text.rsplit("\r", 1)[-1]


def test_format_duration_and_metrics_table():
    assert progress.format_duration(0) == "0m00s"
    assert progress.format_duration(125) == "2m05s"
    assert progress.format_duration(3 * 3600 + 120) == "3h02m"
    assert progress.format_duration(math.nan) == "?"
    table = progress.metrics_table({
        "validation": {"accuracy": 0.91234, "loss": 0.3, "step": 40, "f1": [0.1, 0.2]},
        "test": {"accuracy": 0.9, "loss": 0.31, "step": 40},
    })
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "validation", "test"]
    assert lines[1].split() == ["accuracy", "0.9123", "0.9000"]
    assert lines[-1].split() == ["step", "40", "40"]
    assert "f1" not in table  # Lists stay in the JSON.


def _python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", lm.TF_LOGS_ENV)}
    environment.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=600)


def test_tensorflow_starts_quietly():
    """Whatever this machine's TensorFlow prints at import (CUDA stubs, cuInit, CPU features) is held back."""
    result = _python("import lm; lm.import_tensorflow_quietly(); import tensorflow as tf; "
                     "print(int(tf.constant(2) + 1))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3" and result.stderr == ""


def test_tensorflow_logs_come_back_with_lm_tf_logs():
    result = _python("import sys, lm; lm.import_tensorflow_quietly(); print('tensorflow' in sys.modules)",
                     LM_TF_LOGS="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"  # Left alone: TensorFlow imports later with its own logging.
