"""train_and_evaluate(config, workdir): the training loop, top to bottom.

Stages: validate the config -> mesh -> input pipeline -> model and train state (born sharded) ->
pretrained weights -> resume from the workdir -> jitted train and eval steps -> loop with logging,
periodic evaluation and checkpoints -> final evaluation of the best checkpoint on the test split.

Reliability (docs/RELIABILITY.md): the run resumes from the newest checkpoint that verifies, at the exact
batch it stopped at (the data position is the step); SIGTERM saves and stops with exit status 0; a step
whose loss or gradients are not finite changes nothing and is counted, and `max_consecutive_nonfinite` of
them in a row halt the run before any checkpoint could hold a bad value.
"""

import contextlib
import json
import logging
import math
import time
from collections.abc import Collection

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from lm import (
    accumulation,
    checkpointing,
    compiler,
    config_checks,
    config_keys,
    evaluate,
    experiment,
    files,
    hardware,
    metrics,
    preemption,
    preflight,
    progress,
    sharding,
    step_log,
)
from lm import distributed as hosts
from lm import state as state_lib
from lm.models import packing

log = logging.getLogger(__name__)


def make_train_step(graphdef, task, tx: optax.GradientTransformation, trainable: dict, deterministic: bool = False,
                    nan_steps: tuple[int, ...] = (), grad_accum_steps: int = 1, mesh: jax.sharding.Mesh | None = None,
                    skip_with_branch: bool | None = None, packed: bool = False):
    """The pure train step: (state, batch) -> (new state, metrics). Jitted by the caller with donation.

    Only the parameters that `trainable` marks are differentiated and updated; the frozen ones pass
    through unchanged. `deterministic` runs the model in eval mode (no dropout, BatchNorm on and keeping its
    running statistics), for linear probing of a frozen backbone. With `grad_accum_steps` > 1 the batch is
    split into that many micro-batches whose gradients are averaged (`lm.accumulation`; `mesh` keeps each
    micro-batch spread over the data-parallel devices).

    A step whose loss or gradients are not all finite is skipped on device: parameters, optimizer state and
    BatchNorm statistics keep their values, the step counter (the data position) still advances, and the
    metric `nonfinite` is 1. `nan_steps` (a test hook, config.debug.nan_steps) makes the gradients NaN at
    those steps (1-based, as logged); empty, it adds nothing to the traced step. On CPU the update sits in a
    `lax.cond` branch: choosing between the new and the old values elementwise there made XLA copy nearly
    every optimizer-state leaf each step (it had to keep the old values beside the donated buffers updated in
    place): under 1% of a MiniLM step's time, 64 MiB more temporary memory (bench/README.md, `step_parts.py`).
    On accelerators, where a branch can cost a host round trip, the choice stays elementwise.
    `skip_with_branch` overrides that choice (None: a branch where the mesh's devices are CPUs).
    `packed`: the step for text batches whose real tokens fit `config.model.unpad_fraction` of their positions
    (the trainer decides per batch on the host, `packing.packs`): BERT's layers run on those tokens only.
    """
    if skip_with_branch is None:
        platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
        skip_with_branch = platform == "cpu"

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        params, frozen = state_lib.partition(state["params"], trainable)

        def grad_fn(params, batch_stats, batch, key):
            def loss_fn(params):
                model = state_lib.merge_model(graphdef, state_lib.combine(params, frozen), batch_stats)
                logits = task.logits(model, batch, deterministic=deterministic, rngs=nnx.Rngs(dropout=key))
                loss, aux = task.loss(logits, batch)
                return loss, (aux, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

            (loss, (aux, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return (loss, aux), new_stats, grads

        with packing.packed_layers(packed):  # Read while tracing the model (lm/models/packing.py).
            (loss, aux), batch_stats, grads = accumulation.accumulate(
                grad_fn, params, state["batch_stats"], batch, key, grad_accum_steps, mesh)
        if nan_steps:
            inject = jnp.isin(state["step"] + 1, jnp.asarray(nan_steps))
            grads = jax.tree.map(lambda g: jnp.where(inject, jnp.nan, g), grads)
        grad_norm = optax.tree.norm(grads)
        # A non-finite gradient anywhere makes the norm non-finite (as does a norm beyond float32's range).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply(opt_state, params, new_stats, old_stats):
            updates, opt_state = tx.update(grads, opt_state, params)
            params = state_lib.combine(optax.apply_updates(params, updates), frozen)
            return {"params": params, "opt_state": opt_state, "batch_stats": new_stats}

        def keep(opt_state, params, new_stats, old_stats):
            return {"params": state_lib.combine(params, frozen), "opt_state": opt_state, "batch_stats": old_stats}

        operands = (state["opt_state"], params, batch_stats, state["batch_stats"])
        if skip_with_branch:
            chosen = jax.lax.cond(finite, apply, keep, *operands)
        else:
            updated, kept = apply(*operands), keep(*operands)
            chosen = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, kept)
        new_state = dict(state, **chosen, step=state["step"] + 1)
        step_metrics = {"loss": loss, "grad_norm": grad_norm, **aux}
        return new_state, {**step_metrics, "nonfinite": 1 - finite.astype(jnp.int32)}

    return train_step


def jit_train_step(exp: experiment.Experiment, packed: bool = False):
    """The jitted train step; with config.trainable="head" the frozen backbone runs in eval mode. `packed`: the
    step for the batches that `packing.packs(exp.config, exp.mesh, host_batch)` says fit (make_train_step)."""
    spec = exp.spec
    return jax.jit(
        make_train_step(spec.graphdef, exp.task, exp.tx, spec.trainable, deterministic=exp.config.trainable == "head",
                        nan_steps=tuple(exp.config.debug.nan_steps), grad_accum_steps=exp.config.grad_accum_steps,
                        mesh=exp.mesh, packed=packed),
        in_shardings=(spec.shardings, sharding.batch_sharding(exp.mesh)),
        out_shardings=(spec.shardings, sharding.replicated(exp.mesh)),
        donate_argnums=0,
        compiler_options=compiler.step_options(exp.config, exp.mesh),
    )


def step_flops(compiled) -> float:
    """FLOPs of one step per device, from XLA's cost analysis of the compiled (partitioned) program."""
    try:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0]
        return float(analysis.get("flops", 0.0))
    except Exception as error:  # Cost analysis is optional; some backends do not implement it.
        log.warning("No FLOP count for the train step (%s); MFU will not be reported.", error)
        return 0.0


def _write_config(config: ml_collections.ConfigDict, workdir: str, data) -> None:
    """config.json, and what serving needs of the data (class names, image preprocessing) in serving_facts.json;
    written by process 0 (a failure stops every process with its message)."""
    def write() -> None:
        files.makedirs(workdir)
        files.write_text(files.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
        files.write_text(files.join(workdir, files.SERVING_FACTS), json.dumps(data.serving_facts(), indent=2))

    hosts.on_process_zero(write, "write config.json", config.distributed.process_zero_timeout_s)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, overrides: Collection[str] = ()) -> dict:
    """Trains, evaluates and checkpoints in `workdir`; resumes by itself. Returns the final metrics by split.

    `overrides`: the dotted config keys the user set explicitly (`config_checks.resolved_copy`).
    A run stopped by SIGTERM saves, skips the final evaluation and returns {"preempted_at_step": step}.
    """
    config = config_checks.resolved_copy(config, overrides)
    # The run already in `workdir` (None for a new one), read before anything there is overwritten.
    previous = files.read_run_config(workdir, missing_ok=True)
    exp = experiment.build(config)
    with contextlib.ExitStack() as opened:  # Closes what was opened, in reverse, on every way out.
        checkpointer = opened.enter_context(checkpointing.Checkpointer(
            checkpointing.checkpoint_dir(workdir), keep=config.keep_checkpoints,
            best_metric=config.best_metric, best_mode=config.best_mode,
            process_zero_timeout_s=config.distributed.process_zero_timeout_s,
        ))
        state = _resume_or_start(exp, checkpointer, workdir, previous)
        _write_config(config, workdir, exp.data)  # After the resume check: a refused run leaves the old one intact.
        from clu import metric_writers  # Here, not at the top: it imports TensorFlow, which the step never needs.

        writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0,
                                                      asynchronous=True)
        opened.callback(writer.flush)
        eval_step = evaluate.make_eval_step(exp)
        watch = preemption.PreemptionWatch()
        opened.callback(watch.close)
        debug_log = step_log.StepLog(workdir, int(jax.device_get(state["step"]))) if config.debug.step_log else None
        if debug_log is not None:
            opened.callback(debug_log.close)
        with jax.set_mesh(exp.mesh):
            state, preempted = _train_loop(exp, state, checkpointer, eval_step, writer, watch, debug_log)
            checkpointer.wait()
            if preempted:
                step = int(jax.device_get(state["step"]))
                log.warning("Preempted: saved step %d in %s; run again with the same workdir to resume.", step,
                            workdir)
                return {"preempted_at_step": step}
            return _final_evaluation(exp, state, checkpointer, eval_step, writer, workdir)


# Keys that change what a resumed run computes from here on (the data position counts batches of the new size);
# the others (steps, logging, evaluation, the machine's mesh...) may change freely between restarts. STATE_KEYS
# also decide the train state's arrays (a change there stops the resume: the checkpoints no longer fit).
STATE_KEYS = ("task", "model", "optimizer", "freeze", "trainable")
RESUME_KEYS = (*STATE_KEYS, "data", "global_batch_size", "grad_accum_steps", "seed", "label_smoothing")


def _resume_or_start(exp: experiment.Experiment, checkpointer, workdir: str, previous: dict | None) -> dict:
    """The newest checkpoint that verifies (bad ones are set aside with a warning), else a fresh state.

    Checkpoints whose arrays no longer fit (another architecture, class count, task or optimizer) stop the run with
    what changed since the run in `workdir` started; nothing is set aside or overwritten."""
    try:
        found = checkpointer.restore_latest(exp.spec.abstract)
    except checkpointing.StateMismatch as error:
        changes = config_keys.changed(previous, exp.config, STATE_KEYS) if previous else []
        raise ValueError(
            f"--workdir={workdir!r} holds checkpoints of another model or optimizer than this config builds"
            f"{' (changed since its run started: ' + '; '.join(changes[:6]) + ')' if changes else ''}. Resuming "
            "needs the same model: train in a new --workdir, or start there from this run's weights with "
            f"--config.init_from={workdir}. ({error})"
        ) from None
    if found is None:
        return experiment.initial_state(exp)
    state, _, step = found
    log.info("Resumed from %s at step %d (the data pipeline restarts at batch %d).", workdir, step, step)
    changes = config_keys.changed(previous, exp.config, RESUME_KEYS) if previous else []
    if changes:
        log.warning("Resuming with a config that differs from the one this run started with (config.json is "
                    "rewritten with the new one): %s.", "; ".join(changes))
    return state


class _NonFiniteGuard:
    """Counts consecutive skipped (non-finite) steps from the per-step flags, read only at sync points."""

    def __init__(self, limit: int):
        self.limit = limit
        self.streak = 0
        self._pending: list[tuple[int, jax.Array]] = []

    def add(self, step: int, nonfinite: jax.Array) -> None:
        self._pending.append((step, nonfinite))

    def check(self) -> None:
        """Reads the flags gathered since the last check; raises once `limit` steps in a row were skipped."""
        flags = jax.device_get([flag for _, flag in self._pending])
        for (step, _), flag in zip(self._pending, flags):
            self.streak = self.streak + 1 if int(flag) else 0
            if self.streak >= self.limit:
                raise FloatingPointError(
                    f"{self.streak} consecutive training steps had a non-finite loss or gradients (the last at step "
                    f"{step}; config.max_consecutive_nonfinite={self.limit}); stopping. Those steps did not change "
                    "the parameters and no checkpoint holds a non-finite value. Lower the learning rate, check the "
                    "data, or compute in float32."
                )
        self._pending = []


def _train_loop(exp: experiment.Experiment, state: dict, checkpointer, eval_step, writer, watch,
                debug_log) -> tuple[dict, bool]:
    """Runs the steps after the state's step; returns (state, whether it stopped for preemption)."""
    config, data, mesh = exp.config, exp.data, exp.mesh
    start_step = int(jax.device_get(state["step"]))
    report_progress = progress.Progress(exp.total_steps, start_step, config.log_every)
    peak = metrics.mfu_peak(config)
    log.info("MFU (train/%s) is quoted against %.4g FLOP/s per device: %s.", metrics.mfu_name(peak),
             peak.flops_per_second, peak.label)
    meta = {"model": config.model.to_dict(), "task": config.task}
    # One compiled step per batch shape (text length buckets) and per choice of packed or padded layers (decided
    # on the host: lm/models/packing.py): compiled ahead of time when such a batch first comes.
    jitted_steps = {packed: jit_train_step(exp, packed) for packed in (False, True)}  # jax.jit traces lazily.
    compiled_steps, window_flops = {}, 0.0
    if start_step == 0 and config.eval_at_start:  # The starting point, e.g. of continued pretraining.
        eval_metrics = evaluate.evaluate_split(eval_step, state, data, "validation", mesh, exp.task)
        evaluate.write_eval_scalars(writer, 0, "validation", eval_metrics)
        log.info("validation at step 0: %s", evaluate.summary(eval_metrics))
    train_iter = data.train_iterator(start_step)
    guard = _NonFiniteGuard(config.max_consecutive_nonfinite)
    history, last_step, timer = [], start_step, metrics.WindowTimer()
    for step in range(start_step + 1, exp.total_steps + 1):
        with timer.waiting_for_input():
            host_batch = next(train_iter)
            batch = sharding.global_batch(host_batch, mesh)
        packed = packing.packs(config, mesh, host_batch)
        kind = (tuple((key, value.shape) for key, value in sorted(batch.items())), packed)
        if kind not in compiled_steps:  # Ahead of time, once per kind of batch, with the pre-flight report.
            compile_start = time.perf_counter()
            compiled_steps[kind] = _compile(exp, jitted_steps[packed], state, batch)
            log.info("compiled the train step for batch shapes %s%s (%d so far)", dict(kind[0]),
                     ", packed" if packed else "", len(compiled_steps))
            if len(compiled_steps) == 1:
                hosts.wait_for_all("train_step_compiled", config.distributed.initialization_timeout_s)
            timer.start += time.perf_counter() - compile_start  # Compiling is not step time.
        train_step, flops = compiled_steps[kind]
        window_flops += flops
        last = step == exp.total_steps
        window_end = step % config.log_every == 0 or last
        if window_end:  # The logging window's last step runs alone on the device: its device time.
            state, step_metrics = timer.time_step(train_step, state, batch)
        else:
            state, step_metrics = train_step(state, batch)
        history.append(step_metrics)  # Device arrays: read only at logging steps (no host sync per step).
        guard.add(step, step_metrics["nonfinite"])
        if debug_log is not None:
            debug_log.write(step, step_metrics["loss"], host_batch)
        report_progress.update(step, step_metrics["loss"])  # Counts the step once it has run, not dispatched.
        if window_end:  # The step was timed to completion: the window is done.
            _log_train(writer, exp, step, history, timer.scalars(step - last_step), window_flops / (step - last_step),
                       peak)
            history, last_step, window_flops = [], step, 0.0
            guard.check()
        preempted = watch.reached(step)
        eval_metrics = None
        if (step % exp.eval_every == 0 or last) and not preempted:
            eval_metrics = evaluate.evaluate_split(eval_step, state, data, "validation", mesh, exp.task)
            evaluate.write_eval_scalars(writer, step, "validation", eval_metrics)
        if step % config.checkpoint_every == 0 or last or eval_metrics is not None or preempted:
            guard.check()  # Never checkpoint a run that must halt: the last good checkpoint stays the newest.
            checkpointer.save(step, state, dict(meta, step=step, data_position=step),
                              metrics=evaluate.checkpoint_metrics(eval_metrics), force=True)
        if preempted:
            return state, True
        if window_end:  # The next window starts here: evaluation and saving are not part of it.
            timer.reset()
    return state, False


def _compile(exp: experiment.Experiment, train_step, state: dict, batch: dict):
    """(compiled step, FLOPs per update per device), after the pre-flight report (which may stop the run)."""
    compiled = train_step.lower(state, batch).compile()
    flops = accumulation.flops_per_update(step_flops(compiled), exp.config.grad_accum_steps)
    preflight.report(exp.config, exp.spec, compiled, flops)
    return compiled, flops


def _log_train(writer, exp, step: int, history: list[dict], timing: dict[str, float], flops: float,
               peak: hardware.Peak) -> None:
    """Means over the window's finite steps, `nonfinite_skips` (how many steps of the window were skipped), and
    where the time went (`metrics.WindowTimer`)."""
    values = jax.device_get(history)
    finite = [v for v in values if not v["nonfinite"]]
    scalars = {key: float(np.mean([v[key] for v in finite])) if finite else math.nan
               for key in values[0] if key != "nonfinite"}
    scalars["nonfinite_skips"] = float(sum(int(v["nonfinite"]) for v in values))
    scalars["examples_per_second"] = exp.config.global_batch_size / timing["seconds_per_step"]
    scalars["learning_rate"] = float(exp.schedule(step - 1))
    scalars.update(timing)
    if flops and peak.flops_per_second:
        scalars[metrics.mfu_name(peak)] = flops / timing["seconds_per_step"] / peak.flops_per_second
    writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})


def _final_evaluation(exp, state: dict, checkpointer, eval_step, writer, workdir: str) -> dict:
    """Evaluates the best checkpoint (by config.best_metric on validation) on config.eval_splits_at_end."""
    best = checkpointer.best_step()
    if best is not None and best != int(jax.device_get(state["step"])):
        log.info("Evaluating the best checkpoint: step %d by validation %s.", best, exp.config.best_metric)
        state, _ = checkpointer.restore(best, exp.spec.abstract)
    final = {}
    for split in exp.config.eval_splits_at_end:
        result = evaluate.evaluate_split(eval_step, state, exp.data, split, exp.mesh, exp.task)
        result["step"] = int(jax.device_get(state["step"]))
        evaluate.write_eval_scalars(writer, exp.total_steps, split, result)
        log.info("%s metrics -> %s", split, evaluate.write_json(workdir, split, result, exp.config))
        final[split] = result
    log.info("Final metrics:\n%s", progress.metrics_table(final))
    return final
