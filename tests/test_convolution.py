"""lm.models.convolution: the CNN layers give nnx.Conv's and nnx.BatchNorm's results and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm.models import convolution


def _pair(in_features, out_features, kernel_size, strides):
    """Our Conv and an nnx.Conv with the same kernel and bias."""
    pad = kernel_size // 2
    ours = convolution.Conv(in_features, out_features, kernel_size, strides=strides, use_bias=True,
                            rngs=nnx.Rngs(0))
    reference = nnx.Conv(in_features, out_features, (kernel_size, kernel_size), strides=(strides, strides),
                         padding=((pad, pad), (pad, pad)), use_bias=True, rngs=nnx.Rngs(1))
    reference.kernel[...] = ours.kernel[...]
    reference.bias[...] = jax.random.normal(jax.random.key(2), (out_features,))
    ours.bias[...] = reference.bias[...]
    return ours, reference


@pytest.mark.parametrize(
    "in_features,kernel_size,strides,size",
    [(16, 1, 1, 8), (16, 1, 2, 9), (16, 3, 1, 8), (24, 3, 2, 9), (3, 3, 1, 8), (3, 7, 2, 15)],
)
def test_conv_matches_nnx_conv_and_its_gradients(in_features, kernel_size, strides, size):
    ours, reference = _pair(in_features, 20, kernel_size, strides)
    x = jax.random.normal(jax.random.key(3), (4, size, size, in_features))
    target = jax.random.normal(jax.random.key(4), reference(x).shape)

    def loss_and_grads(model):
        def loss(model, x):
            return jnp.sum(model(x) * target)

        return jax.value_and_grad(loss, argnums=(0, 1))(model, x)

    (loss, (model_grads, x_grad)) = nnx.jit(loss_and_grads)(ours)
    (ref_loss, (ref_model_grads, ref_x_grad)) = nnx.jit(loss_and_grads)(reference)
    np.testing.assert_allclose(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(x_grad, ref_x_grad, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model_grads.kernel[...], ref_model_grads.kernel[...], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(model_grads.bias[...], ref_model_grads.bias[...], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_running_average", [False, True])
def test_batch_norm_matches_nnx_batch_norm(use_running_average):
    ours = convolution.BatchNorm(12, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    reference = nnx.BatchNorm(12, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    for model in (ours, reference):
        model.scale[...] = jnp.linspace(0.5, 1.5, 12)
        model.bias[...] = jnp.linspace(-1.0, 1.0, 12)
        model.mean[...] = jnp.linspace(-0.2, 0.2, 12)
        model.var[...] = jnp.linspace(0.5, 2.0, 12)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(5), (8, 5, 5, 12))

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x, use_running_average=use_running_average)))

    value, (grads, x_grad) = nnx.value_and_grad(loss, argnums=(0, 1))(ours, x)
    ref_value, (ref_grads, ref_x_grad) = nnx.value_and_grad(loss, argnums=(0, 1))(reference, x)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(x_grad, ref_x_grad, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads.scale[...], ref_grads.scale[...], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads.bias[...], ref_grads.bias[...], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.mean[...], reference.mean[...], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.var[...], reference.var[...], rtol=1e-5, atol=1e-6)

