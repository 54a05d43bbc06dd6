"""Filling our pure parameter dicts from an external checkpoint, shared by the vision importers.

An importer builds a table `our path -> (checkpoint name, value already in our layout)`; `fill` walks our
template (arrays or `jax.ShapeDtypeStruct`s), replaces each leaf the table names, checks shapes, and
reports what was loaded and what was kept fresh. Shape mismatches are errors naming both sides, except
under the prefixes the caller marks as replaceable (a classifier head for another number of classes).
"""

from typing import Any

import jax
import numpy as np

from lm.paths import param_name, path_keys
from lm.weights.report import ImportReport

Path = tuple[str | int, ...]
Table = dict[Path, tuple[str, np.ndarray]]


def torch_conv(weight: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d weight [out, in, kh, kw] -> ours (flax) [kh, kw, in, out]."""
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def torch_linear(weight: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight [out, in] -> ours [in, out]."""
    return np.ascontiguousarray(weight.T)


# How a weight's layout differs between PyTorch (Hugging Face) and us; name tables give each entry one of these.
LAYOUTS = ("same", "linear", "conv", "position", "cls_token")


def to_ours(layout: str, value: np.ndarray) -> np.ndarray:
    """A PyTorch-layout weight in our layout (Linear and Conv2d kernels; position and class-token squeezed)."""
    if layout == "linear":
        return torch_linear(value)
    if layout == "conv":
        return torch_conv(value)
    if layout in ("position", "cls_token"):
        return value.reshape(value.shape[-2:] if layout == "position" else value.shape[-1:])
    return value


def to_torch(layout: str, value: np.ndarray) -> np.ndarray:
    """Ours -> PyTorch layout, the inverse of `to_ours`."""
    if layout == "linear":
        return value.T
    if layout == "conv":
        return value.transpose(3, 2, 0, 1)
    if layout == "position":
        return value[None]
    if layout == "cls_token":
        return value[None, None]
    return value


def fill(
    template: dict,
    table: Table,
    *,
    what: str,
    fresh_on_mismatch: tuple[Path, ...] = (),
) -> tuple[dict, ImportReport]:
    """`template` with the table's values (host numpy, in the template leaves' dtypes) where it names a leaf.

    Returns the new tree and an `ImportReport`: 'loaded' and 'new' (our paths; new leaves are kept as they
    were), 'used' (checkpoint names that fed a leaf) and 'notes' (why a leaf under `fresh_on_mismatch` stayed
    new); the caller fills in 'unused'.
    """
    report = ImportReport()
    known = set()

    def replace(keypath: tuple, leaf: Any) -> Any:
        ours = path_keys(keypath)
        known.add(ours)
        if ours not in table:
            report.new.append(param_name(ours))
            return leaf
        name, value = table[ours]
        ours_shape = tuple(np.shape(leaf))
        if value.shape != ours_shape:
            if any(ours[: len(prefix)] == prefix for prefix in fresh_on_mismatch):
                report.new.append(param_name(ours))
                report.notes.append(
                    f"{param_name(ours)} kept fresh: ours {ours_shape}, checkpoint {name} {value.shape}"
                )
                return leaf
            raise ValueError(
                f"shape mismatch: our {what} {param_name(ours)} has shape {ours_shape}, checkpoint {name} gives "
                f"{value.shape} (in our layout); the model config does not match the checkpoint"
            )
        report.loaded.append(param_name(ours))
        report.used.append(name)
        return np.asarray(value).astype(leaf.dtype)

    tree = jax.tree_util.tree_map_with_path(replace, template)
    extra = sorted(param_name(path) for path in table if path not in known)
    if extra:
        raise ValueError(
            f"the checkpoint has weights for {len(extra)} {what}s our model lacks, e.g. {extra[:4]} (from "
            f"{[table[p][0] for p in sorted(table, key=param_name) if p not in known][:4]}); the model config "
            "does not match the checkpoint"
        )
    return tree, report
