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
                            the checkpoint's weights (and BatchNorm statistics) replace the fresh ones
                            where names and shapes match; the head stays fresh when the task or number
                            of classes differs. Returns (params, batch_stats or None, report).
A report lists what was loaded, what is new and what was dropped.
"""

import dataclasses
import logging

import jax
import ml_collections
import numpy as np

from lm import files

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


def is_hf_directory(path: str) -> bool:
    return files.is_file(files.join(path, "config.json")) and any(
        files.is_file(files.join(path, name)) for name in ("model.safetensors", "pytorch_model.bin")
    )


def hf_model_type(path: str) -> str:
    return files.read_json(files.join(path, "config.json")).get("model_type", "")


def is_keras_file(path: str) -> bool:
    from lm.weights import keras_apps

    return files.is_file(path) and keras_apps.is_keras_file(path)


def is_workdir(path: str) -> bool:
    return files.is_dir(files.join(path, "checkpoints"))


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
    data = config.get("data")
    if data is None or "mean" not in data or tuple(data.mean) or tuple(data.std):
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
) -> tuple[dict, dict | None, dict]:
    """Parameters (and BatchNorm statistics) with the checkpoint's weights where they fit.

    Returns (params, batch_stats, report); batch_stats is None when the checkpoint has none for us (BERT,
    ViT, VGG), and the caller keeps its own.
    """
    path = config.init_from
    host_params = jax.device_get(params)
    host_stats = jax.device_get(batch_stats) if batch_stats else None
    if is_hf_directory(path) and hf_model_type(path) == "vit":
        from lm.weights import hf_vit

        new, report = hf_vit.load_params(path, host_params)
        return new, None, report
    if is_hf_directory(path) and hf_model_type(path) == "resnet":
        from lm.weights import hf_resnet

        return hf_resnet.load_params(path, host_params, host_stats)
    if is_keras_file(path):
        from lm.weights import keras_apps

        return keras_apps.load_params(path, host_params, host_stats)
    if is_hf_directory(path):
        from lm.weights import hf_bert

        state_dict = hf_bert.read_state_dict(path)  # Read once: the encoder and the masked-LM head share it.
        encoder, report = hf_bert.load_encoder_params(path, host_params["encoder"], state_dict)
        new = dict(host_params, encoder=encoder)
        report = dict(report)
        report["new"] = sorted(set(report.get("missing", [])))
        if "mlm_head" in host_params:
            new["mlm_head"], head_report = hf_bert.load_mlm_head_params(path, host_params["mlm_head"], state_dict)
            report["loaded"] = report["loaded"] + head_report["loaded"]
            report["new"] = sorted(set(report["new"]) | set(head_report["missing"]))
            report["unused"] = [key for key in report["unused"] if not key.startswith("cls.predictions.")]
        else:
            report["new"] = sorted(set(report["new"]) | {"classifier/" + k for k in host_params["classifier"]})
        return new, None, report
    return _load_from_workdir(path, host_params, host_stats)


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def _unflatten_like(template: dict, flat: dict[str, np.ndarray], prefix: str = "") -> dict:
    return {
        key: _unflatten_like(value, flat, f"{prefix}{key}/") if isinstance(value, dict) else flat[f"{prefix}{key}"]
        for key, value in template.items()
    }


def _merge(ours: dict, source: dict, report: dict, prefix: str = "") -> dict:
    """`ours` with the source's leaves where name and shape match; fills report's loaded/new/dropped."""
    flat_source, flat_ours = _flatten(source), _flatten(ours)
    merged, loaded = {}, set()
    for name, value in flat_ours.items():
        if name in flat_source and np.shape(flat_source[name]) == np.shape(value):
            merged[name] = np.asarray(flat_source[name], dtype=np.asarray(value).dtype)
            loaded.add(name)
            report["loaded"].append(prefix + name)
        else:
            merged[name] = value
            report["new"].append(prefix + name)
    report["dropped"] += sorted(prefix + name for name in set(flat_source) - loaded)
    return _unflatten_like(ours, merged)


def _load_from_workdir(workdir: str, params: dict, batch_stats: dict | None) -> tuple[dict, dict | None, dict]:
    from lm import checkpointing

    checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)
    step = checkpointer.best_step()
    if step is None:
        raise FileNotFoundError(f"config.init_from={workdir!r} has no checkpoint under checkpoints/.")
    state, _ = checkpointer.restore_raw(step)
    checkpointer.close()
    report = {"loaded": [], "new": [], "dropped": [], "source": f"{workdir} step {step}"}
    new_params = _merge(params, jax.device_get(state["params"]), report)
    new_stats = None
    if batch_stats and state.get("batch_stats"):  # BatchNorm statistics belong with the weights they normalise.
        new_stats = _merge(batch_stats, jax.device_get(state["batch_stats"]), report, "batch_stats/")
    return new_params, new_stats, report


def log_report(report: dict) -> None:
    for note in report.get("notes", []):
        log.info("init_from: %s", note)
    log.info(
        "init_from: loaded %d parameters, %d new (%s), %d dropped (%s).",
        len(report.get("loaded", [])), len(report.get("new", [])), ", ".join(report.get("new", [])[:8]),
        len(report.get("dropped", report.get("unused", []))),
        ", ".join(report.get("dropped", report.get("unused", []))[:8]),
    )
