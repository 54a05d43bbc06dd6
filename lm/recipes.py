"""Picks one of a config's recipes when the run starts: from scratch or fine-tuning, by `init_from`.

A config with two starting points (configs/vision_classification.py for folder and arrays images) holds both in
`config.recipes` (`scratch`, `finetune`: sections shaped like the config, e.g. `optimizer.learning_rate`) and
leaves the keys they set unset (None). `config.recipe` chooses: 'auto' takes 'finetune' when `config.init_from`
is set and 'scratch' when it is empty; 'scratch' or 'finetune' force one. The chosen recipe fills only the keys
still unset, so a key given on the command line (`--config.optimizer.learning_rate=1e-3`) wins over either
recipe. The choice is logged and written to config.json (`recipe`). Configs with one recipe have no `recipes`.
"""

import logging

import ml_collections

log = logging.getLogger(__name__)


def _leaves(section: ml_collections.ConfigDict, prefix: str = ""):
    for key, value in section.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _parent(config: ml_collections.ConfigDict, path: str) -> tuple[ml_collections.ConfigDict, str]:
    *sections, key = path.split(".")
    for name in sections:
        config = config[name]
    return config, key


def apply(config: ml_collections.ConfigDict) -> None:
    """Fills the unset keys from the recipe `config.recipe` names (see the module docstring); logs the choice."""
    if not config.recipes:
        if config.recipe != "auto":
            raise ValueError(
                f"config.recipe={config.recipe!r}: this config has one recipe; leave config.recipe='auto'."
            )
        return
    choice = config.recipe
    if choice == "auto":
        choice = "finetune" if config.init_from else "scratch"
    if choice not in config.recipes:
        raise ValueError(f"config.recipe={config.recipe!r}: use 'auto' or one of {sorted(config.recipes)}.")
    filled, given = [], []
    for path, value in _leaves(config.recipes[choice]):
        parent, key = _parent(config, path)
        if parent[key] is None:
            parent[key] = value
            filled.append(f"{path}={value!r}")
        else:
            given.append(f"{path}={parent[key]!r}")
    start = "set" if config.init_from else "empty"
    why = "config.recipe" if config.recipe != "auto" else f"config.init_from is {start}"
    log.info(
        "Recipe %r (%s): %s%s. Another: --config.recipe=%s; any key: --config.KEY=VALUE.", choice, why,
        ", ".join(filled) or "nothing to fill", f"; set explicitly: {', '.join(given)}" if given else "",
        next(name for name in config.recipes if name != choice) if len(config.recipes) > 1 else choice,
    )
    config.recipe = choice
