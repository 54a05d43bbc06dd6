"""Small layer constructors shared by the model files: every parameter gets logical axis names."""

import functools

import jax
import jax.extend.random
import jax.numpy as jnp
from flax import nnx
from jax import lax

# BERT and ViT initialise with a truncated normal of stddev 0.02 (Devlin et al. 2019).
DEFAULT_INIT = nnx.initializers.truncated_normal(stddev=0.02)


class Linear(nnx.Linear):
    """`nnx.Linear` (same parameters and arguments) that multiplies a 2-D [rows, features] array.

    Inputs with more leading axes ([batch, length, features]) are flattened to one axis of rows before the product
    and reshaped back after it, so the kernel's gradient is one plain product over the rows (the same values up
    to float rounding). From the 3-D product JAX's gradient contracts two axes at once, and XLA:CPU copied whole
    activations into transposed layouts first (bench/README.md, `step_parts.py`: a MiniLM train step took ~10%
    longer). With `out_sharding` the product keeps the input's shape, as `nnx.Linear` does.
    """

    def __call__(self, inputs, out_sharding=None):
        if jnp.ndim(inputs) <= 2 or out_sharding is not None:
            return super().__call__(inputs, out_sharding)
        return over_rows(super().__call__, inputs)


def over_rows(product, x):
    """`product` (of a 2-D [rows, features] array, e.g. a matrix product) applied to x's leading axes flattened to
    rows, its result given x's leading axes back. `Linear` says why the products of our models take this form."""
    x = jnp.asarray(x)
    rows = product(x.reshape(-1, x.shape[-1]))
    return rows.reshape(*x.shape[:-1], rows.shape[-1])


def dense(in_features, out_features, names, dtype, rngs, *, use_bias=True, kernel_init=DEFAULT_INIT):
    return Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(kernel_init, names),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (names[-1],)),
        rngs=rngs,
    )


def embed(num_embeddings, features, names, dtype, rngs):
    return nnx.Embed(
        num_embeddings,
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        embedding_init=nnx.with_partitioning(DEFAULT_INIT, names),
        rngs=rngs,
    )


def layer_norm(features, epsilon, dtype, rngs):
    return nnx.LayerNorm(
        features,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs,
    )


@jax.custom_vjp
def add_to_each(x: jax.Array, rows: jax.Array) -> jax.Array:
    """x + rows for each example: x [batch, *rows.shape], of rows' dtype (position embeddings added to sequences).

    The gradient of `rows` (the sum of x's gradient over the batch) is taken as a product with a vector of ones:
    XLA:CPU's reduction over a leading axis takes many times as long (bench/README.md, `step_parts.py`).
    Reverse mode only, as every `jax.custom_vjp`: `jax.jvp` through it raises.
    """
    return _add_to_each_forward(x, rows)[0]


def _add_to_each_forward(x, rows):
    if x.shape[1:] != rows.shape or x.dtype != rows.dtype:
        raise ValueError(f"add_to_each adds rows {rows.shape} {rows.dtype} to each example of a batch, so x must "
                         f"be [batch, *{rows.shape}] of {rows.dtype}; got {x.shape} {x.dtype}.")
    return x + rows, None


def _add_to_each_backward(_, d_out):
    ones = jnp.ones((d_out.shape[0],), d_out.dtype)
    d_rows = jnp.tensordot(ones, d_out, axes=1, preferred_element_type=jnp.float32)
    return d_out, d_rows.astype(d_out.dtype)


add_to_each.defvjp(_add_to_each_forward, _add_to_each_backward)


def dropout_keep_mask(key: jax.Array, shape: tuple[int, ...], keep_prob: float) -> jax.Array:
    """A boolean mask of `shape`, True with probability `keep_prob` (rounded to a multiple of 2**-16).

    `jax.random.bernoulli` draws one threefry2x32 block (64 bits) per element; dropout needs far fewer
    bits, so here one block gives four 16-bit uniforms. On CPU this makes BERT-mini's train step ~15%
    faster (bench/README.md). The block counters follow the element layout of `shape`, so each shard
    of a sharded mask computes its own part and the mask is the same on any mesh. Keys of other PRNG
    implementations (e.g. rbg) fall back to `jax.random.bernoulli`.
    """
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return jax.random.bernoulli(key, keep_prob, shape)
    *lead, last = shape
    blocks_shape = (*lead, -(-last // 4))  # Each block: two 32-bit words = four 16-bit uniforms.
    counter, stride = jnp.zeros(blocks_shape, jnp.uint32), 1
    for axis in reversed(range(len(blocks_shape))):
        counter = counter + lax.broadcasted_iota(jnp.uint32, blocks_shape, axis) * jnp.uint32(stride)
        stride *= blocks_shape[axis]
    key_words = jax.random.key_data(key)
    bits = jax.extend.random.threefry2x32_p.bind(key_words[0], key_words[1], jnp.zeros_like(counter), counter)
    uniforms = lax.bitcast_convert_type(jnp.stack(bits, axis=-1), jnp.uint16).reshape(*lead, -1)[..., :last]
    return uniforms < jnp.uint16(min(round(keep_prob * 65536), 65535))


def _dropped(x, keep, keep_prob):
    """x with the dropout mask `keep` applied (kept values scaled by 1 / keep_prob); x itself if keep is None."""
    return x if keep is None else lax.select(keep, x / keep_prob, jnp.zeros_like(x))


class Dropout(nnx.Dropout):
    """`nnx.Dropout` (same arguments and call) whose mask comes from `dropout_keep_mask`."""

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic is None:
            raise ValueError("Dropout needs `deterministic`, in the constructor or the call.")
        if deterministic or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        return _dropped(inputs, self.keep_mask(inputs.shape, rngs), 1.0 - self.rate)

    def keep_mask(self, shape: tuple[int, ...], rngs=None) -> jax.Array:
        """The boolean mask the call applies to an input of `shape` (True: kept), from one key of `rngs`."""
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        elif isinstance(rngs, jax.Array):
            key = rngs
        else:
            raise TypeError(f"Dropout needs rngs (nnx.Rngs, an RngStream or a key) when training, got {rngs!r}.")
        broadcast = {axis % len(shape) for axis in self.broadcast_dims}
        mask_shape = tuple(1 if axis in broadcast else size for axis, size in enumerate(shape))
        return jnp.broadcast_to(dropout_keep_mask(key, mask_shape, 1.0 - self.rate), shape)


def attention_implementation(platform: str, dtype, head_dim: int) -> str:
    """The `jax.nn.dot_product_attention` implementation for a platform, compute dtype and head size.

    'cudnn' (flash attention, fused kernels) on a GPU where cuDNN takes the inputs: bfloat16 or float16 heads of
    at most 128 dimensions, a multiple of 8. 'xla' everywhere else (CPU, TPU, float32 on GPU), as JAX's own
    default does today.
    """
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if platform == "gpu" and half and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "xla"


def attention(q, k, v, key_mask, *, dropout: Dropout, deterministic: bool, rngs):
    """Multi-head softmax attention; q, k, v: [batch, length, heads, head_dim], softmax in float32.

    `key_mask`: [batch, key length], nonzero where a token may be attended to (the tokenizer's
    `attention_mask`: padding at the end), or None. Without attention dropout this is
    `jax.nn.dot_product_attention` with the implementation `attention_implementation` picks; cuDNN takes
    the padding as key lengths (the count of unmasked keys, which equals the mask for right padding).
    Training with attention dropout takes the explicit path (`attention_with_dropout`): the fused
    kernels have no dropout on the probabilities.
    """
    if not deterministic and dropout.rate > 0:
        mask = None if key_mask is None else key_mask[:, None, None, :].astype(bool)
        return attention_with_dropout(q, k, v, mask, dropout, rngs)
    if attention_implementation(jax.default_backend(), q.dtype, q.shape[-1]) == "cudnn":
        lengths = None if key_mask is None else jnp.sum(key_mask != 0, axis=-1, dtype=jnp.int32)
        return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")
    mask = None if key_mask is None else key_mask[:, None, None, :].astype(bool)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def attention_with_dropout(q, k, v, mask, dropout: Dropout, rngs):
    """Softmax attention with dropout on the probabilities (what BERT trains with).

    q, k, v: [batch, length, heads, head_dim]; mask: None or boolean, broadcastable to [batch, heads, q_len,
    k_len]. The logits and the softmax are float32 whatever the compute dtype. The products run per head
    ([batch, heads, length, head_dim]) through `_softmax_attention`, whose hand-written gradient keeps the
    probabilities and the dropout mask from the forward pass and takes every product in plain (untransposed)
    form: on CPU the attention's forward and backward pass take less time than when JAX differentiates the
    einsums (bench/README.md, `step_parts.py`).
    """
    if dropout.rate >= 1.0:
        return jnp.zeros((*q.shape[:-1], v.shape[-1]), v.dtype)
    batch, q_len, heads, head_dim = q.shape
    keep = None if dropout.rate == 0 else dropout.keep_mask((batch, heads, q_len, k.shape[1]), rngs)
    scale = 1.0 / jnp.sqrt(head_dim).astype(q.dtype)
    per_head = jnp.transpose(q * scale, (0, 2, 1, 3)), jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3))
    mask = None if mask is None else jnp.asarray(mask, bool)
    out = _softmax_attention(*per_head, mask, keep, 1.0 - dropout.rate)
    return jnp.transpose(out, (0, 2, 1, 3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _softmax_attention(q, k_t, v, mask, keep, keep_prob):
    """softmax(q k_t, masked) v with dropout.

    q, v: [batch, heads, length, head_dim]; k_t: [batch, heads, head_dim, length] (keys transposed).
    """
    return _softmax_attention_forward(q, k_t, v, mask, keep, keep_prob)[0]


def _softmax_attention_forward(q, k_t, v, mask, keep, keep_prob):
    logits = jnp.matmul(q, k_t, preferred_element_type=jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.matmul(_dropped(probs, keep, keep_prob).astype(v.dtype), v)
    return out, (q, k_t, v, mask, keep, probs)


def _softmax_attention_backward(keep_prob, residuals, d_out):
    q, k_t, v, mask, keep, probs = residuals
    dropped = _dropped(probs, keep, keep_prob).astype(v.dtype)
    d_v_t = jnp.matmul(jnp.swapaxes(d_out, -1, -2), dropped)  # dV^T = dO^T P: [batch, heads, head_dim, length].
    d_probs = _dropped(jnp.matmul(d_out, jnp.swapaxes(v, -1, -2), preferred_element_type=jnp.float32), keep, keep_prob)
    d_logits = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
    if mask is not None:
        d_logits = jnp.where(mask, d_logits, 0.0)
    d_logits = d_logits.astype(q.dtype)
    d_q = jnp.matmul(d_logits, jnp.swapaxes(k_t, -1, -2))
    d_k_t = jnp.matmul(jnp.swapaxes(q, -1, -2), d_logits)  # dK^T = Q^T dS.
    return d_q, d_k_t, jnp.swapaxes(d_v_t, -1, -2).astype(v.dtype), None, None


_softmax_attention.defvjp(_softmax_attention_forward, _softmax_attention_backward)


# config.model.remat: what a rematerialised block keeps from its forward pass for the backward pass.
# full: only its inputs (everything else is recomputed); dots_saveable: the outputs of its matrix products.
REMAT_POLICIES = {"full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}
REMAT_CHOICES = ("none", *REMAT_POLICIES)


def check_remat(remat: str) -> None:
    if remat not in REMAT_CHOICES:
        raise ValueError(f"config.model.remat={remat!r} is not known; use one of {', '.join(REMAT_CHOICES)}.")


def remat(fn, policy: str):
    """`fn` (of modules and arrays) rematerialised under `nnx.remat` with the `REMAT_POLICIES` entry; "none": fn."""
    if policy == "none":
        return fn
    return nnx.remat(fn, policy=REMAT_POLICIES[policy])


def constrain_batch(x: jax.Array) -> jax.Array:
    """Keeps activations split along the batch over the mesh's `data` and `fsdp` axes.

    Without it, GSPMD may follow FSDP-sharded weights and split activations along the hidden axis
    instead, which costs full rematerialisations. A no-op outside a mesh context (`jax.set_mesh`).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not {"data", "fsdp"} <= set(mesh.axis_names):
        return x
    spec = jax.sharding.PartitionSpec(("data", "fsdp"), *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, spec)
