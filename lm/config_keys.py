"""Unknown config keys: the full key that does not exist and the nearest ones that do.

ml_collections reports `--config.optimizer.lr=1e-3` (no such key) as a bare `AttributeError: "'lr'"` at
the end of a long traceback. `unknown_override(config, argv)` finds the first `--config.KEY=...` whose KEY
is not in the config; `message(config, key)` says so in a few lines with suggestions ("did you mean
optimizer.learning_rate?") from difflib, over the full dotted paths and over the section's own keys.
"""

import difflib
import json
from collections.abc import Iterable, Sequence

import ml_collections

_PREFIX = "--config."


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted path of the config: sections and their leaves."""
    keys = []
    for name, value in config.items():
        path = f"{prefix}{name}"
        keys.append(path)
        if isinstance(value, ml_collections.ConfigDict):
            keys += all_keys(value, path + ".")
    return keys


def known_prefix(config: ml_collections.ConfigDict, key: str) -> tuple[str, ml_collections.ConfigDict | None]:
    """The longest leading part of `key` that is a section of `config`, and that section."""
    section, parts = config, key.split(".")
    for i, part in enumerate(parts[:-1]):
        value = section.get(part) if isinstance(section, ml_collections.ConfigDict) else None
        if not isinstance(value, ml_collections.ConfigDict):
            return ".".join(parts[:i]), section
        section = value
    return ".".join(parts[:-1]), section


def exists(config: ml_collections.ConfigDict, key: str) -> bool:
    value = config
    for part in key.split("."):
        if not isinstance(value, ml_collections.ConfigDict) or part not in value:
            return False
        value = value[part]
    return True


def _score(typed: str, name: str) -> float:
    """Similarity of a typed key part to a real one: abbreviations (lr ~ learning_rate) first, then difflib."""
    score = difflib.SequenceMatcher(None, typed, name).ratio()
    if typed and typed == "".join(word[0] for word in name.split("_") if word):
        score += 2.0
    elif typed and name.startswith(typed[0]) and _is_subsequence(typed, name):
        score += 0.5
    return score


def _is_subsequence(short: str, long: str) -> bool:
    remaining = iter(long)
    return all(char in remaining for char in short)


def suggestions(config: ml_collections.ConfigDict, key: str, count: int = 3) -> list[str]:
    """The valid keys nearest to `key`: within its section when the section exists, else over all paths."""
    section_path, section = known_prefix(config, key)
    parent = key.rpartition(".")[0]
    if section is not None and section_path == parent:
        base = f"{section_path}." if section_path else ""
        scored = [(_score(key.split(".")[-1], name), base + name) for name in section.keys()]
    else:  # A section name is misspelled: compare whole paths of the same depth.
        depth = key.count(".")
        scored = [(_score(key, path), path) for path in all_keys(config) if path.count(".") == depth]
    leaf = key.split(".")[-1]
    for path in all_keys(config):  # The same name in another section (learning_rate -> optimizer.learning_rate).
        name = path.split(".")[-1]
        if name == leaf:
            scored.append((1.5, path))
        elif len(leaf) > 3 and leaf in name:
            scored.append((0.9, path))
    best: dict[str, float] = {}
    for score, path in scored:
        best[path] = best.get(path, 0.0) + score
    scored = sorted(((score, path) for path, score in best.items() if score >= 0.6 and path != key), reverse=True)
    if scored and scored[0][0] >= 2.0:  # An abbreviation, or a near path with the same name: the rest is noise.
        scored = [item for item in scored if item[0] >= 2.0]
    return [path for _, path in scored[:count]]


def message(config: ml_collections.ConfigDict, key: str) -> str:
    near = suggestions(config, key)
    hint = f" Did you mean {' or '.join(near)}?" if near else ""
    section_path, section = known_prefix(config, key)
    where = f"config.{section_path}" if section_path else "the config"
    keys = ", ".join(sorted(section.keys())) if section is not None else ""
    return (f"--config.{key}: config.{key} is not a key of this experiment's config.{hint}\n"
            f"Keys of {where}: {keys}")


def overrides(argv: Iterable[str]) -> list[str]:
    """The KEY of each `--config.KEY=VALUE` (or `--config.KEY VALUE`) argument."""
    return [arg[len(_PREFIX):].split("=", 1)[0] for arg in argv if arg.startswith(_PREFIX)]


def unknown_override(config: ml_collections.ConfigDict, argv: Sequence[str]) -> str | None:
    """The first overridden key that the config does not have, or None."""
    return next((key for key in overrides(argv) if not exists(config, key)), None)


def changed(previous: dict, config: ml_collections.ConfigDict, sections: tuple[str, ...]) -> list[str]:
    """'key: old -> new' for the keys under `sections` that a run's earlier config.json (`previous`) records and
    `config` sets otherwise (keys an older config.json lacks are not changes); lists are compared whole."""
    written = json.loads(config.to_json_best_effort())  # As the trainer writes config.json.

    def leaves(values: dict, prefix: str = "") -> dict[str, object]:
        flat = {}
        for key, value in values.items():
            if isinstance(value, dict):
                flat.update(leaves(value, f"{prefix}{key}."))
            else:
                flat[prefix + key] = value
        return flat

    old = leaves({key: previous[key] for key in sections if key in previous})
    new = leaves({key: written[key] for key in sections if key in written})
    return [f"{name}: {old[name]!r} -> {new.get(name)!r}" for name in sorted(old) if new.get(name) != old[name]]
