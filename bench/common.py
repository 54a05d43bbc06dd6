"""What the benchmarks share: the contender interface, our jitted train step, the alternating timing loop
and the matmul peak that utilisation is quoted against. Imported by the bench scripts, which put the
repository root on sys.path first."""

import os
import time

import jax
import numpy as np

from lm import experiment, metrics, optimizers, sharding, train
from lm import state as state_lib

TOTAL_STEPS = 10_000  # Only shapes the learning-rate schedule; no contender runs that long.


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def matmul_peak() -> float:
    """FLOP/s of a jitted 2048x2048 float32 matmul: one sample, taken between rounds."""
    return metrics.matmul_peak_flops(size=2048, repeats=3)


class Contender:
    """A train step with its state; `run(n)` takes n steps and returns when they have finished."""

    name = ""
    flops = 0.0
    note = ""

    def run(self, steps: int) -> None:
        raise NotImplementedError

    def loss(self) -> float:
        raise NotImplementedError


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
            self.step = train.jit_train_step(exp).lower(self.state, self.batch).compile()
        self.flops = train.step_flops(self.step)
        self.metrics = None

    def run(self, steps: int) -> None:
        with jax.set_mesh(self.mesh):
            for _ in range(steps):
                self.state, self.metrics = self.step(self.state, self.batch)
            jax.block_until_ready((self.state, self.metrics))

    def loss(self) -> float:
        return float(self.metrics["loss"])


def measure(contenders: dict[str, Contender], rounds: int, steps: int, digits: int = 0):
    """Wall and process-CPU seconds per step of each round, per contender, and matmul-peak samples.

    Rounds alternate the contenders, rotating the order each round, so that slow drifts of the machine's
    load fall on all of them; a matmul-peak sample is taken before the first round and after each.
    """
    times = {name: [] for name in contenders}
    cpu_times = {name: [] for name in contenders}
    peaks = [matmul_peak()]
    print(f"  load average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    names = list(contenders)
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            contenders[name].run(steps)
            times[name].append((time.perf_counter() - start) / steps)
            cpu_times[name].append((time.process_time() - cpu_start) / steps)
        peaks.append(matmul_peak())
        summary = ", ".join(f"{n} {times[n][-1] * 1e3:.{digits}f}" for n in names)
        print(f"  round {round_index + 1}/{rounds} (ms/step): {summary}", flush=True)
    return times, cpu_times, peaks
