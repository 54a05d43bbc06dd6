"""Unpadding: a text encoder's per-token layers on the real tokens only, at a static size.

A padded batch [batch, length] of short texts is mostly padding (SST-2 sentences: 25 real tokens per example in
batches padded to 48 or 64), and every per-token layer (the projections, the feed-forward block, LayerNorm,
dropout) works on the padding as hard as on the text. `token_packing` gathers the batch's real tokens (in order,
then padding positions up to a static count: `fraction` of the positions) into rows [tokens, features] that
those layers run on; `unpack` puts the rows back at their positions for the attention, which needs [batch,
length]. Both directions are gathers, and so are their gradients (a gather's own transpose would be a
scatter-add, which XLA:CPU runs as a loop).

The count is static (jit compiles one program per shape), so whether a batch fits it is decided on the host,
before the batch goes to the device: `packs(config, mesh, batch)` (numpy, no device round trip). The trainer
compiles one step per batch shape and per answer (lm/train.py), and the step it builds for the batches that fit
traces the encoder inside `packed_layers(True)`, which is how `BertEncoder` knows to pack: a trace-time switch,
as `jax.set_mesh` is one for sharding. The step for the other batches is the padded step, unchanged, so only
the programs the data needs are compiled, and neither holds the other's intermediate arrays.

One CPU device only (`available`). A batch split over devices stays padded: gathering real tokens across the
data-parallel devices would move activations between them, and it is not measured. On GPU and TPU it is not
measured either: the step stays padded.
"""

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

_PACKED = contextvars.ContextVar("lm_packed_layers", default=False)


class Packing(NamedTuple):
    """packed_index [tokens]: each packed row's position in the flattened [batch * length] (distinct, the real
    tokens first, in order); slot_of_row [batch * length]: each position's packed row, or `tokens` if left out."""

    packed_index: jax.Array
    slot_of_row: jax.Array


@contextlib.contextmanager
def packed_layers(on: bool = True) -> Iterator[None]:
    """While tracing inside it, `BertEncoder` in training runs its layers on packed rows (`requested`).

    Only for steps whose every batch fits (`fits`): rows beyond the capacity are left out, not checked on device.
    """
    token = _PACKED.set(on)
    try:
        yield
    finally:
        _PACKED.reset(token)


def requested() -> bool:
    """Whether the step being traced packs (inside `packed_layers(True)`)."""
    return _PACKED.get()


def available(mesh: jax.sharding.Mesh) -> bool:
    """Whether `mesh` is one CPU device. Not on accelerators, where it is not measured (and where lm/train.py keeps
    its non-finite skip elementwise, a branch there can cost a host round trip)."""
    return mesh.size == 1 and mesh.devices.flat[0].platform == "cpu"


def capacity(positions: int, fraction: float) -> int:
    """The packed rows: `fraction` of the positions, rounded up to a multiple of 8 (at most all of them)."""
    return min(positions, 8 * math.ceil(positions * fraction / 8))


def fits(attention_mask: np.ndarray, fraction: float, micro_batches: int = 1) -> bool:
    """Whether the real tokens of each micro-batch of a host batch's [batch, length] mask fit its packed rows and
    leave some out (else packing saves nothing). Micro-batch i holds rows i, i + k, ... (lm/accumulation.py)."""
    mask = np.asarray(attention_mask) != 0
    per_micro = mask.reshape(mask.shape[0] // micro_batches, micro_batches, -1)
    positions = per_micro.shape[0] * per_micro.shape[2]
    rows = capacity(positions, fraction)
    return rows < positions and bool(np.all(per_micro.sum(axis=(0, 2)) <= rows))


def packs(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, batch: Mapping[str, np.ndarray]) -> bool:
    """Whether the trainer runs this host batch through the packed step: a text batch on one CPU device, training
    the whole model (config.trainable="head" runs the backbone in eval mode, padded), with
    config.model.unpad_fraction < 1, and every micro-batch's real tokens fit."""
    fraction = config.model.get("unpad_fraction", 1.0)
    if fraction >= 1.0 or "attention_mask" not in batch or config.trainable == "head" or not available(mesh):
        return False
    return fits(batch["attention_mask"], fraction, config.grad_accum_steps)


def token_packing(attention_mask: jax.Array, fraction: float) -> Packing:
    """The packing of a [batch, length] mask into `capacity(batch * length, fraction)` rows (inside the step)."""
    real = attention_mask.reshape(-1) != 0
    tokens = capacity(real.size, fraction)
    order = jnp.argsort(jnp.logical_not(real), stable=True).astype(jnp.int32)  # Real tokens first, in order.
    slot = jnp.argsort(order).astype(jnp.int32)  # Each position's place in `order`.
    return Packing(order[:tokens], jnp.where(slot < tokens, slot, tokens))


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
