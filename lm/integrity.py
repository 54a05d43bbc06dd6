"""Checksums of a train-state pytree, computed per shard, for checkpoints that never restore silently wrong.

`checksums(tree)` maps each leaf's path to {shard index: sha256 of the shard's bytes}. A shard index is
the global slice it covers ("0:64,0:128"; "" for a scalar), so the digests do not depend on which device
or process held the shard: each process hashes the shards it owns (replica 0) and the processes exchange
their digests, so every process returns the whole map. It also refuses non-finite floating-point values.

`local_mismatches(tree, expected)` recomputes the digests of a restored tree and lists what differs. A
process checks every recorded shard whose slice lies inside data it holds; on the mesh that saved the
checkpoint, or on a single process, every shard is checked. `agree(problems)` gives every process the union
of all processes' findings, so that they all take the same decision.
"""

import hashlib
import json
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from lm import paths


class NonFiniteError(FloatingPointError):
    """A checkpoint would hold NaN or infinity."""


def _bounds(index: tuple, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def _key(bounds: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{start}:{stop}" for start, stop in bounds)


def _parse(key: str) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(int(x) for x in part.split(":")) for part in key.split(",")) if key else ()


def _digest(data: np.ndarray) -> str:
    data = np.ascontiguousarray(data)
    digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    digest.update(data.reshape(-1).view(np.uint8))  # The bytes in place, without a copy.
    return digest.hexdigest()


def _owned_shards(leaf: Any) -> list[tuple[tuple[tuple[int, int], ...], np.ndarray]]:
    """(bounds, host copy) of each shard this process owns: replica 0, so each slice is hashed once."""
    if isinstance(leaf, jax.Array):
        return [(_bounds(shard.index, leaf.shape), np.asarray(shard.data))
                for shard in leaf.addressable_shards if shard.replica_id == 0]
    if jax.process_index() != 0:  # Host values (numpy, Python scalars) are the same on every process.
        return []
    data = np.asarray(leaf)
    return [(tuple((0, n) for n in data.shape), data)]


def checksums(tree: Any, where: str = "") -> dict[str, dict[str, str]]:
    """{leaf path: {shard slice: sha256}} over all processes; raises NonFiniteError on NaN or infinity."""
    local: dict[str, dict[str, str]] = {}
    for path, leaf in paths.flatten(tree).items():
        local[path] = {}
        for bounds, data in _owned_shards(leaf):
            if np.issubdtype(data.dtype, np.inexact) and not np.isfinite(data).all():
                raise NonFiniteError(f"{path} holds non-finite values{where}: refusing to checkpoint it.")
            local[path][_key(bounds)] = _digest(data)
    return _merge(_allgather_json(local))


def local_mismatches(tree: Any, expected: dict[str, dict[str, str]]) -> list[str]:
    """What differs between `tree` and the digests `checksums` recorded, as far as this process can see."""
    problems = []
    leaves = paths.flatten(tree)
    for path in sorted(set(expected) - set(leaves)):
        problems.append(f"{path}: recorded but not restored")
    for path, leaf in leaves.items():
        if path not in expected:
            problems.append(f"{path}: no checksum recorded")
            continue
        held = _held_data(leaf)
        for key, digest in expected[path].items():
            data = _slice_of(held, _parse(key))
            if data is not None and _digest(data) != digest:
                problems.append(f"{path}[{key}]: sha256 differs from the one recorded at save")
    return problems


def agree(problems: list[str]) -> list[str]:
    """The problems any process found, on every process (a collective: every process must call it)."""
    return sorted({problem for found in _allgather_json(problems) for problem in found})


def _held_data(leaf: Any) -> list[tuple[tuple[tuple[int, int], ...], Any]]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return [(_bounds(shard.index, leaf.shape), shard.data) for shard in leaf.addressable_shards]
    data = np.asarray(leaf)
    return [(tuple((0, n) for n in data.shape), data)]


def _slice_of(held, bounds) -> np.ndarray | None:
    """The data of global slice `bounds`, cut from a piece this process holds; None if none holds all of it."""
    for piece_bounds, data in held:
        if len(piece_bounds) == len(bounds) and all(
            ps <= s and e <= pe for (ps, pe), (s, e) in zip(piece_bounds, bounds)
        ):
            local = tuple(slice(s - ps, e - ps) for (ps, _), (s, e) in zip(piece_bounds, bounds))
            return np.asarray(data)[local]
    return None


def _allgather_json(value: Any) -> list[Any]:
    """`value` from every process, in process order (JSON-serialisable values)."""
    if jax.process_count() == 1:
        return [value]
    payload = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([payload.size], np.int64))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: payload.size] = payload
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(gathered, sizes.reshape(-1))]


def _merge(per_process: list[dict[str, dict[str, str]]]) -> dict[str, dict[str, str]]:
    merged: dict[str, dict[str, str]] = {}
    for found in per_process:
        for path, digests in found.items():
            merged.setdefault(path, {}).update(digests)
    return merged
