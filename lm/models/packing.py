"""Unpadding: a text encoder's per-token layers on the real tokens only, at a static size.

A padded batch [batch, length] of short texts is mostly padding (SST-2 sentences: 25 real tokens per example in
batches padded to 48 or 64), and every per-token layer (the projections, the feed-forward block, LayerNorm,
dropout) works on the padding as hard as on the text. `token_packing` gathers the batch's real tokens (in order,
then padding positions up to a static count: `fraction` of the positions) into rows [tokens, features] that
those layers run on; `unpack` puts the rows back at their positions for the attention, which needs [batch,
length]. The count is static (jit compiles one program per shape), so it is a fraction of the padded positions;
whether a batch fits is data, so the caller branches with `lax.cond` on `fits` and runs padded when it does not.
Both directions are gathers, and so are their gradients (a gather's own transpose would be a scatter-add, which
XLA:CPU runs as a loop).

One CPU device only (`available`). On a data x fsdp x tensor = 2 x 2 x 2 mesh of 8 CPU devices the conditional
gave wrong losses (each branch alone, run without the conditional, was right, and so were the meshes 2 x 1 x 2,
1 x 2 x 2, 2 x 2 x 1 and 4 x 1 x 2; the cause was not found), so a batch split over devices runs padded. On GPU
and TPU it is not measured, and a branch can cost a host round trip there: the step stays padded.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Packing(NamedTuple):
    """packed_index [tokens]: each packed row's position in the flattened [batch * length] (distinct, the real
    tokens first, in order); slot_of_row [batch * length]: each position's packed row, or `tokens` if left out."""

    packed_index: jax.Array
    slot_of_row: jax.Array


def available() -> bool:
    """Whether the step runs on one CPU device: outside a mesh (`jax.set_mesh`, which the trainer always sets), or
    on a mesh of one device. Not on accelerators, where it is not measured and a branch can cost a host round trip
    for its predicate (the reason lm/train.py keeps its non-finite skip elementwise there)."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        return False
    device = None if mesh.empty else mesh.abstract_device
    return (device.platform if device is not None else jax.default_backend()) == "cpu"


def saves(positions: int, fraction: float) -> bool:
    """Whether packing can run here and leaves out any of `positions` (else the step stays as it was)."""
    return available() and capacity(positions, fraction) < positions


def capacity(positions: int, fraction: float) -> int:
    """The packed rows: `fraction` of the positions, rounded up to a multiple of 8 (at most all of them)."""
    return min(positions, 8 * math.ceil(positions * fraction / 8))


def token_packing(attention_mask: jax.Array, fraction: float) -> tuple[Packing, jax.Array]:
    """The packing of a [batch, length] mask, and whether its real tokens fit (a boolean scalar)."""
    real = attention_mask.reshape(-1) != 0
    tokens = capacity(real.size, fraction)
    order = jnp.argsort(jnp.logical_not(real), stable=True).astype(jnp.int32)  # Real tokens first, in order.
    slot = jnp.argsort(order).astype(jnp.int32)  # Each position's place in `order`.
    return Packing(order[:tokens], jnp.where(slot < tokens, slot, tokens)), jnp.sum(real) <= tokens


def _take(rows: jax.Array, index: jax.Array) -> jax.Array:
    return jnp.take(rows, index, axis=0, mode="clip")


@jax.custom_vjp
def _gather(rows, packed_index, slot_of_row):
    return _take(rows, packed_index)


def _gather_forward(rows, packed_index, slot_of_row):
    return _take(rows, packed_index), (packed_index, slot_of_row)


def _gather_backward(indices, cotangent):
    return _put_back(cotangent, *indices), None, None


_gather.defvjp(_gather_forward, _gather_backward)


@jax.custom_vjp
def _put_back(packed, packed_index, slot_of_row):
    return _take(jnp.concatenate([packed, jnp.zeros_like(packed[:1])]), slot_of_row)


def _put_back_forward(packed, packed_index, slot_of_row):
    return _put_back(packed, packed_index, slot_of_row), (packed_index, slot_of_row)


def _put_back_backward(indices, cotangent):
    return _take(cotangent, indices[0]), None, None


_put_back.defvjp(_put_back_forward, _put_back_backward)


def pack(x: jax.Array, packing: Packing) -> jax.Array:
    """[batch, length, features] -> the packed rows [tokens, features]."""
    return _gather(x.reshape(-1, x.shape[-1]), *packing)


def unpack(rows: jax.Array, packing: Packing, batch: int, length: int) -> jax.Array:
    """The packed rows [tokens, features] -> [batch, length, features], zeros at the positions left out."""
    return _put_back(rows, *packing).reshape(batch, length, rows.shape[-1])
