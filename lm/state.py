"""The train state: how it is built, where it lives on the mesh, and how it is split for a step.

The state is a plain dict of pure pytrees so that Orbax, weight import and export read it by name:
  params       model parameters (nnx.Param), float32
  batch_stats  BatchNorm statistics (nnx.BatchStat), empty for models without BatchNorm
  opt_state    optax state, over the trainable parameters only (`partition`)
  step         int32 scalar: optimizer steps taken
  rng          base PRNG key; a step's key is fold_in(rng, step)
Parameters are born sharded: the state's shapes come from `jax.eval_shape`, shardings from the logical
axis rules, and the init function is jitted with those `out_shardings`.

Frozen parameters (`config.trainable`, `config.freeze`) stay in `params`; `StateSpec.trainable` marks
them, and `partition` splits a parameter tree into the trainable and the frozen part as two nested dicts
that each hold only their own leaves, so the optimizer state has no entry for a frozen parameter.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from lm import models, sharding


@dataclasses.dataclass
class StateSpec:
    graphdef: Any  # nnx.GraphDef of the model: with params and batch_stats it rebuilds the module.
    abstract: dict  # ShapeDtypeStructs with shardings, the restore target for checkpoints.
    shardings: dict
    trainable: dict  # True for each parameter the optimizer updates, in the layout of `params`.


def partition(params: dict, trainable: dict) -> tuple[dict, dict]:
    """(trainable part, frozen part) of a nested parameter dict; empty sub-dicts are dropped."""

    def select(tree: dict, mask: dict, keep: bool) -> dict:
        chosen = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                sub = select(value, mask[key], keep)
                if sub:
                    chosen[key] = sub
            elif bool(mask[key]) == keep:
                chosen[key] = value
        return chosen

    return select(params, trainable, True), select(params, trainable, False)


def combine(first: dict, second: dict) -> dict:
    """Undoes `partition`: the union of two nested dicts with disjoint leaves."""
    merged = dict(first)
    for key, value in second.items():
        merged[key] = combine(merged[key], value) if key in merged else value
    return merged


def split_model(model: nnx.Module) -> tuple[Any, dict, dict]:
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def merge_model(graphdef: Any, params: dict, batch_stats: dict) -> nnx.Module:
    return nnx.merge(graphdef, params, batch_stats)


def _init_state(model_config: ml_collections.ConfigDict, tx: optax.GradientTransformation, seed: int,
                trainable: dict) -> dict:
    init_key, rng = jax.random.split(jax.random.key(seed))
    model = models.create_model(model_config, rngs=nnx.Rngs(params=init_key))
    _, params, batch_stats = split_model(model)
    return {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(partition(params, trainable)[0]),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(rng),
    }


def state_spec(model_config: ml_collections.ConfigDict, tx: optax.GradientTransformation, mesh: Mesh,
               axis_rules, seed: int, trainable: Callable[[dict], dict] | None = None) -> StateSpec:
    """Shapes and shardings of the whole train state, without allocating it.

    `trainable(params)` gives the trainable mask (e.g. `lm.optimizers.trainable_mask`); None trains all.
    """
    with nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(lambda: models.create_model(model_config, rngs=nnx.Rngs(0)))
    graphdef, params_state, stats_state = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)
    abstract_params = nnx.to_pure_dict(params_state)
    mask = jax.tree.map(lambda _: True, abstract_params) if trainable is None else trainable(abstract_params)
    param_shardings = sharding.state_shardings(params_state, mesh, axis_rules)
    stats_shardings = sharding.state_shardings(stats_state, mesh, axis_rules)
    abstract_state = jax.eval_shape(lambda: _init_state(model_config, tx, seed, mask))
    replicated = sharding.replicated(mesh)
    opt_shardings = optax.tree_map_params(
        tx,
        lambda _, s: s,
        abstract_state["opt_state"],
        partition(param_shardings, mask)[0],
        transform_non_params=lambda _: replicated,
    )
    shardings = {
        "params": param_shardings,
        "batch_stats": stats_shardings,
        "opt_state": opt_shardings,
        "step": replicated,
        "rng": replicated,
    }
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )
    return StateSpec(graphdef=graphdef, abstract=abstract, shardings=shardings, trainable=mask)


def init_state(model_config: ml_collections.ConfigDict, tx: optax.GradientTransformation, spec: StateSpec,
               seed: int) -> dict:
    """The initial train state, each array created directly in its shards."""
    return jax.jit(lambda: _init_state(model_config, tx, seed, spec.trainable), out_shardings=spec.shardings)()


def replace_params(state: dict, params: dict, spec: StateSpec, tx: optax.GradientTransformation) -> dict:
    """A state with new parameters (e.g. imported weights) placed on their shardings and fresh optimizer state."""
    params = jax.device_put(params, spec.shardings["params"])
    opt_state = jax.jit(lambda p: tx.init(partition(p, spec.trainable)[0]),
                        out_shardings=spec.shardings["opt_state"])(params)
    return dict(state, params=params, opt_state=opt_state)
