"""A train step and its state without a data pipeline: an Experiment built from a config, a mesh and random batches.

For tests of the step itself (accumulation, optimizers, pre-flight); the trainer builds the same pieces in
`lm.experiment.build`.
"""

import jax
import numpy as np

from lm import config_checks, experiment, optimizers, sharding
from lm import state as state_lib


def build(config, devices, total_steps: int = 100) -> tuple[experiment.Experiment, dict]:
    """(experiment, fresh state) for `config` on a mesh of `devices`; `config` is resolved and checked first."""
    config = config_checks.resolved_copy(config)
    mesh = sharding.create_mesh(config.mesh, devices)
    config_checks.check_batch_sizes(config, sharding.data_parallel_size(mesh), jax.process_count())
    tx, schedule = optimizers.create_optimizer(config.optimizer, total_steps, config.model)
    spec = state_lib.state_spec(config.model, tx, mesh, config.axis_rules, config.seed,
                                trainable=lambda params: optimizers.trainable_mask(params, config))
    exp = experiment.Experiment(config=config, mesh=mesh, data=None, task=experiment.create_task(config), tx=tx,
                                schedule=schedule, spec=spec, total_steps=total_steps, steps_per_epoch=total_steps,
                                eval_every=total_steps)
    with jax.set_mesh(mesh):
        state = state_lib.init_state(config.model, tx, spec, config.seed)
    return exp, state


def text_batch(batch: int, length: int, vocab_size: int, num_classes: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": (rng.integers(1, vocab_size, (batch, length)) * mask).astype(np.int32),
            "attention_mask": mask, "token_type_ids": np.zeros((batch, length), np.int32),
            "label": rng.integers(0, num_classes, batch).astype(np.int32)}


def image_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, num_classes, batch).astype(np.int32)}
