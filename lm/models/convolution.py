"""Convolution and BatchNorm layers for the CNNs (ResNet, VGG), shaped for XLA:CPU speed.

`Conv` is `nnx.Conv` (same parameters, same results) for square kernels with symmetric padding, with
two changes to the arithmetic that XLA:CPU runs:
- a 1x1 convolution is a matrix product over batch x height x width (after striding);
- with `weight_grad="matmul"` the kernel gradient is computed as matrix products instead of XLA's
  backward-filter convolution, which XLA:CPU runs several times slower than a forward convolution of
  the same FLOPs: k*k products of the [out, N*H*W] output gradient with the shifted [N*H*W, in] input,
  or, for few input channels (the stem), one product with the image patches. The input gradient stays
  XLA's transposed convolution.
`weight_grad="auto"` picks "matmul" on the CPU backend and "xla" (XLA's own convolution gradients)
elsewhere: GPUs and TPUs run backward-filter convolutions well. `bench/README.md` measures it.

`BatchNorm` is `nnx.BatchNorm` (same variables, statistics and running averages) that normalises as
`x * a + b` with `a = scale / sqrt(var + eps)` and `b = bias - mean * a`: one multiply-add per element.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

WEIGHT_GRADS = ("auto", "matmul", "xla")
# Below this many input channels the k*k products are too thin; one product with the patches is faster.
_PATCHES_BELOW_CHANNELS = 16


def resolve_weight_grad(weight_grad: str) -> str:
    if weight_grad not in WEIGHT_GRADS:
        raise ValueError(f"conv_weight_grad={weight_grad!r} is not known; choose one of {WEIGHT_GRADS}.")
    if weight_grad == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return weight_grad


def _forward(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    """NHWC x HWIO -> NHWC convolution with symmetric zero padding; a 1x1 one as a matrix product."""
    if w.shape[0] == 1 and pad == 0:
        x = x[:, ::stride, ::stride, :] if stride > 1 else x
        n, h, wd, c = x.shape
        return jnp.dot(x.reshape(-1, c), w.reshape(c, -1)).reshape(n, h, wd, -1)
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _kernel_grad(x: jax.Array, g: jax.Array, kernel_size: int, stride: int, pad: int) -> jax.Array:
    """d(loss)/d(kernel) [k, k, in, out] of `_forward`, from its input x and output gradient g, by matmuls."""
    k, cin, cout = kernel_size, x.shape[-1], g.shape[-1]
    n, ho, wo = g.shape[:3]
    g_t = g.reshape(-1, cout).T  # [out, N*Ho*Wo]: one transpose, then every product has canonical operands.
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    if k > 1 and cin < _PATCHES_BELOW_CHANNELS:
        patches = jax.lax.conv_general_dilated_patches(  # [N, Ho, Wo, in*k*k], input-channel major
            xp, (k, k), (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        dw = jnp.dot(g_t, patches.reshape(-1, cin * k * k), preferred_element_type=jnp.float32)
        return dw.reshape(cout, cin, k, k).transpose(2, 3, 1, 0)
    rows = []
    for i in range(k):
        for j in range(k):
            limit = (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, cin)
            shifted = jax.lax.slice(xp, (0, i, j, 0), limit, (1, stride, stride, 1))
            rows.append(jnp.dot(g_t, shifted.reshape(-1, cin), preferred_element_type=jnp.float32).T)
    return jnp.stack(rows).reshape(k, k, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_matmul_grad(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    """`_forward` whose kernel gradient is computed by `_kernel_grad` (matrix products)."""
    return _forward(x, w, stride, pad)


def _conv_fwd(x, w, stride, pad):
    return _forward(x, w, stride, pad), (x, w)


def _conv_bwd(stride, pad, residuals, g):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda x: _forward(x, w, stride, pad), x)
    (dx,) = input_vjp(g)
    return dx, _kernel_grad(x, g, w.shape[0], stride, pad).astype(w.dtype)


conv_matmul_grad.defvjp(_conv_fwd, _conv_bwd)


class Conv(nnx.Conv):
    """`nnx.Conv` for square kernels and symmetric padding `kernel_size // 2`, with `weight_grad` above."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, strides: int = 1,
                 weight_grad: str = "auto", **kwargs):
        self.pad = kernel_size // 2
        self.weight_grad = resolve_weight_grad(weight_grad)
        super().__init__(in_features, out_features, kernel_size=(kernel_size, kernel_size),
                         strides=(strides, strides), padding=((self.pad, self.pad), (self.pad, self.pad)), **kwargs)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        dtype = self.dtype or jnp.result_type(inputs, self.kernel[...])
        x, w = inputs.astype(dtype), self.kernel[...].astype(dtype)
        stride = self.strides[0]
        if self.weight_grad == "matmul":
            y = conv_matmul_grad(x, w, stride, self.pad)
        else:
            y = _forward(x, w, stride, self.pad)
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
