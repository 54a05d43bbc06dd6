"""The one timing harness of the benchmarks: contenders, the alternating timing loop, the rows and the ratios.

A benchmark script defines its contenders (subclasses of `Contender`; `Ours` is our jitted train step) and
then calls, in order:

    contenders = common.build(names, make)        # make(name) -> Contender; compiled and warmed up here
    timing = common.measure(contenders, rounds, steps)
    rows = common.rows(contenders, timing, items_per_step=batch)
    ratios = common.ratios(timing)                # ours / theirs for every other contender
    common.print_rows(rows, items="ex/s"); common.print_ratios(ratios); print(common.rerun_command(words))

Every ratio reads the same way: our time over theirs, so < 1 means ours is faster (`RATIO_READING`). Each
is given three ways: by the medians of the rounds, by their minima, and as the median of the per-round
ratios (each round times every contender back to back, so this one cancels slow drifts of the load).

Imported by the bench scripts, which put the repository root and bench/ on sys.path first.
"""

import abc
import dataclasses
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from lm import experiment, metrics, optimizers, sharding, train
from lm import state as state_lib
from lm.models import packing

TOTAL_STEPS = 10_000  # Only shapes the learning-rate schedule; no contender runs that long.
WARMUP_STEPS = 2  # Untimed steps after building: compilation, allocations, oneDNN primitive caches.
RATIO_READING = "ours / theirs, < 1: ours faster"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def matmul_peak() -> float:
    """FLOP/s of a jitted 2048x2048 float32 matmul: one sample, taken between rounds."""
    return metrics.matmul_peak_flops(size=2048, repeats=3)


class Contender(abc.ABC):
    """A train step with its state; `run(n)` takes n steps and returns when they have finished.

    `flops` is FLOPs per step (0 if unknown: the rows then credit the contender with ours), `note` a short
    description printed with its row.
    """

    name = ""
    flops = 0.0
    note = ""

    @abc.abstractmethod
    def run(self, steps: int) -> None:
        """Takes `steps` steps and returns when they have finished."""

    @abc.abstractmethod
    def loss(self) -> float:
        """The last step's loss."""


class Ours(Contender):
    """`lm.train.jit_train_step` on a 1-device mesh, state and batch built as the trainer builds them."""

    name = "ours"

    def __init__(self, config, batch: dict[str, np.ndarray]):
        self.mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
        tx, schedule = optimizers.create_optimizer(config.optimizer, TOTAL_STEPS)
        spec = state_lib.state_spec(config.model, tx, self.mesh, config.axis_rules, config.seed)
        exp = experiment.Experiment(
            config=config, mesh=self.mesh, data=None, task=experiment.create_task(config), tx=tx,
            schedule=schedule, spec=spec, total_steps=TOTAL_STEPS, steps_per_epoch=TOTAL_STEPS,
            eval_every=TOTAL_STEPS,
        )
        with jax.set_mesh(self.mesh):
            self.state = state_lib.init_state(config.model, tx, spec, config.seed)
            self.batch = sharding.global_batch(batch, self.mesh)
            packed = packing.packs(config, self.mesh, batch)  # As the trainer decides (lm/models/packing.py).
            self.step = train.jit_train_step(exp, packed).lower(self.state, self.batch).compile()
        self.flops = train.step_flops(self.step)
        self.metrics = None

    def run(self, steps: int) -> None:
        with jax.set_mesh(self.mesh):
            for _ in range(steps):
                self.state, self.metrics = self.step(self.state, self.batch)
            jax.block_until_ready((self.state, self.metrics))

    def loss(self) -> float:
        return float(self.metrics["loss"])


def build(names: Sequence[str], make: Callable[[str], Contender]) -> dict[str, Contender]:
    """`make(name)` for each name, then WARMUP_STEPS untimed steps; prints the time it took and the loss."""
    built = {}
    for name in names:
        start = time.perf_counter()
        contender = make(name)
        contender.name = name
        contender.run(WARMUP_STEPS)
        note = f" ({contender.note})" if contender.note else ""
        print(f"  {name}: built, compiled and warmed up in {time.perf_counter() - start:.1f}s, "
              f"loss {contender.loss():.4f}{note}", flush=True)
        built[name] = contender
    return built


@dataclasses.dataclass
class Timing:
    """Seconds per step of each round (wall and process CPU), by contender, and the matmul-peak samples."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    peaks: list[float]

    @property
    def peak(self) -> float:
        return statistics.median(self.peaks)


def measure(contenders: dict[str, Contender], rounds: int, steps: int, digits: int = 0) -> Timing:
    """Times `rounds` rounds of `steps` steps of every contender, alternating them.

    Each round runs every contender back to back, rotating the order each round, so that slow drifts of
    the machine's load fall on all of them; a matmul-peak sample is taken before the first round and after
    each. Prints each round's milliseconds per step with `digits` decimals.
    """
    timing = Timing({name: [] for name in contenders}, {name: [] for name in contenders}, [matmul_peak()])
    print(f"  load average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    names = list(contenders)
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            contenders[name].run(steps)
            timing.wall[name].append((time.perf_counter() - start) / steps)
            timing.cpu[name].append((time.process_time() - cpu_start) / steps)
        timing.peaks.append(matmul_peak())
        summary = ", ".join(f"{n} {timing.wall[n][-1] * 1e3:.{digits}f}" for n in names)
        print(f"  round {round_index + 1}/{rounds} (ms/step): {summary}", flush=True)
    return timing


def rows(contenders: dict[str, Contender], timing: Timing, items_per_step: int) -> dict[str, dict]:
    """One row per contender: step times (median and per round, wall and CPU), items per second, FLOPs.

    A contender without a FLOP count (`flops == 0`) is credited with ours (`flops_source: "ours_xla"`).
    """
    reference_flops = contenders["ours"].flops if "ours" in contenders else 0.0
    table = {}
    for name, contender in contenders.items():
        median = statistics.median(timing.wall[name])
        flops = contender.flops or reference_flops
        table[name] = {
            "step_ms_median": median * 1e3,
            "step_ms_rounds": [t * 1e3 for t in timing.wall[name]],
            "cpu_ms_median": statistics.median(timing.cpu[name]) * 1e3,
            "cpu_ms_rounds": [t * 1e3 for t in timing.cpu[name]],
            "items_per_second": items_per_step / median,
            "flops_per_step": flops,
            "flops_source": "xla" if contender.flops else ("ours_xla" if flops else "none"),
            "flops_per_second": flops / median if flops else None,
            "fraction_of_matmul_peak": flops / median / timing.peak if flops else None,
            "final_loss": contender.loss(),
            "note": contender.note,
        }
    return table


def ratios(timing: Timing, ours: str = "ours") -> dict[str, dict[str, float]]:
    """Our step time over each other contender's (< 1: ours faster): by medians, minima and paired rounds."""
    if ours not in timing.wall:
        return {}
    mine = timing.wall[ours]
    result = {}
    for name, theirs in timing.wall.items():
        if name != ours:
            result[name] = {
                "median": statistics.median(mine) / statistics.median(theirs),
                "min": min(mine) / min(theirs),
                "paired_median": statistics.median([a / b for a, b in zip(mine, theirs)]),
            }
    return result


def print_rows(table: dict[str, dict], items: str, digits: int = 0) -> None:
    """The rows as a table; `items` labels the throughput column (e.g. "ex/s", "img/s")."""
    print(f"{'contender':<18}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'CPU ms':>9}{items:>9}{'GFLOP/step':>12}"
          f"{'GFLOP/s':>9}{'of peak':>9}  note")
    nan = float("nan")
    for name, row in table.items():
        flops, rate, fraction = row["flops_per_step"], row["flops_per_second"], row["fraction_of_matmul_peak"]
        marker = "*" if row["flops_source"] == "ours_xla" else " "
        print(f"{name:<18}{row['step_ms_median']:>11.{digits}f}{min(row['step_ms_rounds']):>9.{digits}f}"
              f"{max(row['step_ms_rounds']):>9.{digits}f}{row['cpu_ms_median']:>9.0f}{row['items_per_second']:>9.1f}"
              f"{flops / 1e9 if flops else nan:>11.2f}{marker}{rate / 1e9 if rate else nan:>9.1f}"
              f"{fraction if fraction else nan:>9.1%}  {row['note']}")
    if any(row["flops_source"] == "ours_xla" for row in table.values()):
        print("* FLOPs per step: XLA's count for our step (same architecture).")
    print("CPU ms: process CPU time per step, all threads (for torch it includes OpenMP spin-waiting).")


def print_ratios(result: dict[str, dict[str, float]]) -> None:
    if not result:
        return
    print(f"\n{RATIO_READING:<44}{'medians':>9}{'minima':>9}   per-round pairs (median)")
    for name, ratio in result.items():
        print(f"  ours / {name:<34}{ratio['median']:>9.2f}{ratio['min']:>9.2f}{ratio['paired_median']:>11.2f}")


def rerun_command(words: Sequence[str]) -> str:
    """The shell command that reruns this benchmark: this Python, `words`, and XLA_FLAGS if set."""
    flags = os.environ.get("XLA_FLAGS")
    prefix = f"XLA_FLAGS={shlex.quote(flags)} " if flags else ""
    return prefix + " ".join(shlex.quote(w) for w in [sys.executable, *words])


def script_path(file: str) -> str:
    """A bench script's path relative to the working directory, for `rerun_command`."""
    return os.path.relpath(os.path.abspath(file))


def environment() -> dict:
    return {"jax": jax.__version__, "device": str(jax.devices()[0]), "python": platform.python_version(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": os.cpu_count(),
            "load_average_after": os.getloadavg()[0]}
