"""Models: `create_model(config.model, rngs=...)` builds the model a config names.

Each family's file registers itself (`lm.models.registry.register_model`): its builder, head, layer stack, and
for `init_from` the weight formats it loads and the config keys a checkpoint decides (`ModelFamily`). Importing
this package imports the built-in families. A new family is one file plus its line in the import below, or a
`register_model(...)` call from outside `lm`.
"""

import flax
import ml_collections
from flax import nnx

from lm.models import bert, resnet, vgg, vit  # noqa: F401  (each registers its family)
from lm.models.registry import ModelFamily, families, model_family, register_model

# Our parameters carry logical axis names that lm.sharding maps onto the mesh; Flax's eager sharding would
# place them at construction and fails without a mesh, so a model built directly in a notebook
# (`bert.BertEncoder(config, rngs=nnx.Rngs(0))`) works like one from create_model.
flax.config.update("flax_always_shard_variable", False)

__all__ = ["ModelFamily", "create_model", "families", "head_name", "layer_stack", "model_family", "register_model"]


def head_name(model: ml_collections.ConfigDict) -> str | None:
    """The top-level parameter name of the head `model` builds (`classifier`, `head`, `mlm_head`, `projection`)."""
    return model_family(model).head_name(model)


def layer_stack(model: ml_collections.ConfigDict) -> tuple[str, str, int] | None:
    """(embeddings path, layer-list path, number of layers) of a family with a layer stack, else None.

    Layer-wise learning-rate decay (`lm.optimizers`) reads it; paths are '/'-joined parameter paths.
    """
    stack = model_family(model).layer_stack
    return None if stack is None else stack(model)


def create_model(model: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> nnx.Module:
    """Builds the model unsharded; `lm.sharding` places the parameters (born sharded under jit)."""
    family = model_family(model)
    with nnx.use_eager_sharding(False):
        return family.build(model, rngs)
