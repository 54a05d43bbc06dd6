"""Convolution and BatchNorm layers for the CNNs (ResNet, VGG), shaped for XLA:CPU speed.

`Conv` is `nnx.Conv` (same parameters, same results) for square kernels with symmetric padding, where a
1x1 convolution is a matrix product over batch x height x width (after striding). Other convolutions and
all the gradients are XLA's own; on CPU, `lm/compiler.py` keeps them on XLA's Eigen kernels, which are
faster there than YNNPACK's.

`BatchNorm` is `nnx.BatchNorm` (same variables, statistics and running averages) that normalises as
`x * a + b` with `a = scale / sqrt(var + eps)` and `b = bias - mean * a`: one multiply-add per element.
"""

import jax
import jax.numpy as jnp
from flax import nnx


def _forward(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    """NHWC x HWIO -> NHWC convolution with symmetric zero padding; a 1x1 one as a matrix product."""
    if w.shape[0] == 1 and pad == 0:
        x = x[:, ::stride, ::stride, :] if stride > 1 else x
        n, h, wd, c = x.shape
        return jnp.dot(x.reshape(-1, c), w.reshape(c, -1)).reshape(n, h, wd, -1)
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


class Conv(nnx.Conv):
    """`nnx.Conv` for square kernels and symmetric padding `kernel_size // 2`."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, strides: int = 1, **kwargs):
        self.pad = kernel_size // 2
        super().__init__(in_features, out_features, kernel_size=(kernel_size, kernel_size),
                         strides=(strides, strides), padding=((self.pad, self.pad), (self.pad, self.pad)), **kwargs)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        dtype = self.dtype or jnp.result_type(inputs, self.kernel[...])
        x, w = inputs.astype(dtype), self.kernel[...].astype(dtype)
        y = _forward(x, w, self.strides[0], self.pad)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` over the last axis, normalising as one multiply-add (see the module docstring)."""

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = self.use_running_average if use_running_average is None else use_running_average
        if use_running_average is None:
            raise ValueError("BatchNorm needs `use_running_average`, in the constructor or the call.")
        dtype = self.dtype or x.dtype
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            x32 = x.astype(jnp.float32)
            mean = jnp.mean(x32, axes)
            var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
            momentum = self.momentum
            self.mean[...] = jax.lax.stop_gradient(momentum * self.mean[...] + (1 - momentum) * mean)
            self.var[...] = jax.lax.stop_gradient(momentum * self.var[...] + (1 - momentum) * var)
        a = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
        b = self.bias[...] - mean * a
        return x.astype(dtype) * a.astype(dtype) + b.astype(dtype)
