"""The train state: how it is built, where it lives on the mesh, and how it is split for a step.

The state is a plain dict of pure pytrees so that Orbax, weight import and export read it by name:
  params       model parameters (nnx.Param), float32
  batch_stats  BatchNorm statistics (nnx.BatchStat), empty for models without BatchNorm
  opt_state    optax state
  step         int32 scalar: optimizer steps taken
  rng          base PRNG key; a step's key is fold_in(rng, step)
Parameters are born sharded: the state's shapes come from `jax.eval_shape`, shardings from the logical
axis rules, and the init function is jitted with those `out_shardings`.
"""

import dataclasses
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


def split_model(model: nnx.Module) -> tuple[Any, dict, dict]:
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def merge_model(graphdef: Any, params: dict, batch_stats: dict) -> nnx.Module:
    return nnx.merge(graphdef, params, batch_stats)


def _init_state(model_config: ml_collections.ConfigDict, tx: optax.GradientTransformation, seed: int) -> dict:
    init_key, rng = jax.random.split(jax.random.key(seed))
    model = models.create_model(model_config, rngs=nnx.Rngs(params=init_key))
    _, params, batch_stats = split_model(model)
    return {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(rng),
    }


def state_spec(model_config: ml_collections.ConfigDict, tx: optax.GradientTransformation, mesh: Mesh,
               axis_rules, seed: int) -> StateSpec:
    """Shapes and shardings of the whole train state, without allocating it."""
    with nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(lambda: models.create_model(model_config, rngs=nnx.Rngs(0)))
    graphdef, params_state, stats_state = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)
    param_shardings = sharding.state_shardings(params_state, mesh, axis_rules)
    stats_shardings = sharding.state_shardings(stats_state, mesh, axis_rules)
    abstract_state = jax.eval_shape(lambda: _init_state(model_config, tx, seed))
    replicated = sharding.replicated(mesh)
    opt_shardings = optax.tree_map_params(
        tx,
        lambda _, s: s,
        abstract_state["opt_state"],
        param_shardings,
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
    return StateSpec(graphdef=graphdef, abstract=abstract, shardings=shardings)


def init_state(model_config: ml_collections.ConfigDict, tx: optax.GradientTransformation, spec: StateSpec,
               seed: int) -> dict:
    """The initial train state, each array created directly in its shards."""
    return jax.jit(lambda: _init_state(model_config, tx, seed), out_shardings=spec.shardings)()


def replace_params(state: dict, params: dict, spec: StateSpec, tx: optax.GradientTransformation) -> dict:
    """A state with new parameters (e.g. imported weights) placed on their shardings and fresh optimizer state."""
    params = jax.device_put(params, spec.shardings["params"])
    opt_state = jax.jit(tx.init, out_shardings=spec.shardings["opt_state"])(params)
    return dict(state, params=params, opt_state=opt_state)
