"""`config.init_from`: start from a Hugging Face directory, a Keras application file or one of our workdirs.

Sources, told apart by the path alone:
  Hugging Face directory  config.json + model.safetensors or pytorch_model.bin; config.json's model_type
                          picks the importer: bert (lm.weights.hf_bert), vit (hf_vit), resnet (hf_resnet)
  Keras file              *.weights.h5, *.keras or *.h5 of keras.applications' VGG16/19 or ResNet50/101/152
                          (lm.weights.keras_apps)
  workdir of ours         a directory with checkpoints/
Two steps:
  apply_to_config(config)   the architecture (and vocabulary, and for vision the input normalisation when
                            config.data leaves it open) come from the checkpoint
  load_into(config, params, batch_stats)
                            the importer that recognises the source (`lm.weights.importer_for`) replaces
                            the fresh weights (and BatchNorm statistics) where names and shapes match; the
                            head stays fresh when the task or number of classes differs. Returns (params,
                            batch_stats or None, `ImportReport`), and logs the report once.
"""

import dataclasses
import logging

import jax
import ml_collections

from lm import files, models, weights
from lm.weights.reader import is_hf_directory
from lm.weights.report import ImportReport

log = logging.getLogger(__name__)

MODEL_SHAPE_KEYS = (
    "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
    "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
)
# The keys of a vision family's model config that the checkpoint decides; the rest (num_classes, image_size,
# dropout, VGG's pool_size and classifier_width) are the experiment's. Keys whose mismatch only shifts the
# numbers slightly (epsilons) warn when config.model lacks them; the others must be representable.
VISION_ARCH_KEYS = {
    "resnet": ("depth", "variant", "width", "stride_in_1x1", "conv_bias", "norm_epsilon"),
    "vgg": ("depth", "batch_norm"),
    "vit": ("variant", "patch_size", "pooling", "layer_norm_eps"),
}
_APPROXIMATE_KEYS = ("norm_epsilon", "layer_norm_eps")
VISION_HF_TYPES = ("vit", "resnet")


def hf_model_type(path: str) -> str:
    return files.read_json(files.join(path, "config.json")).get("model_type", "")


def is_keras_file(path: str) -> bool:
    return weights.importer("keras").detect(path)


def is_workdir(path: str) -> bool:
    return weights.importer("workdir").detect(path)


def _model_defaults(family: str) -> dict:
    from lm.models import resnet, vgg, vit

    config_class = {"resnet": resnet.ResNetConfig, "vgg": vgg.VGGConfig, "vit": vit.ViTConfig}[family]
    return {field.name: field.default for field in dataclasses.fields(config_class)}


def _apply_vision(config: ml_collections.ConfigDict, family: str, values: dict, source: str) -> None:
    """Writes the checkpoint's architecture into config.model; a value config.model cannot hold is an error."""
    path = config.init_from
    if config.model.name != family:
        raise ValueError(
            f"config.init_from={path!r} is a {source} {family} checkpoint but config.model.name="
            f"{config.model.name!r}; use a {family} config."
        )
    defaults = _model_defaults(family)
    for key in VISION_ARCH_KEYS[family]:
        if key not in values:
            continue
        if key in config.model:
            config.model[key] = type(config.model[key])(values[key])
        elif values[key] != defaults[key]:
            message = (
                f"config.init_from={path!r} needs model.{key}={values[key]!r}, but config.model has no {key!r} "
                f"(the model is built with {defaults[key]!r}): add it to the {family} section of "
                "configs/vision_models.py and pass it in lm/models/__init__.py"
            )
            if key not in _APPROXIMATE_KEYS:
                raise ValueError(message + " to load this checkpoint.")
            log.warning("%s; until then the outputs differ slightly from the checkpoint's.", message)


def _apply_normalization(config: ml_collections.ConfigDict, mean: tuple, std: tuple, source: str) -> None:
    """The checkpoint's input normalisation, where config.data leaves it open (mean and std both ())."""
    data = config.data
    if "mean" not in data or tuple(data.mean) or tuple(data.std):
        return
    data.mean, data.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    log.info("config.data.mean/std set to %s's normalisation: %s / %s.", source, data.mean, data.std)


def _hf_normalization(path: str) -> tuple[tuple, tuple] | None:
    """image_mean/image_std of a HF directory's preprocessor_config.json, when it normalises."""
    file = files.join(path, "preprocessor_config.json")
    if not files.is_file(file):
        return None
    processor = files.read_json(file)
    if not processor.get("do_normalize", True) or "image_mean" not in processor or "image_std" not in processor:
        return None
    return tuple(processor["image_mean"]), tuple(processor["image_std"])


def apply_to_config(config: ml_collections.ConfigDict) -> None:
    """Sets the model's shape (and the vocabulary, or the vision input normalisation) from `config.init_from`."""
    path = config.init_from
    if is_hf_directory(path) and hf_model_type(path) in VISION_HF_TYPES:
        from lm.weights import hf_resnet, hf_vit

        family = hf_model_type(path)
        values = (hf_vit if family == "vit" else hf_resnet).read_config(path)
        _apply_vision(config, family, values, "Hugging Face")
        normalization = _hf_normalization(path)
        if normalization:
            _apply_normalization(config, *normalization, f"{path}/preprocessor_config.json")
    elif is_keras_file(path):
        from lm.weights import keras_apps

        values = keras_apps.read_config(path)
        _apply_vision(config, values["name"], values, "Keras application")
        _apply_normalization(config, keras_apps.CAFFE_MEAN, keras_apps.CAFFE_STD, "keras.applications (caffe)")
    elif is_hf_directory(path):
        from lm.weights import hf_bert

        if config.model.name != "bert":
            raise ValueError(
                f"config.init_from={path!r} is a Hugging Face BERT directory but config.model.name="
                f"{config.model.name!r}; use a BERT config."
            )
        for key, value in hf_bert.read_config(path).items():
            if key in config.model:
                config.model[key] = type(config.model[key])(value)
        if not config.data.vocab_path:
            config.data.vocab_path = hf_bert.vocab_path(path)
    elif is_workdir(path):
        source = _source_config(path)
        keys = MODEL_SHAPE_KEYS
        if source.get("model", {}).get("name") == config.model.name:
            keys += VISION_ARCH_KEYS.get(config.model.name, ())
        for key in keys:
            if key in source.get("model", {}) and key in config.model:
                config.model[key] = source["model"][key]
        vocab = source.get("data", {}).get("vocab_path", "")
        if "data" in config and "vocab_path" in config.data and not config.data.vocab_path and vocab:
            config.data.vocab_path = vocab
    else:
        raise ValueError(
            f"config.init_from={path!r} is neither a Hugging Face directory (config.json with model.safetensors "
            "or pytorch_model.bin), a Keras application file (.weights.h5, .keras, .h5) nor a workdir of ours "
            "(with checkpoints/)."
        )


def _source_config(workdir: str) -> dict:
    path = files.join(workdir, "config.json")
    if not files.is_file(path):
        raise FileNotFoundError(f"config.init_from={workdir!r} has no config.json; is it a workdir of ours?")
    return files.read_json(path)


def load_into(
    config: ml_collections.ConfigDict, params: dict, batch_stats: dict | None = None
) -> tuple[dict, dict | None, ImportReport]:
    """Parameters (and BatchNorm statistics) with the weights of `config.init_from` where they fit.

    Returns (params, batch_stats, report) and logs the report; batch_stats is None when the source has none
    for us (BERT, ViT, VGG), and the caller keeps its own.
    """
    path = config.init_from
    family = models.model_family(config.model)
    name, importer = weights.importer_for(path)
    if name not in family.importers:
        raise ValueError(
            f"config.init_from={path!r} is a {name} checkpoint; config.model.name={family.name!r} loads "
            f"{family.importers}."
        )
    host_stats = jax.device_get(batch_stats) if batch_stats else None
    new_params, new_stats, report = importer.load(path, jax.device_get(params), host_stats)
    report.log()
    return new_params, new_stats, report
