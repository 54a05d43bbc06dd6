"""Import of external weights: one interface for every source, one report.

An importer is an object (usually a module) with
  detect(source) -> bool                         whether `source` (a path) is in its format
  load(source, params, batch_stats) -> (params, batch_stats or None, ImportReport)
                                                 our pure dicts with the source's weights where they fit
  configure(config, source) -> None              optional: writes the checkpoint's architecture into config.model
                                                 (the family's `arch_keys`), and its vocabulary or its input
                                                 normalisation into config.data (`lm.weights.configuring` helps)
Importers are tried in registration order; the first whose `detect` says yes reads the source. A model family
lists the importers it supports (`lm.models.ModelFamily.importers`); `lm.weights.pretrained` checks it and calls
`configure` and `load`. `register_importer` adds an importer from outside `lm`.
"""

import importlib

# name -> importer, or the module that is the importer (imported when first asked: h5py, safetensors load lazily).
# Order matters: the Hugging Face importers for one model_type come before hf_bert, which takes any HF directory.
_IMPORTERS: dict[str, object] = {
    "hf_vit": "lm.weights.hf_vit",
    "hf_resnet": "lm.weights.hf_resnet",
    "keras": "lm.weights.keras_apps",
    "hf_bert": "lm.weights.hf_bert",
    "workdir": "lm.weights.workdir",
}


def register_importer(name: str, importer: object, *, first: bool = False) -> None:
    """Adds an importer (an object with `detect` and `load`); `first` tries it before the others."""
    global _IMPORTERS
    _IMPORTERS = {name: importer, **_IMPORTERS} if first else {**_IMPORTERS, name: importer}


def importer(name: str):
    """The importer registered as `name`."""
    found = _IMPORTERS[name]
    return importlib.import_module(found) if isinstance(found, str) else found


def importer_for(source: str) -> tuple[str, object]:
    """(name, importer) of the first importer that recognises `source`."""
    for name in _IMPORTERS:
        if importer(name).detect(source):
            return name, importer(name)
    raise ValueError(
        f"config.init_from={source!r} is neither a Hugging Face directory (config.json with model.safetensors or "
        "pytorch_model.bin), a Keras application file (.weights.h5, .keras, .h5) nor a workdir of ours (with "
        f"checkpoints/); the importers are {list(_IMPORTERS)}."
    )
