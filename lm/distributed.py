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

Our code has one barrier of its own, `wait_for_all`, timed like the rest, and `check_on_process_zero`, which
shares the outcome of a check that only process 0 can make (of what it alone writes); otherwise hosts meet only
in the jitted steps' collectives and in Orbax.
"""

import builtins
import dataclasses
import itertools
import logging
import os
from collections.abc import Callable

import jax
import ml_collections

log = logging.getLogger(__name__)

_barrier_ids = itertools.count()  # Each process calls wait_for_all in the same order: the same names.

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
    for key in ("timeout_s", "initialization_timeout_s"):
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


def wait_for_all(name: str, timeout_s: int) -> None:
    """Returns once every process has called it: a barrier of the coordination service, not a device collective.

    A no-op on one process. Raises if a process does not arrive within `timeout_s`. The first collective of a
    run sets up the CPU collectives (gloo), whose rendezvous XLA bounds at 30 s: processes that compile at
    different speeds must meet here first (docs/RELIABILITY.md, "Many hosts").
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # No public barrier; Orbax uses this client too.

    jax_distributed.global_state.client.wait_at_barrier(f"lm_{name}_{next(_barrier_ids)}", timeout_s * 1000)


def check_on_process_zero(check: Callable[[], None], name: str, timeout_s: int) -> None:
    """Runs `check` on process 0 alone (e.g. that it can write the output it alone writes); an error it raises stops
    every process, each with process 0's message.

    Every process calls it at the same point; the others wait for the outcome (at most `timeout_s`) through the
    coordination service. Without it, process 0 stopped with the error while the others went on into the restore
    and waited at Orbax's barrier until the shutdown timeout aborted them all, without a word of why.
    """
    if jax.process_count() == 1:
        check()
        return
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    key = f"lm_{name}_{next(_barrier_ids)}"
    if jax.process_index() == 0:
        try:
            check()
        except Exception as error:
            client.key_value_set(key, f"{type(error).__name__}\n{error}")
            raise
        client.key_value_set(key, "")
        return
    outcome = client.blocking_key_value_get(key, timeout_s * 1000)
    if outcome:
        kind, _, message = outcome.partition("\n")
        error = getattr(builtins, kind, None)
        error = error if isinstance(error, type) and issubclass(error, Exception) else RuntimeError
        raise error(f"{message} (found by process 0, which writes it)")
