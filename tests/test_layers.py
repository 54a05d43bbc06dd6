"""The shared layers: the dropout mask that the transformer models train with, and their Linear layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lm.models import layers
from tests import model_steps


@pytest.mark.parametrize("keep_prob", [0.9, 0.5])
def test_keep_mask_rate_and_independence(keep_prob):
    shape = (64, 8, 33, 67)  # The last axis is not a multiple of the four uniforms per block.
    mask = np.asarray(jax.jit(lambda k: layers.dropout_keep_mask(k, shape, keep_prob))(jax.random.key(0)))
    assert mask.shape == shape and mask.dtype == bool
    assert abs(mask.mean() - keep_prob) < 0.005
    # Neighbours along every axis are independent: P(both kept) = keep_prob ** 2.
    for axis in range(len(shape)):
        both = np.logical_and(mask, np.roll(mask, 1, axis=axis)).mean()
        assert abs(both - keep_prob**2) < 0.005, axis
    other = np.asarray(layers.dropout_keep_mask(jax.random.key(1), shape, keep_prob))
    assert abs((mask == other).mean() - (keep_prob**2 + (1 - keep_prob) ** 2)) < 0.005


def test_keep_mask_is_the_same_on_any_mesh():
    shape = (16, 4, 32, 30)
    key = jax.random.fold_in(jax.random.key(3), 7)
    single = np.asarray(jax.jit(lambda k: layers.dropout_keep_mask(k, shape, 0.9))(key))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.jit(lambda k: layers.dropout_keep_mask(k, shape, 0.9), out_shardings=NamedSharding(mesh, P("data")))
    np.testing.assert_array_equal(single, np.asarray(sharded(key)))


def test_non_threefry_keys_fall_back_to_bernoulli():
    key = jax.random.key(0, impl="rbg")
    mask = np.asarray(layers.dropout_keep_mask(key, (256, 256), 0.8))
    assert abs(mask.mean() - 0.8) < 0.01


def test_dropout_scales_kept_values_and_gradients():
    x = jnp.linspace(1.0, 2.0, 8 * 40 * 24).reshape(8, 40, 24)
    dropout = layers.Dropout(0.1)

    def apply(x):
        return dropout(x, deterministic=False, rngs=nnx.Rngs(dropout=5))

    y = apply(x)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.9) < 0.02
    np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.9, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: apply(x).sum())(x), kept / 0.9, rtol=1e-6)
    np.testing.assert_array_equal(dropout(x, deterministic=True), x)
    np.testing.assert_array_equal(layers.Dropout(0.0)(x, deterministic=False, rngs=nnx.Rngs(0)), x)
    with pytest.raises(TypeError, match="rngs"):
        dropout(x, deterministic=False)


def test_dropout_broadcasts_its_mask_over_broadcast_dims():
    x = jnp.ones((4, 16, 32))
    y = np.asarray(layers.Dropout(0.5, broadcast_dims=(1,))(x, deterministic=False, rngs=nnx.Rngs(dropout=1)))
    assert (y == y[:, :1, :]).all()  # One mask row shared along axis 1.
    assert 0.3 < (y[:, 0, :] > 0).mean() < 0.7


def _feed_forward_gradient(linear_class):
    """The jitted gradient of a feed-forward block (two Linear layers around GELU) over a [batch, length, 16] input."""
    rngs = nnx.Rngs(0)
    inner, outer = linear_class(16, 64, rngs=rngs), linear_class(64, 16, rngs=rngs)

    def loss(inner, outer, x):
        return jnp.sum(outer(jax.nn.gelu(inner(x))) ** 2)

    x = jax.random.normal(jax.random.key(1), (4, 32, 16))
    return nnx.jit(nnx.grad(loss, argnums=(0, 1, 2))), (inner, outer, x)


def test_linear_matches_nnx_linear():
    ours, args = _feed_forward_gradient(layers.Linear)
    theirs, their_args = _feed_forward_gradient(nnx.Linear)
    for mine, other in zip(jax.tree.leaves(ours(*args)), jax.tree.leaves(theirs(*their_args)), strict=True):
        np.testing.assert_allclose(mine, other, rtol=1e-6, atol=1e-6)
    # Any number of leading axes, no bias, bfloat16 compute with float32 parameters: the same as nnx.Linear.
    for shape, dtype, use_bias in (((5,), jnp.float32, True), ((2, 3, 4, 5), jnp.float32, False),
                                   ((2, 7, 5), jnp.bfloat16, True)):
        x = jax.random.normal(jax.random.key(2), shape)
        mine = layers.Linear(5, 3, use_bias=use_bias, dtype=dtype, rngs=nnx.Rngs(3))
        other = nnx.Linear(5, 3, use_bias=use_bias, dtype=dtype, rngs=nnx.Rngs(3))
        assert mine(x).shape == (*shape[:-1], 3) and mine(x).dtype == dtype
        tolerance = 1e-2 if dtype == jnp.bfloat16 else 1e-6
        np.testing.assert_allclose(np.asarray(mine(x), np.float32), np.asarray(other(x), np.float32), rtol=tolerance,
                                   atol=tolerance)
    # The models' layers are built by layers.dense.
    assert isinstance(layers.dense(4, 2, ("embed", "mlp"), jnp.float32, nnx.Rngs(0)), layers.Linear)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the copies are XLA:CPU's")
def test_linear_gradient_needs_no_transposed_copies_on_cpu():
    def activation_copies(linear_class):  # Copies or transposes of a whole activation (4 x 32 rows of 16 or 64).
        step, args = _feed_forward_gradient(linear_class)
        return model_steps.copies_of_size(step.lower(*args).compile().as_text(), (4 * 32 * 16, 4 * 32 * 64))

    assert activation_copies(nnx.Linear)  # JAX's gradient of the 3-D product: XLA:CPU transposes ...
    assert not activation_copies(layers.Linear), activation_copies(layers.Linear)  # ... none for the 2-D one.
