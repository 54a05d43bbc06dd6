"""Opt-in per-step debug log (config.debug.step_log): `step loss sha256-of-this-host's-batch` lines.

For tests and debugging of exact resume: two runs that saw the same batches and computed the same losses
have the same lines. Reading the loss every step is a host sync, so the log is off by default and costs
nothing then. A line `start STEP` marks each (re)start. Each process writes its own file in the workdir.
"""

import hashlib
import os

import jax
import numpy as np


def batch_fingerprint(batch: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(batch):
        value = np.ascontiguousarray(batch[key])
        digest.update(f"{key}{value.dtype.str}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def path(workdir: str, process_index: int = 0) -> str:
    name = "debug_steps.txt" if process_index == 0 else f"debug_steps.process{process_index}.txt"
    return os.path.join(workdir, name)


def read(workdir: str, process_index: int = 0) -> list[list[str]]:
    """The log's lines, split into words."""
    with open(path(workdir, process_index)) as f:
        return [line.split() for line in f if line.strip()]


class StepLog:
    def __init__(self, workdir: str, start_step: int):
        os.makedirs(workdir, exist_ok=True)
        self._file = open(path(workdir, jax.process_index()), "a")  # noqa: SIM115 - closed by close().
        self._write(f"start {start_step}")

    def write(self, step: int, loss: jax.Array, batch: dict[str, np.ndarray]) -> None:
        self._write(f"{step} {float(jax.device_get(loss)).hex()} {batch_fingerprint(batch)}")

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()  # A killed run leaves every line it wrote.

    def close(self) -> None:
        self._file.close()
