"""Device mesh from config, logical-axis rules, and shardings for the train state and batches.

Parameters carry logical axis names (`("embed", "mlp")`); `config.axis_rules` maps each to a mesh axis
(`data`, `fsdp`, `tensor`) or None. Batches are split along `("data", "fsdp")`.
"""

import math
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """Resolves -1 in `config.mesh` to the remaining devices and checks the product."""
    sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
    unknown = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
    if len(unknown) > 1:
        raise ValueError(f"config.mesh: only one axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
    if any(size == 0 or size < -1 for size in sizes):
        raise ValueError(f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}.")
    known = math.prod(size for size in sizes if size != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(
                f"config.mesh={dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not divisible by {known}; "
                "change the fixed axis sizes."
            )
        sizes[MESH_AXES.index(unknown[0])] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"config.mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but {num_devices} are "
            "present; set one axis to -1 or make the product equal the device count."
        )
    return tuple(sizes)


def create_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config, len(devices))
    # Auto axes: GSPMD propagates shardings (explicit axes would fail on sharded contractions).
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def logical_to_mesh_spec(names: tuple, rules, shape: tuple[int, ...] | None = None, mesh: Mesh | None = None) -> P:
    """Maps logical axis names to a PartitionSpec. Dimensions the mesh axis does not divide stay replicated."""
    table = dict(rules)
    spec = []
    for dim, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(
                f"Logical axis {name!r} has no rule in config.axis_rules; add ({name!r}, MESH_AXIS_OR_None)."
            )
        axis = table[name]
        if axis is not None and shape is not None and mesh is not None:
            axes = axis if isinstance(axis, tuple) else (axis,)
            if shape[dim] % math.prod(mesh.shape[a] for a in axes):
                axis = None
        spec.append(axis)
    return P(*spec)


def _logical_names(variable: nnx.Variable) -> tuple | None:
    metadata = variable.get_metadata()
    return metadata.get("out_sharding") or metadata.get("sharding_names") or metadata.get("sharding")


def state_shardings(state: nnx.State, mesh: Mesh, rules) -> Any:
    """NamedShardings for an (abstract) nnx.State, as a pure dict matching `nnx.to_pure_dict(state)`."""

    def one(variable):
        names = _logical_names(variable)
        shape = np.shape(variable.get_value())
        if not names:
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, logical_to_mesh_spec(tuple(names), rules, shape, mesh))

    shardings = jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(host_batch: dict[str, np.ndarray], mesh: Mesh, whole: bool = False) -> dict[str, jax.Array]:
    """Assembles each host's slice of the batch into global arrays split along the batch axes.

    `whole`: every host holds the whole global batch (predict reads every input on every host); each takes
    the rows of its own devices, so the global batch is this batch, not one copy per host.
    """
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value),
                                                    np.shape(value) if whole else None)
        for key, value in host_batch.items()
    }
