"""Multi-host runs: `jax.distributed.initialize` from config.distributed or the environment, with timeouts.

One process per host, each started with the same config. A key of config.distributed left at its default
falls back to an environment variable (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); with
`auto_detect` JAX finds all three itself (Cloud TPU pods, SLURM, Open MPI, Kubernetes). No coordinator address
anywhere: one process, nothing to initialize.

Timeouts, so that no process waits for a dead peer forever:
- `initialization_timeout_s`: every process must connect to the coordinator within it, else each one fails.
- `timeout_s`: the coordination service's heartbeat timeout. A process that sends no heartbeat for this long
  (killed, crashed, stopped, its host gone) is declared dead, and every other process then terminates
  itself with an error (JAX aborts it: exit status non-zero). The same bound applies at exit, where each
  process waits for the others in `jax.distributed.shutdown`.
- Orbax's own barriers go through the coordination service with its 300 s timeout (instead of an untimed
  device collective) when absl flags are parsed, as under main.py.
- `process_zero_timeout_s`: how long the others wait for what process 0 alone does (`on_process_zero`: writing
  an export, learning a vocabulary, setting a bad checkpoint aside); past it they stop with a TimeoutError, and
  the job ends (process 0 too, within `timeout_s`: its output may then be partial).

Here our code meets the other processes through the coordination service, timed: `wait_for_all`, a barrier,
and `on_process_zero`, which runs what process 0 alone does (checking and writing an output only it writes, setting
a bad checkpoint aside) and hands its outcome, or its error, to the others waiting for it. Elsewhere hosts meet in
the jitted steps' collectives, in Orbax, and in lm/integrity.py (agreeing on checksum mismatches).
"""

import builtins
import dataclasses
import itertools
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import jax
import ml_collections

log = logging.getLogger(__name__)

# Every process calls wait_for_all and on_process_zero in the same order: the same names on every process.
_barrier_ids = itertools.count()
T = TypeVar("T")

ENVIRONMENT = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    coordinator_address: str
    num_processes: int
    process_id: int


def _from_environment(key: str, environ) -> int:
    name = ENVIRONMENT[key]
    text = environ.get(name, "")
    if not text.strip().isdigit():
        shown = f"${name} is {text!r}" if text else f"${name} is not set"
        raise ValueError(
            f"config.distributed.{key}=-1 takes it from the environment, but {shown}. Set "
            f"config.distributed.{key} or ${name} to a non-negative integer on every process."
        )
    return int(text)


def resolve(dist: ml_collections.ConfigDict, environ=os.environ) -> Settings | None:
    """The coordinator, process count and this process's id from config.distributed, else the environment.

    None when no coordinator address is given: a single-process run.
    """
    address = dist.coordinator_address or environ.get(ENVIRONMENT["coordinator_address"], "")
    if not address:
        if dist.num_processes > 1:
            raise ValueError(
                f"config.distributed.num_processes={dist.num_processes} but no coordinator: set "
                "config.distributed.coordinator_address (or $JAX_COORDINATOR_ADDRESS) to HOST:PORT of process 0, "
                "or config.distributed.auto_detect=True on a cluster JAX knows."
            )
        return None
    if ":" not in address:
        raise ValueError(
            f"config.distributed.coordinator_address={address!r} needs a port: HOST:PORT of process 0, "
            "e.g. '10.0.0.1:1234'."
        )
    values = {}
    for key in ("num_processes", "process_id"):
        values[key] = dist[key] if dist[key] != -1 else _from_environment(key, environ)
    if values["num_processes"] < 1 or not 0 <= values["process_id"] < values["num_processes"]:
        raise ValueError(
            f"config.distributed: process_id={values['process_id']} must be in [0, num_processes="
            f"{values['num_processes']}); give each process its own id from 0 (the coordinator) up."
        )
    return Settings(address, values["num_processes"], values["process_id"])


def _check_timeouts(dist: ml_collections.ConfigDict) -> None:
    for key in ("timeout_s", "initialization_timeout_s", "process_zero_timeout_s"):
        value = dist[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.distributed.{key}={value!r} must be a positive number of seconds.")


def initialize(config: ml_collections.ConfigDict) -> None:
    """Joins this process to the others (once per process); a no-op for single-process runs."""
    dist = config.distributed
    if jax.distributed.is_initialized():
        return
    _check_timeouts(dist)
    timeouts = {
        "initialization_timeout": dist.initialization_timeout_s,
        "heartbeat_timeout_seconds": dist.timeout_s,
        "shutdown_timeout_seconds": dist.timeout_s,
    }
    if dist.auto_detect:
        jax.distributed.initialize(**timeouts)
    else:
        settings = resolve(dist)
        if settings is None:
            return
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            **timeouts,
        )
    _use_timed_orbax_barriers()
    log.info(
        "Process %d of %d; a peer silent for %d s stops every process.",
        jax.process_index(), jax.process_count(), dist.timeout_s,
    )


def _use_timed_orbax_barriers() -> None:
    """Orbax waits at barriers of the coordination service (timed) instead of device collectives (untimed).

    Orbax reads an absl flag for this, readable only once flags are parsed (main.py).
    """
    import orbax.checkpoint  # noqa: F401 (defines the flag)
    from absl import flags

    name = "experimental_orbax_use_distributed_barrier"
    if flags.FLAGS.is_parsed() and name in flags.FLAGS:
        flags.FLAGS.set_default(name, True)


def _client():
    from jax._src import distributed as jax_distributed  # No public barrier or key-value store; Orbax uses it too.

    return jax_distributed.global_state.client


def _timed_out(error: Exception) -> bool:
    return "DEADLINE_EXCEEDED" in str(error)


def wait_for_all(name: str, timeout_s: int) -> None:
    """Returns once every process has called it: a barrier of the coordination service, not a device collective.

    A no-op on one process. Raises TimeoutError if a process does not arrive within `timeout_s`
    (config.distributed.initialization_timeout_s). The first collective of a run sets up the CPU collectives
    (gloo), whose rendezvous XLA bounds at 30 s: processes that compile at different speeds must meet here first
    (docs/RELIABILITY.md, "Many hosts")."""
    if jax.process_count() == 1:
        return
    try:
        _client().wait_at_barrier(f"lm_{name}_{next(_barrier_ids)}", timeout_s * 1000)
    except Exception as error:
        if not _timed_out(error):
            raise
        raise TimeoutError(f"Process {jax.process_index()} waited {timeout_s} s at '{name}' for the other processes; "
                           "if one of them is slow rather than stuck, give config.distributed."
                           "initialization_timeout_s more.") from None


def on_process_zero(work: Callable[[], T], what: str, timeout_s: int) -> T | None:
    """Runs `work` on process 0 alone and returns its result there; the other processes wait for it (at most
    `timeout_s`, config.distributed.process_zero_timeout_s) and return None. An error it raises stops every
    process, each with process 0's message. One process: `work()`.

    For what process 0 alone does: check an output only it writes, before the model loads, and write it (an
    export, a vocabulary). `what` ("write the SavedModel") is for the others' log line and a timeout's message.
    Every process calls it at the same point; it doubles as a barrier.
    """
    if jax.process_count() == 1:
        return work()
    client, key = _client(), f"lm_process_zero_{next(_barrier_ids)}"
    if jax.process_index() == 0:
        try:
            result = work()
        except BaseException as error:  # Interrupted too: the others must not wait for an outcome that never comes.
            _publish(client, key, f"{type(error).__name__}\n{error}")
            raise
        client.key_value_set(key, "")
        return result
    log.info("Process %d: waiting for process 0 to %s.", jax.process_index(), what)
    try:
        outcome = client.blocking_key_value_get(key, timeout_s * 1000)
    except Exception as error:
        if not _timed_out(error):
            raise
        raise TimeoutError(f"Process {jax.process_index()} waited {timeout_s} s for process 0 to {what}; if it is "
                           "slow rather than stuck, give config.distributed.process_zero_timeout_s more.") from None
    if outcome:
        kind, _, message = outcome.partition("\n")
        raise rebuilt_error(kind, f"{message} (on process 0, while it tried to {what})")
    return None


def _publish(client, key: str, outcome: str) -> None:
    """Process 0's error for the others; if even that fails, logged (the others then stop at their timeout)."""
    try:
        client.key_value_set(key, outcome.encode("utf-8", "replace").decode("utf-8"))  # A path's lone surrogates.
    except Exception as error:
        log.error("Could not hand process 0's error to the other processes: %s", error)


def rebuilt_error(kind: str, message: str) -> Exception:
    """An error of the built-in type named `kind` with `message`; a RuntimeError naming `kind` for any other type
    (ours, a library's) or one that takes more than a message (UnicodeDecodeError)."""
    error = getattr(builtins, kind, None)
    if isinstance(error, type) and issubclass(error, Exception):
        try:
            return error(message)
        except TypeError:
            pass
    return RuntimeError(f"{kind}: {message}")
