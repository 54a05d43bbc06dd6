"""Filling our pure parameter dicts from an external checkpoint, shared by the vision importers.

An importer builds a table `our path -> (checkpoint name, value already in our layout)`; `fill` walks our
template (arrays or `jax.ShapeDtypeStruct`s), replaces each leaf the table names, checks shapes, and
reports what was loaded and what was kept fresh. Shape mismatches are errors naming both sides, except
under the prefixes the caller marks as replaceable (a classifier head for another number of classes).
"""

from typing import Any

import jax
import numpy as np

Path = tuple[str | int, ...]
Table = dict[Path, tuple[str, np.ndarray]]


def dotted(path: Path) -> str:
    return "/".join(str(key) for key in path)


def _path(keypath: tuple) -> Path:
    return tuple(k.key if isinstance(k, jax.tree_util.DictKey) else k.idx for k in keypath)


def torch_conv(weight: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d weight [out, in, kh, kw] -> ours (flax) [kh, kw, in, out]."""
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def torch_linear(weight: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight [out, in] -> ours [in, out]."""
    return np.ascontiguousarray(weight.T)


def fill(
    template: dict,
    table: Table,
    *,
    what: str,
    fresh_on_mismatch: tuple[Path, ...] = (),
) -> tuple[dict, dict[str, list[str]]]:
    """`template` with the table's values (host numpy, in the template leaves' dtypes) where it names a leaf.

    Returns the new tree and a report: 'loaded' and 'new' (our paths; new leaves are kept as they were),
    'used' (checkpoint names that fed a leaf) and 'notes' (why a leaf under `fresh_on_mismatch` stayed new).
    """
    report: dict[str, list[str]] = {"loaded": [], "new": [], "used": [], "notes": []}
    known = set()

    def replace(keypath: tuple, leaf: Any) -> Any:
        ours = _path(keypath)
        known.add(ours)
        if ours not in table:
            report["new"].append(dotted(ours))
            return leaf
        name, value = table[ours]
        ours_shape = tuple(np.shape(leaf))
        if value.shape != ours_shape:
            if any(ours[: len(prefix)] == prefix for prefix in fresh_on_mismatch):
                report["new"].append(dotted(ours))
                report["notes"].append(
                    f"{dotted(ours)} kept fresh: ours {ours_shape}, checkpoint {name} {value.shape}"
                )
                return leaf
            raise ValueError(
                f"shape mismatch: our {what} {dotted(ours)} has shape {ours_shape}, checkpoint {name} gives "
                f"{value.shape} (in our layout); the model config does not match the checkpoint"
            )
        report["loaded"].append(dotted(ours))
        report["used"].append(name)
        return np.asarray(value).astype(leaf.dtype)

    tree = jax.tree_util.tree_map_with_path(replace, template)
    extra = sorted(dotted(path) for path in table if path not in known)
    if extra:
        raise ValueError(
            f"the checkpoint has weights for {len(extra)} {what}s our model lacks, e.g. {extra[:4]} (from "
            f"{[table[p][0] for p in sorted(table, key=dotted) if p not in known][:4]}); the model config "
            "does not match the checkpoint"
        )
    return tree, report
