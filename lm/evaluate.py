"""Evaluation of a data split, from a live state (during training) or a checkpoint (`--mode=eval`).

Batches are padded to full size with weight-0 examples, so every example counts exactly once and the
jitted eval step sees one shape. Sums (loss, confusion matrix) accumulate on device; one transfer at
the end turns them into metrics.
"""

import logging

import jax
import ml_collections

from lm import (
    checkpointing,
    compiler,
    config_checks,
    config_keys,
    distributed,
    experiment,
    files,
    metrics,
    progress,
    sharding,
)
from lm import state as state_lib

log = logging.getLogger(__name__)


def make_eval_step(exp: experiment.Experiment):
    """The jitted eval step: sums of the task's metrics over one global batch."""
    spec, task, mesh = exp.spec, exp.task, exp.mesh

    def eval_step(params: dict, batch_stats: dict, batch: dict) -> dict:
        model = state_lib.merge_model(spec.graphdef, params, batch_stats)
        logits = task.logits(model, batch, deterministic=True)
        return task.eval_sums(logits, batch)

    return jax.jit(
        eval_step,
        in_shardings=(spec.shardings["params"], spec.shardings["batch_stats"], sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
        compiler_options=compiler.step_options(exp.config, mesh),
    )


def evaluate_split(eval_step, state: dict, data, split: str, mesh: jax.sharding.Mesh, task) -> dict:
    totals = None
    for host_batch in data.eval_batches(split):
        sums = eval_step(state["params"], state["batch_stats"], sharding.global_batch(host_batch, mesh))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    if totals is None:
        raise ValueError(f"The {split!r} split is empty; check config.data.")
    return task.finalize(jax.device_get(totals))


def summary(result: dict) -> str:
    """The scalar metrics of an evaluation, for a log line: "accuracy 0.8700, loss 0.3100, ..."."""
    return ", ".join(f"{key} {value:.4f}" for key, value in result.items()
                     if isinstance(value, (int, float)) and key != "step")


def checkpoint_metrics(eval_metrics: dict | None) -> dict | None:
    return None if eval_metrics is None else metrics.scalar_metrics(eval_metrics)


def write_eval_scalars(writer, step: int, split: str, result: dict) -> None:
    writer.write_scalars(step, {f"{split}/{k}": v for k, v in metrics.scalar_metrics(result).items()})


def write_json(workdir: str, split: str, result: dict, config: ml_collections.ConfigDict) -> str:
    """WORKDIR/metrics_<split>.json, written by process 0 (a failure stops every process with its message)."""
    path = files.join(workdir, f"metrics_{split}.json")
    distributed.on_process_zero(lambda: files.write_json(path, result), f"write {path}",
                                config.distributed.process_zero_timeout_s)
    return path


def select_step(checkpointer: checkpointing.Checkpointer, which: str) -> int:
    if which == "best":
        step = checkpointer.best_step()
    elif which == "latest":
        step = checkpointer.latest_step()
    else:
        try:
            step = int(which)
        except ValueError:
            raise ValueError(f"config.eval_checkpoint={which!r}: use 'best', 'latest' or a step number.") from None
        if step not in checkpointer.all_steps():
            raise ValueError(
                f"config.eval_checkpoint={which!r}: no such step; saved steps: {checkpointer.all_steps()}."
            )
    if step is None:
        raise FileNotFoundError(f"No checkpoint under {checkpointer.manager.directory}; train first.")
    return step


# What the metrics of a checkpoint depend on besides its weights: set otherwise than the run set them, the numbers
# are not the run's (another vocabulary, max_length or label order reads the same text differently).
EVAL_KEYS = ("task", "data", "label_smoothing")


def run_eval(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=eval: restores a checkpoint of `workdir`, evaluates `config.eval_split` of the data `config` defines,
    writes JSON. Where `config` sets EVAL_KEYS otherwise than the run's WORKDIR/config.json, a warning lists them."""
    config = config_checks.resolved_copy(config)
    ckpt_dir = checkpointing.checkpoint_dir(workdir)
    if not files.is_dir(ckpt_dir):
        raise FileNotFoundError(f"--workdir={workdir!r} has no checkpoints/ directory; train there first.")
    exp = experiment.build(config)
    previous = files.read_run_config(workdir, missing_ok=True)
    changes = config_keys.changed(previous, exp.config, EVAL_KEYS) if previous else []
    if changes:
        log.warning("Evaluating with settings that differ from the run's (its config.json): %s. A file of the "
                    "split you evaluate may differ on purpose; other keys (vocabulary, max_length, label names, "
                    "preprocessing) make metrics that are not the run's: give the run's values.", "; ".join(changes))
    with checkpointing.Checkpointer(ckpt_dir, read_only=True, best_metric=config.best_metric,
                                    best_mode=config.best_mode) as checkpointer:
        step = select_step(checkpointer, str(config.eval_checkpoint))
        state, _ = checkpointer.restore(step, exp.spec.abstract)
    eval_step = make_eval_step(exp)
    with jax.set_mesh(exp.mesh):
        result = evaluate_split(eval_step, state, exp.data, config.eval_split, exp.mesh, exp.task)
    result["step"] = step
    path = write_json(workdir, config.eval_split, result, config)
    log.info("%s metrics at step %d -> %s\n%s", config.eval_split, step, path,
             progress.metrics_table({config.eval_split: result}))
    return result
