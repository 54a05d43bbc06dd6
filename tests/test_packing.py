"""Unpadding (config.model.unpad_fraction, lm/models/packing.py): training on the real tokens only computes what
training on every padded position computes, falls back to the padded layers when a batch does not fit, and
leaves evaluation and multi-device steps as they were."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm import config_checks, sharding
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
    found, fits = jax.jit(packing.token_packing, static_argnums=1)(jnp.asarray(mask), 0.45)
    index, slot = np.asarray(found.packed_index), np.asarray(found.slot_of_row)
    assert index.shape == (64,) and bool(fits) == (mask.sum() <= 64)  # 0.45 x 128 rounded up to a multiple of 8.
    real = np.flatnonzero(mask.reshape(-1))
    assert list(index[:len(real)]) == list(real) and len(set(index.tolist())) == len(index)
    assert [slot[position] for position in index] == list(range(len(index)))
    assert sorted(set(range(128)) - set(index.tolist())) == list(np.flatnonzero(slot == len(index)))
    assert not bool(packing.token_packing(jnp.ones((8, 16), jnp.int32), 0.9)[1])
    assert packing.capacity(128, 1.0) == 128 and packing.capacity(100, 0.99) == 100


def test_pack_and_unpack_are_a_gather_and_a_scatter_with_their_gradients():
    mask = jnp.asarray(np.arange(4)[None] < np.asarray([3, 1, 1])[:, None])  # 5 real tokens of 12: 8 rows.
    index, _ = packing.token_packing(mask, 0.5)
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
    losses, state, compiled = model_steps.train_losses(model_steps.experiment_for(config, devices), batches)
    return losses, state, compiled.as_text()


def all_fit(batches, fraction) -> bool:
    return all(bool(packing.token_packing(jnp.asarray(b["attention_mask"]), fraction)[1]) for b in batches)


@pytest.mark.parametrize("setup", [{}, {"remat": "full", "grad_accum_steps": 2}])
def test_unpadded_training_equals_padded_training(setup):
    batches = [short_batch(seed) for seed in range(3)]
    micro = [{k: v[i::2] for k, v in b.items()} for b in batches for i in (0, 1)]  # lm/accumulation.py's split.
    assert all_fit(micro if setup else batches, 0.5)  # The packed branch runs, not the fallback.
    padded_losses, padded_state, padded_hlo = train(batches, 1.0, **setup)
    losses, state, hlo = train(batches, 0.5, **setup)
    assert hlo.count(" conditional(") > padded_hlo.count(" conditional(")  # The packed-or-padded branch.
    assert padded_losses[0] != padded_losses[-1]  # The steps really train.
    np.testing.assert_allclose(losses, padded_losses, rtol=1e-5, atol=1e-6)
    for ours, expected in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(padded_state["params"])):
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_batches_that_do_not_fit_train_padded():
    batches = [model_steps.text_batch(seed) for seed in range(2)]  # 4-16 real tokens of 16.
    assert not all_fit(batches, 0.25)
    padded, _, _ = train(batches, 1.0)
    fallback, _, _ = train(batches, 0.25)
    np.testing.assert_allclose(fallback, padded, rtol=1e-6)


def test_evaluation_and_multi_device_steps_stay_padded():
    config = bert.BertConfig(vocab_size=100, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=1,
                             max_position_embeddings=16)
    batch = short_batch(0, 8)
    ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
    graphs = [nnx.split(bert.BertEncoder(dataclasses.replace(config, unpad_fraction=f), rngs=nnx.Rngs(0)))
              for f in (1.0, 0.5)]

    def jaxpr(graph, deterministic):
        def run(state, ids, mask):
            rngs = None if deterministic else nnx.Rngs(dropout=0)
            return nnx.merge(graph[0], state)(ids, mask, deterministic=deterministic, rngs=rngs)

        return str(jax.make_jaxpr(run)(graph[1], ids, mask))

    assert jaxpr(graphs[0], True) == jaxpr(graphs[1], True)  # Evaluation, prediction, serving: as they were.
    assert " cond[" in jaxpr(graphs[1], False) and " cond[" not in jaxpr(graphs[0], False)
    mesh = sharding.create_mesh(model_steps.bert_config().mesh, jax.devices()[:8])
    with jax.set_mesh(mesh):
        assert " cond[" not in jaxpr(graphs[1], False)  # The batch split over 8 devices: padded.


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_a_fraction_outside_zero_to_one_is_a_clear_error_at_start_up(fraction):
    config = model_steps.bert_config(unpad_fraction=fraction)
    with pytest.raises(ValueError, match=r"config.model.unpad_fraction=.* must be in \(0, 1\]"):
        config_checks.resolved_copy(config)  # Before any data is read or step compiled.
    with pytest.raises(ValueError, match=r"config.model.unpad_fraction=.* must be in \(0, 1\]"):
        bert.BertConfig(unpad_fraction=fraction)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_unpadded_training_with_dropout_trains(remat):
    """Dropout draws its keys inside the conditional's branches (and under remat): the step compiles, runs packed,
    and its losses stay near the padded step's (other dropout bits, so not equal)."""
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
def test_the_packed_branch_draws_every_dropout_the_padded_one_draws(remat):
    """The test above cannot tell a packed branch that drops out from one that does not (the embeddings' dropout,
    outside the conditional, already makes the losses differ): count the random draws in each branch."""
    config = bert.BertConfig(vocab_size=100, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=2,
                             max_position_embeddings=16, unpad_fraction=0.5, remat=remat)
    graph, state = nnx.split(bert.BertEncoder(config, rngs=nnx.Rngs(0)))
    ids = jnp.ones((2, 16), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda state: nnx.merge(graph, state)(ids, ids, deterministic=False,
                                                                   rngs=nnx.Rngs(dropout=0)))(state)
    (conditional,) = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "cond"]
    padded, packed = (_draws(branch.jaxpr) for branch in conditional.params["branches"])
    assert packed == padded == 3 * config.num_layers  # Attention probabilities, attention output, MLP output.


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


def test_nothing_to_leave_out_builds_no_conditional():
    """A fraction whose count is every position (0.99 of 16 positions: 16) leaves the step as it was."""
    config = bert.BertConfig(vocab_size=100, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=1,
                             max_position_embeddings=16, unpad_fraction=0.99)
    encoder = bert.BertEncoder(config, rngs=nnx.Rngs(0))
    graph, state = nnx.split(encoder)
    ids = jnp.ones((1, 16), jnp.int32)
    jaxpr = str(jax.make_jaxpr(lambda state: nnx.merge(graph, state)(ids, ids, deterministic=False,
                                                                        rngs=nnx.Rngs(dropout=0)))(state))
    assert " cond[" not in jaxpr
    assert packing.saves(16, 0.5) and not packing.saves(16, 0.99)


def test_a_checkpoints_model_section_without_the_key_still_builds():
    """A workdir trained before unpad_fraction existed saved a model section without it: predict and serve build
    that model from it (lm/serving/trained.py), with unpadding off."""
    from configs import common

    model = common.bert_model_config("tiny", num_classes=2)
    del model["unpad_fraction"]
    assert "unpad_fraction" not in model
    assert bert.bert_config(model).unpad_fraction == 1.0
    assert isinstance(bert.build(model, nnx.Rngs(0)), bert.BertClassifier)
