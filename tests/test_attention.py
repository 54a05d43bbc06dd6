"""Attention through `jax.nn.dot_product_attention` (lm.models.layers.attention): the same results as the
explicit softmax with the padding mask, the cuDNN formulation of the padding, and the choice per platform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm.models import create_model, layers
from tests import model_steps


def _reference(q, k, v, key_mask):
    """Softmax(q k^T / sqrt(d) masked) v, written out in float32."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = jnp.where(key_mask[:, None, None, :] > 0, logits, -1e30)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def _qkv_and_mask():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 4, 12, 2, 32))
    key_mask = (jnp.arange(12)[None, :] < jnp.array([12, 7, 3, 9])[:, None]).astype(jnp.int32)
    return q, k, v, key_mask


def _attention(q, k, v, key_mask):
    return layers.attention(q, k, v, key_mask, dropout=layers.Dropout(0.1), deterministic=True, rngs=None)


def test_fused_attention_matches_the_explicit_softmax_with_padding():
    q, k, v, key_mask = _qkv_and_mask()
    expected = _reference(q, k, v, key_mask)
    np.testing.assert_allclose(_attention(q, k, v, key_mask), expected, atol=1e-5, rtol=1e-5)
    explicit = layers.attention_with_dropout(q, k, v, key_mask[:, None, None, :] > 0, layers.Dropout(0.0), None)
    np.testing.assert_allclose(explicit, expected, atol=1e-5, rtol=1e-5)


def test_cudnn_path_gives_padding_as_key_lengths(monkeypatch):
    """On a GPU the padding goes to cuDNN as key lengths; run that call on XLA here, it must match the mask."""
    q, k, v, key_mask = _qkv_and_mask()
    calls = []
    original = jax.nn.dot_product_attention

    def on_xla(*args, implementation=None, **kwargs):
        calls.append((implementation, kwargs))
        return original(*args, implementation="xla", **kwargs)

    monkeypatch.setattr(layers, "attention_implementation", lambda *a: "cudnn")
    monkeypatch.setattr(jax.nn, "dot_product_attention", on_xla)
    out = _attention(q, k, v, key_mask)
    assert calls[0][0] == "cudnn" and "mask" not in calls[0][1]
    np.testing.assert_array_equal(calls[0][1]["key_value_seq_lengths"], [12, 7, 3, 9])
    np.testing.assert_allclose(out, _reference(q, k, v, key_mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("platform, dtype, head_dim, expected", [
    ("gpu", jnp.bfloat16, 64, "cudnn"), ("gpu", jnp.float16, 128, "cudnn"), ("gpu", jnp.float32, 64, "xla"),
    ("gpu", jnp.bfloat16, 160, "xla"), ("gpu", jnp.bfloat16, 36, "xla"), ("cpu", jnp.bfloat16, 64, "xla"),
    ("tpu", jnp.bfloat16, 64, "xla"),
])
def test_implementation_per_platform(platform, dtype, head_dim, expected):
    assert layers.attention_implementation(platform, dtype, head_dim) == expected


def test_bert_with_fused_attention_matches_the_explicit_path(monkeypatch):
    """A whole BERT (padded batch): hidden states at the real tokens and the pooled output agree within 1e-5."""
    config = model_steps.bert_config(dropout_rate=0.0, attention_dropout_rate=0.0).model
    model = create_model(config, rngs=nnx.Rngs(0))
    batch = model_steps.text_batch(0, batch_size=4)
    fused_hidden, fused_pooled = model.encoder(batch["input_ids"], batch["attention_mask"])

    def explicit(q, k, v, key_mask, **_):
        return layers.attention_with_dropout(q, k, v, key_mask[:, None, None, :] > 0, layers.Dropout(0.0), None)

    monkeypatch.setattr(layers, "attention", explicit)
    hidden, pooled = model.encoder(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"][..., None] > 0
    np.testing.assert_allclose(jnp.where(real, fused_hidden, 0), jnp.where(real, hidden, 0), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(fused_pooled, pooled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_kind", ["padding", "none", "true"])
def test_attention_gradient_matches_the_differentiated_einsums_with_dropout_and_padding(mask_kind):
    """`attention_with_dropout` takes its own gradient (`_softmax_attention`); it must equal what autodiff of
    the written-out softmax gives with the same dropout mask, in float32 and bfloat16: with padding (one
    example with every key masked), without a mask, and with the mask `True`."""
    q, k, v, _ = _qkv_and_mask()
    key_mask = jnp.arange(12)[None, :] < jnp.array([12, 7, 0, 9])[:, None]
    mask = {"padding": key_mask[:, None, None, :], "none": None, "true": True}[mask_kind]
    cotangent = jax.random.normal(jax.random.key(1), q.shape)
    dropout = layers.Dropout(0.3)
    keep = dropout.keep_mask((4, 2, 12, 12), jax.random.key(7))

    def reference(q, k, v):
        logits = jnp.einsum("bqhd,bkhd->bhqk", q / np.sqrt(q.shape[-1]), k, preferred_element_type=jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jnp.where(keep, jax.nn.softmax(logits, axis=-1) / 0.7, 0.0).astype(v.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

    def ours(q, k, v):
        return layers.attention_with_dropout(q, k, v, mask, dropout, jax.random.key(7))

    for dtype, tolerance in ((jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)):
        args = [x.astype(dtype) for x in (q, k, v)]
        expected, expected_vjp = jax.vjp(reference, *args)
        out, our_vjp = jax.vjp(ours, *args)
        pairs = [(out, expected), *zip(our_vjp(cotangent.astype(dtype)), expected_vjp(cotangent.astype(dtype)))]
        for got, want in pairs:
            assert got.dtype == dtype
            np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tolerance,
                                       rtol=tolerance)


def test_rows_added_to_each_example_take_the_summed_gradient():
    x = jax.random.normal(jax.random.key(0), (3, 5, 4))
    rows = jax.random.normal(jax.random.key(1), (5, 4))
    cotangent = jax.random.normal(jax.random.key(2), (3, 5, 4))
    out, vjp = jax.vjp(layers.add_to_each, x, rows)
    np.testing.assert_allclose(out, x + rows[None])
    d_x, d_rows = vjp(cotangent)
    np.testing.assert_allclose(d_x, cotangent)
    np.testing.assert_allclose(d_rows, cotangent.sum(axis=0), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"x must be \[batch, \*\(5, 4\)\]"):
        layers.add_to_each(rows, rows)  # Not a batch: the gradient would sum over the wrong axis.
