"""Probabilities of a trained model over data: the validation reference of an export, predict and select."""

import logging

import jax
import ml_collections
import numpy as np

from lm.serving import monitor
from lm.serving.trained import TrainedModel

log = logging.getLogger(__name__)


def validation_reference(config: ml_collections.ConfigDict, model: TrainedModel) -> dict:
    """The drift reference: predicted-class distribution and confidence histogram on the validation split,
    read by the training pipeline from `config.data` (the run's own config)."""
    import input_pipeline
    from lm import config_checks

    config = config_checks.resolved_copy(config)
    data = input_pipeline.create_data(config, jax.process_index(), jax.process_count())
    forward = jax.jit(model.probabilities)
    variables = jax.device_put(model.variables)
    rows = []
    for batch in data.eval_batches("validation"):
        probabilities = np.asarray(forward(variables, {key: batch[key] for key in model.input_keys}))
        rows.append(probabilities[batch["weight"] > 0])
    if not rows:
        raise ValueError("The validation split is empty: the export needs it for the drift reference.")
    return monitor.reference_profile(np.concatenate(rows))
