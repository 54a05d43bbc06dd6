"""Model registry: `create_model(config.model, rngs=...)` builds the model a config names.

A new model family is one file in this folder plus one entry in `_BUILDERS`.
"""

from collections.abc import Callable

import ml_collections
from flax import nnx

from lm.models import bert, resnet, vgg, vit


def _build_bert(model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """`model.head`: "classifier" (default) or "mlm" (masked-LM pretraining, `lm.tasks.mlm`)."""
    head = model.get("head", "classifier")
    if head == "mlm":
        return bert.BertForMaskedLM(bert_config(model), rngs=rngs)
    if head != "classifier":
        raise ValueError(f"config.model.head={head!r}: use 'classifier' or 'mlm'.")
    return bert.BertClassifier(bert_config(model), model.num_classes, rngs=rngs)


def bert_config(model: ml_collections.ConfigDict) -> bert.BertConfig:
    return bert.BertConfig(
        vocab_size=model.vocab_size,
        hidden_size=model.hidden_size,
        num_layers=model.num_layers,
        num_heads=model.num_heads,
        intermediate_size=model.intermediate_size,
        max_position_embeddings=model.max_position_embeddings,
        type_vocab_size=model.type_vocab_size,
        dropout_rate=model.dropout_rate,
        attention_dropout_rate=model.attention_dropout_rate,
        layer_norm_eps=model.layer_norm_eps,
        dtype=model.dtype,
        remat=model.remat,
    )


def _build_resnet(model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    config = resnet.ResNetConfig(
        depth=model.depth,
        variant=model.variant,
        num_classes=model.num_classes,
        width=model.width,
        zero_init_residual=model.zero_init_residual,
        stride_in_1x1=model.get("stride_in_1x1", False),
        conv_bias=model.get("conv_bias", False),
        norm_epsilon=model.get("norm_epsilon", 1e-5),
        projection_dims=tuple(model.get("projection_dims", ())),
        dtype=model.dtype,
        remat=model.remat,
    )
    return resnet.ResNet(config, rngs=rngs)


def _build_vgg(model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    config = vgg.VGGConfig(
        depth=model.depth,
        batch_norm=model.batch_norm,
        num_classes=model.num_classes,
        dropout_rate=model.dropout_rate,
        pool_size=model.pool_size,
        classifier_width=model.classifier_width,
        dtype=model.dtype,
        remat=model.remat,
    )
    return vgg.VGG(config, rngs=rngs)


def _build_vit(model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    config = vit.ViTConfig(
        variant=model.variant,
        patch_size=model.patch_size,
        image_size=model.image_size,
        pooling=model.pooling,
        num_classes=model.num_classes,
        dropout_rate=model.dropout_rate,
        attention_dropout_rate=model.attention_dropout_rate,
        layer_norm_eps=model.get("layer_norm_eps", 1e-6),
        dtype=model.dtype,
        remat=model.remat,
    )
    return vit.VisionTransformer(config, rngs=rngs)


# The classification head of each family: the parameters under this top-level name (`config.trainable="head"`).
HEADS = {"bert": "classifier", "resnet": "head", "vgg": "head", "vit": "head"}


def head_name(model: ml_collections.ConfigDict) -> str | None:
    """The top-level parameter name of the model's head: HEADS, or `mlm_head` for a BERT built for masked LM."""
    if model.name == "bert" and model.get("head", "classifier") == "mlm":
        return "mlm_head"
    if model.name == "resnet" and model.get("projection_dims", ()):
        return "projection"
    return HEADS.get(model.name)


def layer_stack(model: ml_collections.ConfigDict) -> tuple[str, str, int] | None:
    """(embeddings path, layer-list path, number of layers) of a transformer family, else None.

    Layer-wise learning-rate decay (`lm.optimizers`) reads it; paths are '/'-joined parameter paths.
    """
    if model.name == "bert":
        return "encoder/embeddings", "encoder/layers", model.num_layers
    if model.name == "vit":
        return "embedding", "blocks", vit.VIT_SIZES[model.variant][1]
    return None


_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]] = {
    "bert": _build_bert,
    "resnet": _build_resnet,
    "vgg": _build_vgg,
    "vit": _build_vit,
}


def create_model(model: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> nnx.Module:
    """Builds the model unsharded; `lm.sharding` places the parameters (born sharded under jit)."""
    if model.name not in _BUILDERS:
        raise ValueError(f"config.model.name={model.name!r} is not known; choose one of {sorted(_BUILDERS)}.")
    with nnx.use_eager_sharding(False):
        return _BUILDERS[model.name](model, rngs)
