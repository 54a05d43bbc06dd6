"""Small layer constructors shared by the model files: every parameter gets logical axis names."""

import jax
import jax.numpy as jnp
from flax import nnx

# BERT and ViT initialise with a truncated normal of stddev 0.02 (Devlin et al. 2019).
DEFAULT_INIT = nnx.initializers.truncated_normal(stddev=0.02)


def dense(in_features, out_features, names, dtype, rngs, *, use_bias=True, kernel_init=DEFAULT_INIT):
    return nnx.Linear(
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


def attention_with_dropout(q, k, v, mask, dropout: nnx.Dropout, rngs):
    """Softmax attention with dropout on the probabilities (what BERT trains with).

    q, k, v: [batch, length, heads, head_dim]; mask: broadcastable to [batch, heads, q_len, k_len].
    `jax.nn.dot_product_attention` has no dropout, so training with attention dropout takes this path.
    """
    scale = 1.0 / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * scale, k)
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    probs = dropout(probs, deterministic=False, rngs=rngs)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


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
