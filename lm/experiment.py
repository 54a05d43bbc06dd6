"""Builds what training and evaluation share: mesh, data, task, optimizer, train-state layout.

`build(config, workdir)` does every check that needs devices or data before anything compiles.
"""

import dataclasses
import logging
import math

import jax
import ml_collections
import optax

import input_pipeline
from lm import config_checks, optimizers, sharding
from lm import state as state_lib
from lm.tasks import classification, mlm, simclr
from lm.weights import pretrained

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Experiment:
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    data: object
    task: classification.ClassificationTask | mlm.MaskedLMTask | simclr.SimCLRTask
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    spec: state_lib.StateSpec
    total_steps: int
    steps_per_epoch: int
    eval_every: int


def create_task(config: ml_collections.ConfigDict):
    if config.task == "mlm":
        return mlm.MaskedLMTask()
    if config.task == "simclr":
        return simclr.SimCLRTask(temperature=config.temperature)
    if config.task != "classification":
        raise ValueError(f"config.task={config.task!r} is not known; use 'classification', 'mlm' or 'simclr'.")
    inputs = classification.TEXT_INPUTS if config.model.name == "bert" else classification.IMAGE_INPUTS
    return classification.ClassificationTask(
        num_classes=config.model.num_classes, input_keys=inputs, label_smoothing=config.label_smoothing
    )


def build(config: ml_collections.ConfigDict, devices=None) -> Experiment:
    """`config` must come from `config_checks.resolved_copy`; `devices` defaults to all devices."""
    mesh = sharding.create_mesh(config.mesh, devices)
    config_checks.check_batch_sizes(config, sharding.data_parallel_size(mesh), jax.process_count())
    text = "text_classification" if config.model.name == "bert" else "images"
    pipeline = "text_corpus" if config.task == "mlm" else text
    data = input_pipeline.create_data(config, jax.process_index(), jax.process_count(), pipeline=pipeline)
    if "vocab_size" in config.model:
        if config.model.vocab_size == -1:
            config.model.vocab_size = data.vocab_size
        elif config.model.vocab_size < data.vocab_size:
            raise ValueError(
                f"config.model.vocab_size={config.model.vocab_size} is smaller than the vocabulary "
                f"({data.vocab_size} entries in {config.data.vocab_path}); set it to -1 to follow the vocabulary."
            )
    steps_per_epoch = data.steps_per_epoch  # Equal on every host: the smallest host share decides.
    if config.num_train_steps > 0:
        total_steps = config.num_train_steps
    else:
        total_steps = max(int(math.ceil(config.num_epochs * steps_per_epoch)), 1)
    eval_every = config.eval_every if config.eval_every > 0 else steps_per_epoch
    tx, schedule = optimizers.create_optimizer(config.optimizer, total_steps, config.model)
    spec = state_lib.state_spec(config.model, tx, mesh, config.axis_rules, config.seed,
                                trainable=lambda params: optimizers.trainable_mask(params, config))
    _log_trainable(spec)
    log.info(
        "Mesh %s; %d train examples, %d steps per epoch, %d steps.",
        dict(mesh.shape), data.num_train_examples, steps_per_epoch, total_steps,
    )
    return Experiment(config, mesh, data, create_task(config), tx, schedule, spec, total_steps, steps_per_epoch,
                      eval_every)


def _log_trainable(spec: state_lib.StateSpec) -> None:
    sizes = [(leaf.size, trains) for leaf, trains in zip(jax.tree.leaves(spec.abstract["params"]),
                                                         jax.tree.leaves(spec.trainable))]
    trained = sum(size for size, trains in sizes if trains)
    log.info("Training %d of %d parameters (%d frozen).", trained, sum(s for s, _ in sizes),
             sum(size for size, trains in sizes if not trains))


def initial_state(exp: Experiment) -> dict:
    """Fresh state, born sharded; with `init_from`, its weights replace the fresh ones."""
    state = state_lib.init_state(exp.config.model, exp.tx, exp.spec, exp.config.seed)
    if exp.config.init_from:
        params, batch_stats, report = pretrained.load_into(exp.config, state["params"], state["batch_stats"])
        pretrained.log_report(report)
        state = state_lib.replace_params(state, params, exp.spec, exp.tx)
        if batch_stats is not None:
            state = dict(state, batch_stats=jax.device_put(batch_stats, exp.spec.shardings["batch_stats"]))
    return state
