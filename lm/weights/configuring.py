"""What the importers' `configure(config, path)` share: writing a checkpoint's architecture into the config.

`architecture` writes the keys a model family's checkpoint decides (`ModelFamily.arch_keys`) into `config.model`;
`normalization` the checkpoint's input normalisation into `config.data` where the experiment leaves it open;
`hf_vision` does both for a Hugging Face vision directory (its preprocessor_config.json normalises).
"""

import logging

import ml_collections

from lm import files, models

log = logging.getLogger(__name__)

# Keys whose mismatch only shifts the numbers slightly: a config.model without them warns instead of failing.
_APPROXIMATE_KEYS = ("norm_epsilon", "layer_norm_eps")


def architecture(config: ml_collections.ConfigDict, family: str, values: dict, source: str) -> None:
    """Writes the checkpoint's architecture into config.model; a value config.model cannot hold is an error.

    `family`: the model family the checkpoint is of; `values`: the checkpoint's config.model values; `source`: the
    kind of checkpoint in messages ("Hugging Face").
    """
    path = config.init_from
    if config.model.name != family:
        raise ValueError(
            f"config.init_from={path!r} is a {source} {family} checkpoint but config.model.name="
            f"{config.model.name!r}; use a {family} config."
        )
    entry = models.model_family(family)
    defaults = entry.defaults()
    for key in entry.arch_keys:
        if key not in values:
            continue
        if key in config.model:
            config.model[key] = type(config.model[key])(values[key])
        elif values[key] != defaults[key]:
            message = (
                f"config.init_from={path!r} needs model.{key}={values[key]!r}, but config.model has no {key!r} "
                f"(the model is built with {defaults[key]!r}): add it to the {family} section of "
                "configs/vision_models.py"
            )
            if key not in _APPROXIMATE_KEYS:
                raise ValueError(message + " to load this checkpoint.")
            log.warning("%s; until then the outputs differ slightly from the checkpoint's.", message)


def normalization(config: ml_collections.ConfigDict, mean: tuple, std: tuple, source: str) -> None:
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


def hf_vision(config: ml_collections.ConfigDict, path: str, family: str, values: dict) -> None:
    """A Hugging Face vision directory: its architecture, and its preprocessor's normalisation where it has one."""
    architecture(config, family, values, "Hugging Face")
    found = _hf_normalization(path)
    if found:
        normalization(config, *found, f"{path}/preprocessor_config.json")
