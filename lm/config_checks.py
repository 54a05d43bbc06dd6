"""Config validation: every error names the key, the value and the fix, before anything compiles."""

import os

import ml_collections

from input_pipeline.common import check_on_bad_example
from lm import compiler
from lm.weights import pretrained

KNOWN_METRICS = ("accuracy", "loss", "f1_macro", "precision_macro", "recall_macro", "top5_accuracy", "perplexity")
DTYPES = ("float32", "bfloat16")


def resolved_copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A locked copy with the values that follow from `init_from` filled in, checked."""
    config = ml_collections.ConfigDict(config.to_dict())
    if config.init_from:
        if not os.path.exists(config.init_from):
            raise FileNotFoundError(
                f"config.init_from={config.init_from!r} does not exist; give a Hugging Face model directory "
                "or a workdir of ours."
            )
        pretrained.apply_to_config(config)
    config.lock()
    check_static(config)
    return config


def _positive(config, key: str) -> None:
    value = config[key]
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.{key}={value!r} must be a positive integer.")


def check_static(config: ml_collections.ConfigDict) -> None:
    """Checks that need neither devices nor data."""
    for key in ("global_batch_size", "eval_batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                "max_consecutive_nonfinite", "grad_accum_steps"):
        _positive(config, key)
    if any(not isinstance(step, int) or step < 1 for step in config.debug_nan_steps):
        raise ValueError(
            f"config.debug_nan_steps={config.debug_nan_steps!r} must hold step numbers >= 1 "
            "(a test hook; () disables it)."
        )
    compiler.ynn_kinds(config)
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ValueError(
            f"config.num_train_steps={config.num_train_steps} and config.num_epochs={config.num_epochs}: "
            "set one of them to a positive value."
        )
    if config.task == "mlm" and (config.model.name != "bert" or config.model.get("head") != "mlm"):
        raise ValueError(
            f"config.task='mlm' needs a BERT built for masked LM: config.model.name='bert' (is "
            f"{config.model.name!r}) and config.model.head='mlm' (is {config.model.get('head')!r})."
        )
    if config.task == "simclr" and (config.model.name != "resnet" or not config.model.get("projection_dims")
                                    or config.data.get("views", 1) != 2):
        raise ValueError(
            "config.task='simclr' needs a ResNet with a projection head and two views of each image: "
            f"config.model.name='resnet' (is {config.model.name!r}), config.model.projection_dims non-empty (is "
            f"{config.model.get('projection_dims')!r}) and config.data.views=2 (is {config.data.get('views')!r})."
        )
    if config.task == "classification" and config.model.get("projection_dims", ()):
        raise ValueError(
            f"config.task='classification' needs the linear head: set config.model.projection_dims=() (is "
            f"{tuple(config.model.projection_dims)})."
        )
    if config.task == "classification" and config.model.get("head", "classifier") != "classifier":
        raise ValueError(
            f"config.task='classification' needs config.model.head='classifier', not {config.model.head!r}."
        )
    if config.task == "classification" and config.model.num_classes < 2:
        raise ValueError(f"config.model.num_classes={config.model.num_classes} must be at least 2.")
    if config.model.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype={config.model.dtype!r}: use one of {DTYPES}.")
    if config.best_metric and config.best_metric not in KNOWN_METRICS:
        raise ValueError(
            f"config.best_metric={config.best_metric!r} is not an eval metric; use one of {KNOWN_METRICS} or ''."
        )
    if config.model.name == "bert":
        max_positions = config.model.max_position_embeddings
        if config.data.max_length > max_positions:
            raise ValueError(
                f"config.data.max_length={config.data.max_length} exceeds "
                f"config.model.max_position_embeddings={max_positions}; lower max_length."
            )
        if config.model.hidden_size % config.model.num_heads:
            raise ValueError(
                f"config.model.hidden_size={config.model.hidden_size} is not divisible by "
                f"config.model.num_heads={config.model.num_heads}."
            )
    check_on_bad_example(config.on_bad_example)
    for split in config.eval_splits_at_end:
        if split not in ("train", "validation", "test"):
            raise ValueError(f"config.eval_splits_at_end has {split!r}; use 'train', 'validation' or 'test'.")


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
