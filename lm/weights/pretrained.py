"""`config.init_from`: start from a Hugging Face directory, a Keras application file or one of our workdirs.

The importer that recognises the path (`lm.weights.importer_for`) reads it; the model family must list that
importer (`ModelFamily.importers`). Two steps:
  apply_to_config(config)   the importer's `configure` writes the checkpoint's architecture into config.model (the
                            family's `arch_keys`), and the vocabulary, or for vision the input normalisation when
                            config.data leaves it open
  load_into(config, params, batch_stats)
                            the importer's `load` replaces the fresh weights (and BatchNorm statistics) where names
                            and shapes match; the head stays fresh when the task or number of classes differs.
                            Returns (params, batch_stats or None, `ImportReport`), and logs the report once.
"""

import jax
import ml_collections

from lm import models, weights
from lm.weights.report import ImportReport


def _importer(config: ml_collections.ConfigDict) -> object:
    """The importer of `config.init_from`, which the model family must load from."""
    path = config.init_from
    family = models.model_family(config.model)
    name, importer = weights.importer_for(path)
    if name not in family.importers:
        takers = [entry.name for entry in models.families().values() if name in entry.importers]
        raise ValueError(
            f"config.init_from={path!r} is a {name} checkpoint; config.model.name={family.name!r} loads "
            f"{family.importers}. Families that load {name}: {takers}."
        )
    return importer


def apply_to_config(config: ml_collections.ConfigDict) -> None:
    """Sets the model's shape (and the vocabulary, or the vision input normalisation) from `config.init_from`.

    An importer without `configure` (a format that carries no architecture) leaves the config as it is.
    """
    configure = getattr(_importer(config), "configure", None)
    if configure is not None:
        configure(config, config.init_from)


def load_into(
    config: ml_collections.ConfigDict, params: dict, batch_stats: dict | None = None
) -> tuple[dict, dict | None, ImportReport]:
    """Parameters (and BatchNorm statistics) with the weights of `config.init_from` where they fit.

    Returns (params, batch_stats, report) and logs the report; batch_stats is None when the source has none
    for us (BERT, ViT, VGG), and the caller keeps its own.
    """
    host_stats = jax.device_get(batch_stats) if batch_stats else None
    new_params, new_stats, report = _importer(config).load(config.init_from, jax.device_get(params), host_stats)
    report.log()
    return new_params, new_stats, report
