"""`config.init_from`: start from a Hugging Face directory or from one of our workdirs.

Two steps, both driven by the path alone:
  apply_to_config(config)   the encoder's shape (and vocabulary) come from the checkpoint
  load_into(config, params) the checkpoint's weights replace the fresh ones where names and shapes
                            match; the head stays fresh when the task or number of classes differs.
A report lists what was loaded, what is new and what was dropped.
"""

import json
import logging
import os

import jax
import ml_collections
import numpy as np

log = logging.getLogger(__name__)

MODEL_SHAPE_KEYS = (
    "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
    "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
)


def is_hf_directory(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("model.safetensors", "pytorch_model.bin")
    )


def is_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints"))


def apply_to_config(config: ml_collections.ConfigDict) -> None:
    """Sets the model's shape (and the vocabulary) from `config.init_from`."""
    path = config.init_from
    if is_hf_directory(path):
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
        for key in MODEL_SHAPE_KEYS:
            if key in source.get("model", {}) and key in config.model:
                config.model[key] = source["model"][key]
        vocab = source.get("data", {}).get("vocab_path", "")
        if "data" in config and "vocab_path" in config.data and not config.data.vocab_path and vocab:
            config.data.vocab_path = vocab
    else:
        raise ValueError(
            f"config.init_from={path!r} is neither a Hugging Face directory (config.json with model.safetensors "
            "or pytorch_model.bin) nor a workdir of ours (with checkpoints/)."
        )


def _source_config(workdir: str) -> dict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.init_from={workdir!r} has no config.json; is it a workdir of ours?")
    with open(path) as f:
        return json.load(f)


def load_into(config: ml_collections.ConfigDict, params: dict) -> tuple[dict, dict]:
    """Parameters with the checkpoint's weights where they fit; returns (params, report)."""
    path = config.init_from
    host_params = jax.device_get(params)
    if is_hf_directory(path):
        from lm.weights import hf_bert

        encoder, report = hf_bert.load_encoder_params(path, host_params["encoder"])
        new = dict(host_params, encoder=encoder)
        report = dict(report)
        report["new"] = sorted(set(report.get("missing", [])) | {"classifier/" + k for k in host_params["classifier"]})
        return new, report
    return _load_from_workdir(path, host_params)


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


def _load_from_workdir(workdir: str, params: dict) -> tuple[dict, dict]:
    from lm import checkpointing

    checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)
    step = checkpointer.best_step()
    if step is None:
        raise FileNotFoundError(f"config.init_from={workdir!r} has no checkpoint under checkpoints/.")
    state, _ = checkpointer.restore_raw(step)
    checkpointer.close()
    source = _flatten(jax.device_get(state["params"]))
    ours = _flatten(params)
    merged, report = {}, {"loaded": [], "new": [], "dropped": [], "source": f"{workdir} step {step}"}
    for name, value in ours.items():
        if name in source and np.shape(source[name]) == np.shape(value):
            merged[name] = np.asarray(source[name], dtype=np.asarray(value).dtype)
            report["loaded"].append(name)
        else:
            merged[name] = value
            report["new"].append(name)
    report["dropped"] = sorted(set(source) - set(report["loaded"]))
    return _unflatten_like(params, merged), report


def log_report(report: dict) -> None:
    log.info(
        "init_from: loaded %d parameters, %d new (%s), %d dropped (%s).",
        len(report.get("loaded", [])), len(report.get("new", [])), ", ".join(report.get("new", [])[:8]),
        len(report.get("dropped", report.get("unused", []))),
        ", ".join(report.get("dropped", report.get("unused", []))[:8]),
    )
