"""Opt-in per-step debug log (config.debug.step_log): `step loss sha256-of-this-host's-batch` lines.

For tests and debugging of exact resume: two runs that saw the same batches and computed the same losses
have the same lines. Reading the loss every step is a host sync, so the log is off by default and costs
nothing then. A line `start STEP` marks each (re)start. Each process writes its own file in the workdir.
"""

import contextlib
import hashlib

import jax
import numpy as np

from lm import files


def batch_fingerprint(batch: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(batch):
        value = np.ascontiguousarray(batch[key])
        digest.update(f"{key}{value.dtype.str}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def path(workdir: str, process_index: int = 0) -> str:
    name = "debug_steps.txt" if process_index == 0 else f"debug_steps.process{process_index}.txt"
    return files.join(workdir, name)


def read(workdir: str, process_index: int = 0) -> list[list[str]]:
    """The log's lines, split into words."""
    return [line.split() for line in files.read_text(path(workdir, process_index)).splitlines() if line.strip()]


class StepLog:
    def __init__(self, workdir: str, start_step: int):
        files.makedirs(workdir)
        self._open = contextlib.ExitStack()  # epath's open is a context manager on some file systems.
        self._file = self._open.enter_context(files.path(path(workdir, jax.process_index())).open("a"))
        self._write(f"start {start_step}")

    def write(self, step: int, loss: jax.Array, batch: dict[str, np.ndarray]) -> None:
        self._write(f"{step} {float(jax.device_get(loss)).hex()} {batch_fingerprint(batch)}")

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()  # A killed run leaves every line it wrote.

    def close(self) -> None:
        self._open.close()
