"""Parameter paths: the one way `lm` turns a place in a parameter tree into a name ("encoder/layers/0/query/kernel")."""

from typing import Any

import jax


def path_keys(keypath) -> tuple[str | int, ...]:
    """A JAX key path (or a tuple of plain keys) as plain keys: dict keys, sequence indices, attribute names."""
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in keypath)


def param_name(keypath) -> str:
    """The '/'-joined path of a parameter, from a JAX key path or a tuple of plain keys."""
    return "/".join(str(key) for key in path_keys(keypath))


def flatten(tree: Any) -> dict[str, Any]:
    """'/'-joined path -> leaf, in tree order."""
    return {param_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten_like(template: Any, flat: dict[str, Any]) -> Any:
    """`template`'s structure with each leaf replaced by `flat[its path]`."""
    return jax.tree_util.tree_map_with_path(lambda path, _: flat[param_name(path)], template)
