"""Config validation, in one place: every error names the key, the value and the fix, before anything compiles.

`resolved_copy` runs the static checks once (the common keys, then the model family's and the task's own, from
their registries); `check_batch_sizes` runs once the mesh is known, before the data pipeline is built.
"""

import logging
from collections.abc import Collection

import ml_collections

from input_pipeline.common import check_on_bad_example
from lm import compiler, files, models, recipes, tasks
from lm.weights import pretrained

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16")


def resolved_copy(config: ml_collections.ConfigDict, overrides: Collection[str] = ()) -> ml_collections.ConfigDict:
    """A locked copy with the values that follow from `init_from` (model shape, recipe) filled in, checked.

    `overrides`: the dotted keys the user set explicitly (main.py passes the command line's --config.KEY flags).
    With `init_from`, the model's architecture always comes from the checkpoint; a model hyperparameter the
    checkpoint also carries (a HF directory's dropout rates) comes from the checkpoint unless it is overridden.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    if config.init_from:
        if not files.exists(config.init_from):
            raise FileNotFoundError(
                f"config.init_from={config.init_from!r} does not exist; give a Hugging Face model directory "
                "or a workdir of ours."
            )
        before = config.model.to_dict()
        pretrained.apply_to_config(config)
        _keep_overridden_model_keys(config, before, overrides)
    recipes.apply(config)  # From scratch or fine-tuning: the keys the config left unset.
    config.lock()
    check_static(config)
    return config


def _keep_overridden_model_keys(config: ml_collections.ConfigDict, before: dict, overrides: Collection[str]) -> None:
    """Puts back the overridden model hyperparameters that `init_from` replaced; logs where each model key came from.

    Architecture keys (the model family's `arch_keys`) must match the weights, so the checkpoint's value stays and
    an override that differs is a warning.
    """
    architecture = set(models.model_family(config.model).arch_keys)
    sources = {}
    for key, value in config.model.items():
        overridden = f"model.{key}" in overrides
        if key in architecture:
            sources[key] = "checkpoint"
            if overridden and value != before.get(key):
                log.warning("config.model.%s=%r is ignored: init_from=%s needs %r (the checkpoint decides the "
                            "shape).", key, before[key], config.init_from, value)
        elif overridden:
            config.model[key] = before[key]
            sources[key] = "command line"
        else:
            sources[key] = "config" if value == before.get(key) else "checkpoint"
    by_source = {}
    for key, source in sources.items():
        by_source.setdefault(source, []).append(f"{key}={config.model[key]!r}")
    log.info("config.model with init_from=%s: %s.", config.init_from,
             "; ".join(f"from the {source}: {', '.join(keys)}" for source, keys in by_source.items()))


def _positive(config, key: str) -> None:
    value = config[key]
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.{key}={value!r} must be a positive integer.")


def check_static(config: ml_collections.ConfigDict) -> None:
    """Checks that need neither devices nor data: the common keys, then the model family's and the task's own."""
    for key in ("global_batch_size", "eval_batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                "max_consecutive_nonfinite", "grad_accum_steps"):
        _positive(config, key)
    _check_debug(config.debug)
    _check_serving(config.serving)
    _check_optimizer(config)
    compiler.ynn_kinds(config)
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ValueError(
            f"config.num_train_steps={config.num_train_steps} and config.num_epochs={config.num_epochs}: "
            "set one of them to a positive value."
        )
    family = models.model_family(config.model)
    spec = tasks.task_spec(config.task)
    spec.pipeline(family)
    if spec.check is not None:
        spec.check(config, family)
    if family.check is not None:
        family.check(config)
    if config.model.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype={config.model.dtype!r}: use one of {DTYPES}.")
    if config.best_metric and config.best_metric not in spec.metrics:
        raise ValueError(
            f"config.best_metric={config.best_metric!r} is not an eval metric of config.task={config.task!r}; use "
            f"one of {spec.metrics} (its default: {spec.best_metric!r}, best_mode={spec.best_mode!r}) or ''."
        )
    check_on_bad_example(config.on_bad_example)
    for split in config.eval_splits_at_end:
        if split not in ("train", "validation", "test"):
            raise ValueError(f"config.eval_splits_at_end has {split!r}; use 'train', 'validation' or 'test'.")


def _check_serving(serving: ml_collections.ConfigDict) -> None:
    """config.serving: predict, select, export and serve (lm/serving/)."""
    from lm.serving.select import STRATEGIES

    if serving.strategy not in STRATEGIES:
        raise ValueError(f"config.serving.strategy={serving.strategy!r}: use one of {STRATEGIES}.")
    for key in ("top_k", "max_batch_size", "max_queue", "max_body_bytes", "max_instances", "drift_window"):
        if not isinstance(serving[key], int) or serving[key] <= 0:
            raise ValueError(f"config.serving.{key}={serving[key]!r} must be a positive integer.")
    if serving.max_queue < serving.max_batch_size:
        raise ValueError(f"config.serving.max_queue={serving.max_queue} must be at least config.serving.max_batch_size="
                         f"{serving.max_batch_size}: a full batch must fit in the queue.")
    if serving.max_wait_ms < 0 or not 0 <= serving.port <= 65535:
        raise ValueError(f"config.serving.max_wait_ms={serving.max_wait_ms} must be >= 0 and config.serving.port="
                         f"{serving.port} in 0..65535 (0: any free port).")


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
    """Values that would train silently wrong: a negative rate ascends the loss, a warm-up beyond the run never
    reaches the peak rate, label smoothing outside [0, 1) is no smoothing."""
    opt = config.optimizer  # None: left to the recipe (lm/recipes.py), which fills it when the run starts.
    if opt.learning_rate is not None and opt.learning_rate < 0:
        raise ValueError(f"config.optimizer.learning_rate={opt.learning_rate!r} must be >= 0 (e.g. 5e-5 to "
                         "fine-tune BERT, 1e-3 to train a small model from scratch; 0 only updates BatchNorm "
                         "statistics).")
    if opt.warmup_fraction is not None and not 0 <= opt.warmup_fraction <= 1:
        raise ValueError(f"config.optimizer.warmup_fraction={opt.warmup_fraction!r} must be in [0, 1]: the fraction "
                         "of the training steps over which the rate rises to its peak (or set optimizer.warmup_steps).")
    if opt.weight_decay is not None and opt.weight_decay < 0:
        raise ValueError(f"config.optimizer.weight_decay={opt.weight_decay!r} must be >= 0 (0 turns it off).")
    if config.label_smoothing is not None and not 0 <= config.label_smoothing < 1:
        raise ValueError(f"config.label_smoothing={config.label_smoothing!r} must be in [0, 1): the probability "
                         "spread over the other classes (0 turns it off; 0.1 is usual).")


def _check_debug(debug: ml_collections.ConfigDict) -> None:
    if any(not isinstance(step, int) or step < 1 for step in debug.nan_steps):
        raise ValueError(
            f"config.debug.nan_steps={debug.nan_steps!r} must hold step numbers >= 1 (a test hook; () disables it)."
        )


def check_batch_sizes(config: ml_collections.ConfigDict, data_parallel: int, process_count: int) -> None:
    """Batch sizes must split evenly over the data-parallel devices and the hosts."""
    for key in ("global_batch_size", "eval_batch_size"):
        value = config[key]
        for count, what in ((data_parallel, "data-parallel devices (mesh data x fsdp)"), (process_count, "processes")):
            if value % count:
                lower, upper = (value // count) * count, (value // count + 1) * count
                suggestion = f"{lower} or {upper}" if lower else f"{upper}"
                raise ValueError(
                    f"config.{key}={value} is not divisible by the {count} {what}; use a multiple of {count} "
                    f"such as {suggestion}."
                )
    per_micro_batch = config.grad_accum_steps * data_parallel
    if config.global_batch_size % per_micro_batch:
        raise ValueError(
            f"config.global_batch_size={config.global_batch_size} does not split into config.grad_accum_steps="
            f"{config.grad_accum_steps} micro-batches over {data_parallel} data-parallel devices: it must be a "
            f"multiple of {config.grad_accum_steps} x {data_parallel} = {per_micro_batch}. Change the batch size "
            "or grad_accum_steps (the batch size is the batch of one update, over all micro-batches)."
        )
