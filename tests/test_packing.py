"""Unpadding (config.model.unpad_fraction, lm/models/packing.py): training on the real tokens only computes what
training on every padded position computes, with less work; a batch that does not fit trains padded (decided on
the host); evaluation and multi-device steps stay as they were."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lm
from lm import config_checks, sharding
from lm import train as lm_train
from lm.models import bert, packing
from tests import model_steps


def short_batch(seed: int, batch_size: int = 16, length: int = 16) -> dict[str, np.ndarray]:
    """model_steps.text_batch with 3-8 real tokens of 16: at most half of the positions."""
    batch = model_steps.text_batch(seed, batch_size, length)
    lengths = np.random.default_rng(seed + 100).integers(3, 9, batch_size)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    return {**batch, "input_ids": batch["input_ids"] * mask, "attention_mask": mask}


def test_token_packing_puts_the_real_tokens_first():
    mask = short_batch(0, 8, 16)["attention_mask"]
    found = jax.jit(packing.token_packing, static_argnums=1)(jnp.asarray(mask), 0.45)
    index, slot = np.asarray(found.packed_index), np.asarray(found.slot_of_row)
    assert index.shape == (64,)  # 0.45 x 128 rounded up to a multiple of 8.
    real = np.flatnonzero(mask.reshape(-1))
    assert list(index[:len(real)]) == list(real) and len(set(index.tolist())) == len(index)
    assert [slot[position] for position in index] == list(range(len(index)))
    assert sorted(set(range(128)) - set(index.tolist())) == list(np.flatnonzero(slot == len(index)))
    assert packing.capacity(128, 1.0) == 128 and packing.capacity(100, 0.99) == 100


def test_a_batch_fits_when_each_micro_batch_fits_and_leaves_something_out():
    mask = np.zeros((4, 16), np.int32)
    mask[:, :4] = 1  # 16 real tokens of 64.
    assert packing.fits(mask, 0.25) and not packing.fits(mask, 0.1)  # 16 rows; 6.4 rounded up to 8 rows.
    mask = np.zeros((8, 16), np.int32)
    mask[:, :2], mask[0] = 1, 1  # 30 real tokens of 128; micro-batches of 2: rows 0, 2, 4, 6 hold 22, the others 8.
    assert packing.fits(mask, 0.25) and not packing.fits(mask, 0.125)  # 32 rows, then 16.
    assert not packing.fits(mask, 0.25, micro_batches=2)  # 16 rows for each micro-batch's 64 positions.
    assert packing.fits(mask, 0.375, micro_batches=2)  # 24 rows.
    assert not packing.fits(np.ones((8, 16), np.int32), 0.9)
    assert not packing.fits(np.zeros((1, 16), np.int32), 0.99)  # 0.99 of 16 positions is 16: nothing left out.


def test_pack_and_unpack_are_a_gather_and_a_scatter_with_their_gradients():
    mask = jnp.asarray(np.arange(4)[None] < np.asarray([3, 1, 1])[:, None])  # 5 real tokens of 12: 8 rows.
    index = packing.token_packing(mask, 0.5)
    positions = index.packed_index
    x = jax.random.normal(jax.random.key(0), (3, 4, 5))
    rows = jax.random.normal(jax.random.key(1), (8, 5))
    weights = jax.random.normal(jax.random.key(2), (3, 4, 5))

    def gathered(x):
        return jnp.sum(packing.pack(x, index) * weights.reshape(12, 5)[:8])

    def scattered(rows):
        return jnp.sum(packing.unpack(rows, index, 3, 4) * weights)

    reference_gathered = jax.value_and_grad(lambda x: jnp.sum(x.reshape(12, 5)[positions] * weights.reshape(12, 5)[:8]))
    reference_scattered = jax.value_and_grad(
        lambda rows: jnp.sum(jnp.zeros((12, 5)).at[positions].set(rows).reshape(3, 4, 5) * weights))
    for ours, reference, argument in ((gathered, reference_gathered, x), (scattered, reference_scattered, rows)):
        value, gradient = jax.value_and_grad(ours)(argument)
        expected_value, expected_gradient = reference(argument)
        np.testing.assert_allclose(value, expected_value, rtol=1e-6)
        np.testing.assert_array_equal(gradient, expected_gradient)


def train(batches, fraction, **setup):
    config = model_steps.bert_config(dropout_rate=0.0, attention_dropout_rate=0.0, remat=setup.get("remat", "none"),
                                     unpad_fraction=fraction)
    config.mesh.update(setup.get("mesh", {"data": 1}))
    config.grad_accum_steps = setup.get("grad_accum_steps", 1)
    devices = jax.devices()[:int(np.prod(list(config.mesh.values()))) if "mesh" in setup else 1]
    return model_steps.train_losses(model_steps.experiment_for(config, devices), batches)


def all_fit(batches, fraction, micro_batches=1) -> bool:
    return all(packing.fits(b["attention_mask"], fraction, micro_batches) for b in batches)


@pytest.mark.parametrize("setup", [{}, {"remat": "full", "grad_accum_steps": 2}])
def test_unpadded_training_equals_padded_training(setup):
    batches = [short_batch(seed) for seed in range(3)]
    assert all_fit(batches, 0.5, setup.get("grad_accum_steps", 1))  # The packed step runs, not the padded one.
    padded_losses, padded_state, padded_step = train(batches, 1.0, **setup)
    losses, state, packed_step = train(batches, 0.5, **setup)
    # Less work, and no branch: the packed step is a program of its own (the CPU step's one conditional, the
    # non-finite skip, is in both).
    assert lm_train.step_flops(packed_step) < 0.8 * lm_train.step_flops(padded_step)
    assert packed_step.as_text().count(" conditional(") == padded_step.as_text().count(" conditional(") == 1
    assert padded_losses[0] != padded_losses[-1]  # The steps really train.
    np.testing.assert_allclose(losses, padded_losses, rtol=1e-5, atol=1e-6)
    for ours, expected in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(padded_state["params"])):
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_batches_that_fit_run_packed_and_the_others_padded():
    """Each batch goes to the step for it (the host decides): packed, padded, packed, on one state."""
    batches = [short_batch(0), model_steps.text_batch(1), short_batch(2)]  # The middle one: 4-16 real tokens of 16.
    assert [packing.fits(batch["attention_mask"], 0.5) for batch in batches] == [True, False, True]
    padded, _, padded_step = train(batches, 1.0)
    mixed, _, first_step = train(batches, 0.5)
    assert lm_train.step_flops(first_step) < 0.8 * lm_train.step_flops(padded_step)  # The first batch ran packed.
    np.testing.assert_allclose(mixed, padded, rtol=1e-5, atol=1e-6)


def test_evaluation_and_multi_device_steps_stay_padded():
    config = bert.BertConfig(vocab_size=100, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=1,
                             max_position_embeddings=16, unpad_fraction=0.5)
    batch = short_batch(0, 8)
    ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
    graph, state = nnx.split(bert.BertEncoder(config, rngs=nnx.Rngs(0)))

    def jaxpr(deterministic, packed):
        def run(state, ids, mask):
            rngs = None if deterministic else nnx.Rngs(dropout=0)
            return nnx.merge(graph, state)(ids, mask, deterministic=deterministic, rngs=rngs)

        with packing.packed_layers(packed):
            return str(jax.make_jaxpr(run)(state, ids, mask))

    assert jaxpr(True, True) == jaxpr(True, False)  # Evaluation, prediction, serving: as they were.
    assert jaxpr(False, True) != jaxpr(False, False)  # Training packs only in the step built for it.
    # Which step a batch takes (lm/train.py): packed on one CPU device; padded over 8 devices, when only the head
    # trains (the backbone runs in eval mode), with the fraction at 1, and for batches without a mask (images).
    trainer_config = model_steps.bert_config(unpad_fraction=0.5)
    one, eight = (sharding.create_mesh(trainer_config.mesh, jax.devices()[:n]) for n in (1, 8))
    assert packing.packs(trainer_config, one, batch) and not packing.packs(trainer_config, eight, batch)
    assert not packing.packs(trainer_config, one, {"image": np.zeros((8, 4, 4, 3))})
    trainer_config.trainable = "head"
    assert not packing.packs(trainer_config, one, batch)
    trainer_config.trainable, trainer_config.model.unpad_fraction = "all", 1.0
    assert not packing.packs(trainer_config, one, batch)


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_a_fraction_outside_zero_to_one_is_a_clear_error_at_start_up(fraction):
    config = model_steps.bert_config(unpad_fraction=fraction)
    with pytest.raises(ValueError, match=r"config.model.unpad_fraction=.* must be in \(0, 1\]"):
        config_checks.resolved_copy(config)  # Before any data is read or step compiled.
    with pytest.raises(ValueError, match=r"config.model.unpad_fraction=.* must be in \(0, 1\]"):
        bert.BertConfig(unpad_fraction=fraction)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_unpadded_training_with_dropout_trains(remat):
    """Dropout draws its keys on the packed rows (and under remat): the step compiles, runs packed, and its losses
    stay near the padded step's (other dropout bits, so not equal)."""
    batches = [short_batch(seed) for seed in range(4)]
    assert all_fit(batches, 0.5)
    losses = {}
    for fraction in (1.0, 0.5):
        config = model_steps.bert_config(dropout_rate=0.1, attention_dropout_rate=0.1, remat=remat,
                                         unpad_fraction=fraction)
        config.mesh.update(data=1)
        losses[fraction] = model_steps.train_losses(model_steps.experiment_for(config, jax.devices()[:1]), batches)[0]
    assert np.all(np.isfinite(losses[0.5])) and not np.array_equal(losses[0.5], losses[1.0])
    np.testing.assert_allclose(losses[0.5], losses[1.0], rtol=0.05)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_the_packed_layers_draw_every_dropout_the_padded_ones_draw(remat):
    """The test above cannot tell packed layers that drop out from ones that do not (the embeddings' dropout,
    before the layers, already makes the losses differ): count the random draws."""
    config = bert.BertConfig(vocab_size=100, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=2,
                             max_position_embeddings=16, unpad_fraction=0.5, remat=remat)
    graph, state = nnx.split(bert.BertEncoder(config, rngs=nnx.Rngs(0)))
    ids = jnp.ones((2, 16), jnp.int32)

    def draws(packed):
        with packing.packed_layers(packed):
            return _draws(jax.make_jaxpr(lambda state: nnx.merge(graph, state)(
                ids, ids, deterministic=False, rngs=nnx.Rngs(dropout=0)))(state).jaxpr)

    # The embeddings, then per layer: attention probabilities, attention output, MLP output.
    assert draws(True) == draws(False) == 1 + 3 * config.num_layers


def _draws(jaxpr) -> int:
    """threefry2x32 equations in `jaxpr` and the jaxprs nested in it (remat, pjit...), each counted where used."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "threefry2x32"
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += _draws(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += _draws(sub)
    return count


def test_a_checkpoints_model_section_without_the_key_still_builds():
    """A workdir trained before unpad_fraction existed saved a model section without it: predict and serve build
    that model from it (lm/serving/trained.py), with unpadding off."""
    from configs import common

    model = common.bert_model_config("tiny", num_classes=2)
    del model["unpad_fraction"]
    assert "unpad_fraction" not in model
    assert bert.bert_config(model).unpad_fraction == 1.0
    assert isinstance(bert.build(model, nnx.Rngs(0)), bert.BertClassifier)


def trainer_run(tmp_path, vocab, monkeypatch, name: str, stop_after: int | None = None):
    """lm.run on one CPU device, unpad_fraction 0.5, 8 steps over 24-token batches of 7-15-token sentences with one
    in eight doubled: some batches fit, some do not."""
    from input_pipeline.text_classification import TextClassificationData
    from lm import experiment
    from tests import text_data
    from tests.test_bucketing import make_config, mixed_rows
    from tests.test_train import _StopAfter

    build = experiment.build
    monkeypatch.setattr(experiment, "build", lambda config: build(config, jax.devices()[:1]))
    csv_path = text_data.write_csv(tmp_path / "reviews.csv", mixed_rows(200))
    config = make_config(vocab, csv_path, num_train_steps=8, checkpoint_every=4, eval_every=100,
                         **{"data.bucket_lengths": (), "model.unpad_fraction": 0.5})
    if stop_after is not None:
        original = TextClassificationData.train_iterator
        monkeypatch.setattr(TextClassificationData, "train_iterator",
                            lambda self, start_step=0: _StopAfter(original(self, start_step), stop_after))
    try:
        lm.run(config, str(tmp_path / name), "train")
    finally:
        monkeypatch.undo()


def test_the_trainer_packs_the_batches_that_fit_and_pads_the_others(tmp_path, small_vocab, caplog, monkeypatch):
    """One step compiled (and logged) for the batches whose real tokens fit, packed, one for the others."""
    with caplog.at_level("INFO", logger="lm.train"):
        trainer_run(tmp_path, small_vocab, monkeypatch, "run")
    compiles = [r.getMessage() for r in caplog.records if "compiled the train step" in r.getMessage()]
    assert len(compiles) == 2 and sum(", packed" in message for message in compiles) == 1, compiles


@pytest.mark.slow
def test_a_run_that_packs_resumes_exactly(tmp_path, small_vocab, monkeypatch, caplog):
    """Stopped at step 5, resumed from step 4: the run ends where a straight run ends, bit for bit (the resumed
    part runs packed steps too)."""
    from tests.test_train import _final_params

    trainer_run(tmp_path, small_vocab, monkeypatch, "straight")
    with pytest.raises(KeyboardInterrupt):
        trainer_run(tmp_path, small_vocab, monkeypatch, "stopped", stop_after=5)
    caplog.clear()
    with caplog.at_level("INFO", logger="lm.train"):
        trainer_run(tmp_path, small_vocab, monkeypatch, "stopped")
    assert any(", packed" in r.getMessage() for r in caplog.records if "compiled the train step" in r.getMessage())
    straight, straight_step = _final_params(tmp_path / "straight")
    resumed, resumed_step = _final_params(tmp_path / "stopped")
    assert straight_step == resumed_step == 8
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
