"""The same train steps on 1 device, an (8,) data mesh and a (4, 2) data x fsdp mesh give the same losses."""

import jax
import numpy as np

from lm import config_checks, experiment, sharding, train
from tests import text_data
from tests.test_train import files_config


def _losses(config, devices, steps=3):
    exp = experiment.build(config_checks.resolved_copy(config), devices)
    state = experiment.initial_state(exp)
    step_fn = train.jit_train_step(exp)
    batches = exp.data.train_iterator(0)
    losses = []
    with jax.set_mesh(exp.mesh):
        for _ in range(steps):
            state, metrics = step_fn(state, sharding.global_batch(next(batches), exp.mesh))
            losses.append(float(metrics["loss"]))
    return np.array(losses), exp.mesh


def test_losses_match_across_meshes(tmp_path, small_vocab):
    csv_path = text_data.write_csv(tmp_path / "reviews.csv", text_data.sentiment_rows(200))
    base = {"model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0}
    single, mesh1 = _losses(
        files_config(small_vocab, csv_path, **base, **{"mesh.data": 1}), jax.devices()[:1]
    )
    data8, mesh8 = _losses(files_config(small_vocab, csv_path, **base, **{"mesh.data": 8}), None)
    fsdp, mesh42 = _losses(files_config(small_vocab, csv_path, **base, **{"mesh.data": 4, "mesh.fsdp": 2}), None)
    assert dict(mesh1.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert dict(mesh42.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert single[0] != single[-1]  # The steps really train.
    np.testing.assert_allclose(data8, single, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fsdp, single, rtol=1e-5, atol=1e-5)


def test_parameters_born_sharded(tmp_path, small_vocab):
    """FSDP splits embedding/hidden parameters over the fsdp axis; the optimizer state follows them."""
    csv_path = text_data.write_csv(tmp_path / "reviews.csv", text_data.sentiment_rows(64))
    config = files_config(small_vocab, csv_path, **{"mesh.data": 2, "mesh.fsdp": 4})
    exp = experiment.build(config_checks.resolved_copy(config))
    state = experiment.initial_state(exp)
    kernel = state["params"]["encoder"]["layers"][0]["intermediate"]["kernel"]
    assert kernel.sharding.spec[0] == "fsdp"
    assert kernel.addressable_shards[0].data.shape[0] == kernel.shape[0] // 4
    mu = state["opt_state"][1][0].mu["encoder"]["layers"][0]["intermediate"]["kernel"]
    assert mu.sharding == kernel.sharding
