"""Gradient accumulation (config.grad_accum_steps): k micro-batches inside the step equal one k-times batch."""

import jax
import numpy as np
import pytest

from configs import bert_sentiment, vision_classification
from lm import config_checks, experiment, sharding, train
from tests import model_steps


def _bert_config(accum: int):
    config = bert_sentiment.get_config("smoke")
    config.model.vocab_size = 64
    config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
    config.global_batch_size = 16
    config.grad_accum_steps = accum
    config.mesh.data = 2
    config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9, clip_norm=0.0, warmup_steps=0,
                            schedule="constant")
    return config


def _run(config, batches, devices):
    exp = model_steps.experiment_for(config, devices)
    state = experiment.initial_state(exp)
    step = train.jit_train_step(exp)
    losses = []
    with jax.set_mesh(exp.mesh):
        for batch in batches:
            global_batch = sharding.global_batch(batch, exp.mesh)
            state, metrics = step(state, global_batch)
            losses.append(float(metrics["loss"]))
        loops = step.lower(state, global_batch).as_text().count("stablehlo.while")
    return losses, jax.device_get(state), loops


def test_four_micro_batches_equal_one_four_times_batch():
    batches = [model_steps.text_batch(seed, batch_size=16, length=16, vocab=64) for seed in range(2)]
    whole_losses, whole, whole_loops = _run(_bert_config(1), batches, jax.devices()[:2])
    micro_losses, micro, micro_loops = _run(_bert_config(4), batches, jax.devices()[:2])
    assert micro_loops == whole_loops + 1  # The micro-batch loop.
    np.testing.assert_allclose(micro_losses, whole_losses, atol=1e-6, rtol=0)
    assert whole_losses[1] != whole_losses[0]  # The parameters moved.
    for a, b in zip(jax.tree.leaves(whole["params"]), jax.tree.leaves(micro["params"])):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_batch_norm_statistics_update_per_micro_batch():
    """One step of 2 micro-batches leaves the BatchNorm statistics of two steps on those micro-batches (lr 0)."""
    config = vision_classification.get_config("resnet_small,digits,smoke")
    config.global_batch_size = 8
    config.mesh.data = 1
    config.optimizer.update(name="sgd", learning_rate=0.0, weight_decay=0.0, clip_norm=0.0)
    batch = model_steps.image_batch(0, batch_size=8, size=16)
    micro_batches = [{key: value[index::2] for key, value in batch.items()} for index in range(2)]
    single = config.copy_and_resolve_references()
    single.global_batch_size = 4
    _, sequential, _ = _run(single, micro_batches, jax.devices()[:1])
    config.grad_accum_steps = 2
    _, accumulated, _ = _run(config, [batch], jax.devices()[:1])
    leaves = jax.tree.leaves(accumulated["batch_stats"])
    assert leaves
    for a, b in zip(jax.tree.leaves(sequential["batch_stats"]), leaves):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("batch, accum, data_parallel", [(16, 4, 8), (12, 8, 1), (32, 0, 1)])
def test_batch_that_does_not_split_is_a_config_error(batch, accum, data_parallel):
    config = _bert_config(accum)
    config.global_batch_size = batch
    with pytest.raises(ValueError, match="grad_accum_steps"):
        config = config_checks.resolved_copy(config)
        config_checks.check_batch_sizes(config, data_parallel, 1)


def test_flops_per_update_count_every_micro_batch():
    """XLA's cost analysis sees the micro-batch loop's body once: the FLOPs of an update (MFU's numerator) are k
    times it, and so equal those of the same update without accumulation, up to the optimizer's few FLOPs."""
    from lm import accumulation

    batch = model_steps.text_batch(0, batch_size=16, length=64, vocab=64)  # 128 tokens per device micro-batch.
    flops = {}
    for accum in (1, 4):
        exp = model_steps.experiment_for(_bert_config(accum), jax.devices()[:2])
        state = experiment.initial_state(exp)
        with jax.set_mesh(exp.mesh):
            compiled = train.jit_train_step(exp).lower(state, sharding.global_batch(batch, exp.mesh)).compile()
        flops[accum] = accumulation.flops_per_update(train.step_flops(compiled), accum)
    assert flops[1] > 0
    assert flops[4] == pytest.approx(flops[1], rel=0.02), flops
