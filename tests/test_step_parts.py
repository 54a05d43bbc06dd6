"""bench/step_parts.py's prospective unpadded encoder computes what `BertEncoder` computes on the real tokens."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import step_parts
from lm.models import bert


def padded_batch(lengths, length):
    rng = np.random.default_rng(0)
    mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return jnp.asarray(rng.integers(5, 90, mask.shape) * mask, jnp.int32), mask


def test_packing_indices_put_every_real_token_first_in_a_bucketed_count():
    _, mask = padded_batch([5, 2, 8, 1], 8)  # 16 real tokens of 32: 4 per example, bucket 4.
    packed_index, slot_of_row = (np.asarray(a) for a in step_parts.packing_indices(mask, (2, 4, 8)))
    real = np.flatnonzero(mask.reshape(-1))
    assert len(packed_index) == 4 * 4 and list(packed_index[:len(real)]) == list(real)
    assert len(set(packed_index.tolist())) == len(packed_index)
    assert all(slot_of_row[position] == slot for slot, position in enumerate(packed_index))
    assert sorted(set(range(32)) - set(packed_index.tolist())) == list(np.flatnonzero(slot_of_row == 16))
    _, mask = padded_batch([5, 2, 8, 2], 8)  # 17 real tokens: 5 per example, bucket 8 (all positions).
    assert len(step_parts.packing_indices(mask, (2, 4, 8))[0]) == 32


def test_pack_and_unpack_match_jax_gather_and_scatter_with_their_gradients():
    _, mask = padded_batch([3, 1, 1], 4)  # 5 real tokens of 12 positions: 2 per example, 6 packed rows.
    indices = step_parts.packing_indices(mask, (2, 4))
    packed_index = indices[0]
    assert len(packed_index) == 6
    rows, packed = jax.random.normal(jax.random.key(0), (12, 3)), jax.random.normal(jax.random.key(1), (6, 3))
    weights = jax.random.normal(jax.random.key(2), (12, 3))
    pack = jax.value_and_grad(lambda r: jnp.sum(step_parts.pack_rows(r, *indices) * weights[:6]))(rows)
    reference = jax.value_and_grad(lambda r: jnp.sum(r[packed_index] * weights[:6]))(rows)
    np.testing.assert_allclose(pack[0], reference[0], rtol=1e-6)
    np.testing.assert_array_equal(pack[1], reference[1])
    unpack = jax.value_and_grad(lambda p: jnp.sum(step_parts.unpack_rows(p, *indices) * weights))(packed)
    reference = jax.value_and_grad(lambda p: jnp.sum(jnp.zeros((12, 3)).at[packed_index].set(p) * weights))(packed)
    np.testing.assert_allclose(unpack[0], reference[0], rtol=1e-6)
    np.testing.assert_array_equal(unpack[1], reference[1])


def test_packed_encoder_equals_the_encoder_on_real_tokens():
    config = bert.BertConfig(vocab_size=100, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=2,
                             max_position_embeddings=16)
    encoder = bert.BertEncoder(config, rngs=nnx.Rngs(0))
    ids, mask = padded_batch([7, 3, 12, 1], 12)
    indices = step_parts.packing_indices(mask, (4, 8, 12))
    assert len(indices[0]) == 4 * 8  # 23 real tokens of 48 positions.
    mask = jnp.asarray(mask)

    def loss(encoder, packed):
        if packed:
            hidden, pooled = step_parts.packed_encoder(encoder, ids, mask, indices, deterministic=True, rngs=None)
        else:
            hidden, pooled = encoder(ids, mask, deterministic=True)
        return jnp.sum(pooled ** 2) + jnp.sum((hidden * mask[..., None]) ** 2), (hidden, pooled)

    (_, (hidden, pooled)), gradient = nnx.value_and_grad(loss, has_aux=True)(encoder, False)
    (_, (packed_hidden, packed_pooled)), packed_gradient = nnx.value_and_grad(loss, has_aux=True)(encoder, True)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(packed_hidden)[real], np.asarray(hidden)[real], rtol=1e-5, atol=1e-5)
    left_out = np.asarray(indices[1]).reshape(real.shape) == len(indices[0])
    assert left_out.sum() == 48 - 32 and not np.asarray(packed_hidden)[left_out].any()  # Back as zeros.
    np.testing.assert_allclose(packed_pooled, pooled, rtol=1e-5, atol=1e-5)
    compared = 0
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(nnx.state(gradient)),
                                 jax.tree_util.tree_leaves_with_path(nnx.state(packed_gradient))):
        if "['key']['bias']" in jax.tree_util.keystr(path):  # Rounding noise: softmax ignores a constant shift.
            continue
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(a))), err_msg=str(path))
        compared += 1
    assert compared > 20
