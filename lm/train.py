"""train_and_evaluate(config, workdir): the training loop, top to bottom.

Stages: validate the config -> mesh -> input pipeline -> model and train state (born sharded) ->
pretrained weights -> resume from the workdir -> jitted train and eval steps -> loop with logging,
periodic evaluation and checkpoints -> final evaluation of the best checkpoint on the test split.
"""

import logging
import math
import os
import time

import jax
import ml_collections
import numpy as np
import optax
from clu import metric_writers, periodic_actions
from flax import nnx

from lm import checkpointing, config_checks, evaluate, experiment, metrics, sharding
from lm import state as state_lib

log = logging.getLogger(__name__)


def make_train_step(graphdef, task, tx: optax.GradientTransformation, trainable: dict, deterministic: bool = False):
    """The pure train step: (state, batch) -> (new state, metrics). Jitted by the caller with donation.

    Only the parameters that `trainable` marks are differentiated and updated; the frozen ones pass
    through unchanged. `deterministic` runs the model in eval mode (no dropout, BatchNorm on and keeping its
    running statistics), for linear probing of a frozen backbone.
    """

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        params, frozen = state_lib.partition(state["params"], trainable)

        def loss_fn(params):
            model = state_lib.merge_model(graphdef, state_lib.combine(params, frozen), state["batch_stats"])
            logits = task.logits(model, batch, deterministic=deterministic, rngs=nnx.Rngs(dropout=key))
            loss, aux = task.loss(logits, batch)
            batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
            return loss, (aux, batch_stats)

        (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        params = state_lib.combine(optax.apply_updates(params, updates), frozen)
        new_state = dict(state, params=params, opt_state=opt_state, batch_stats=batch_stats, step=state["step"] + 1)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return train_step


def jit_train_step(exp: experiment.Experiment):
    """The jitted train step; with config.trainable="head" the frozen backbone runs in eval mode."""
    spec = exp.spec
    return jax.jit(
        make_train_step(spec.graphdef, exp.task, exp.tx, spec.trainable, deterministic=exp.config.trainable == "head"),
        in_shardings=(spec.shardings, sharding.batch_sharding(exp.mesh)),
        out_shardings=(spec.shardings, sharding.replicated(exp.mesh)),
        donate_argnums=0,
    )


def _step_flops(compiled) -> float:
    """FLOPs of one step per device, from XLA's cost analysis of the compiled (partitioned) program."""
    try:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0]
        return float(analysis.get("flops", 0.0))
    except Exception as error:  # Cost analysis is optional; some backends do not implement it.
        log.warning("No FLOP count for the train step (%s); MFU will not be reported.", error)
        return 0.0


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, evaluates and checkpoints in `workdir`; resumes by itself. Returns the final metrics by split."""
    config = config_checks.resolved_copy(config)
    exp = experiment.build(config)
    _write_config(config, workdir)
    checkpointer = checkpointing.Checkpointer(
        checkpointing.checkpoint_dir(workdir), keep=config.keep_checkpoints,
        best_metric=config.best_metric, best_mode=config.best_mode,
    )
    latest = checkpointer.latest_step()
    if latest is not None:
        state, _ = checkpointer.restore(latest, exp.spec.abstract)
        log.info("Resumed from %s at step %d.", workdir, latest)
    else:
        state = experiment.initial_state(exp)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0, asynchronous=True)
    eval_step = evaluate.make_eval_step(exp.spec, exp.task, exp.mesh)
    try:
        with jax.set_mesh(exp.mesh):
            state = _train_loop(exp, state, checkpointer, eval_step, writer)
            checkpointer.wait()
            return _final_evaluation(exp, state, checkpointer, eval_step, writer, workdir)
    finally:
        writer.flush()
        checkpointer.close()


def _train_loop(exp: experiment.Experiment, state: dict, checkpointer, eval_step, writer) -> dict:
    config, data, mesh = exp.config, exp.data, exp.mesh
    start_step = int(jax.device_get(state["step"]))
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=exp.total_steps, writer=writer, every_steps=config.log_every, every_secs=None
    )
    peak_flops = config.peak_flops_per_device or metrics.matmul_peak_flops(size=1024, repeats=5)
    meta = {"model": config.model.to_dict(), "task": config.task}
    train_step, flops_per_step = jit_train_step(exp), 0.0
    if start_step == 0 and config.get("eval_at_start", False):  # The starting point, e.g. of continued pretraining.
        eval_metrics = evaluate.evaluate_split(eval_step, state, data, "validation", mesh, exp.task)
        evaluate.write_eval_scalars(writer, 0, "validation", eval_metrics)
        log.info("validation at step 0: %s", evaluate.summary(eval_metrics))
    train_iter = data.train_iterator(start_step)
    history, last_time, last_step = [], time.perf_counter(), start_step
    for step in range(start_step + 1, exp.total_steps + 1):
        batch = sharding.global_batch(next(train_iter), mesh)
        if step == start_step + 1:  # Compile ahead of time once, to read the step's FLOPs.
            train_step = train_step.lower(state, batch).compile()
            flops_per_step = _step_flops(train_step)
        state, step_metrics = train_step(state, batch)
        history.append(step_metrics)  # Device arrays: read only at logging steps (no host sync per step).
        report_progress(step)
        last = step == exp.total_steps
        if step % config.log_every == 0 or last:
            jax.block_until_ready(step_metrics)  # Steps run asynchronously: time them once they are done.
            seconds = time.perf_counter() - last_time
            _log_train(writer, exp, step, history, (step - last_step) / max(seconds, 1e-9), flops_per_step, peak_flops)
            history, last_time, last_step = [], time.perf_counter(), step
        eval_metrics = None
        if step % exp.eval_every == 0 or last:
            eval_metrics = evaluate.evaluate_split(eval_step, state, data, "validation", mesh, exp.task)
            evaluate.write_eval_scalars(writer, step, "validation", eval_metrics)
        if step % config.checkpoint_every == 0 or last or eval_metrics is not None:
            checkpointer.save(step, state, meta, metrics=evaluate.checkpoint_metrics(eval_metrics), force=True)
    return state


def _log_train(writer, exp, step: int, history: list[dict], steps_per_second: float, flops: float,
               peak_flops: float) -> None:
    values = jax.device_get(history)
    scalars = {key: float(np.mean([v[key] for v in values])) for key in values[0]}
    if not all(math.isfinite(v) for v in scalars.values()):
        raise FloatingPointError(f"Non-finite training metrics at step {step}: {scalars}.")
    scalars["examples_per_second"] = steps_per_second * exp.config.global_batch_size
    scalars["learning_rate"] = float(exp.schedule(step - 1))
    if flops and peak_flops:
        scalars["mfu"] = flops * steps_per_second / peak_flops
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
        path = evaluate.write_json(workdir, split, result)
        log.info("%s: %s -> %s", split, evaluate.summary(result), path)
        final[split] = result
    return final
