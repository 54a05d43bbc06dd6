"""The model-family registry: each family's file registers what the rest of `lm` needs to know about it.

A family is one file in `lm/models/` that ends with `register_model(ModelFamily(...))`, plus its import in
`lm/models/__init__.py`; code outside `lm/` (a test, a research script) calls `register_model` itself. Nothing
else in `lm` switches on a model's name: the trainer, the optimizer, the weight importers and the exporters
read the family's entry.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
from flax import nnx

from lm.registry import Registry

MODALITIES = ("text", "image")


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What `lm` knows of a model family.

    name         `config.model.name`
    build        (config.model, rngs) -> the model, unsharded
    modality     "text" or "image": picks the task's input pipeline (`lm.tasks.TaskSpec.pipelines`)
    input_keys   the batch keys the model's `__call__` takes, in order (then `deterministic=`, `rngs=`)
    head_name    (config.model) -> the top-level parameter name of the head this config builds
                 (`config.trainable="head"`), or None
    classifier_head  the head's name when built for classification (`lm.tasks.classification` checks it)
    layer_stack  (config.model) -> (embeddings path, layer-list path, number of layers) for layer-wise
                 learning-rate decay, or None when the family has no layer stack
    importers    names of the `lm.weights` importers whose checkpoints load into this family
    arch_keys    the keys of `config.model` that a checkpoint decides (`config.init_from`): its shape; the rest
                 (the number of classes, dropout, the image size) are the experiment's
    config_class the dataclass `build` makes from `config.model`; `defaults()` gives its field defaults
    exporter     `lm.serving.export_hf` writer name, or "" when the family does not export
    check        (config) -> None: the family's own config checks (raise ValueError), run before compiling
    display_name the family's name in messages ("BERT", "ViT")
    """

    name: str
    build: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]
    modality: str
    input_keys: tuple[str, ...]
    head_name: Callable[[ml_collections.ConfigDict], str | None]
    classifier_head: str | None = None
    layer_stack: Callable[[ml_collections.ConfigDict], tuple[str, str, int]] | None = None
    importers: tuple[str, ...] = ()
    arch_keys: tuple[str, ...] = ()
    config_class: type | None = None
    exporter: str = ""
    check: Callable[[ml_collections.ConfigDict], None] | None = None
    display_name: str = ""

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"model family {self.name!r}: modality={self.modality!r}; use one of {MODALITIES}.")
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)

    def defaults(self) -> dict[str, Any]:
        """The model's values for the keys `config.model` leaves out: `config_class`'s field defaults."""
        if self.config_class is None:
            return {}
        return {field.name: field.default for field in dataclasses.fields(self.config_class)}


_FAMILIES: Registry[ModelFamily] = Registry("model family", "config.model.name")


def register_model(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Adds a family; registering a taken name again is an error unless `replace`."""
    return _FAMILIES.register(family, replace=replace)


def families() -> dict[str, ModelFamily]:
    """The registered families by name, in registration order."""
    return _FAMILIES.entries()


def model_family(model: ml_collections.ConfigDict | str) -> ModelFamily:
    """The family of `config.model` (or of a name); an unknown name is an error that lists the known ones."""
    return _FAMILIES.get(model if isinstance(model, str) else model.name)
