"""Our own workdirs as a weight source: the best checkpoint of a run of ours, matched by name and shape.

A leaf of ours takes the checkpoint's value where the checkpoint has the same path with the same shape (in
our dtype); the others stay fresh ('new'), and the checkpoint's leaves that fed nothing are 'unused' (the
masked-LM head of a pretraining run that a classifier now fine-tunes, a head for another class count).
`configure` takes the run's architecture and vocabulary from its config.json.
"""

import jax
import ml_collections
import numpy as np

from lm import files, models, paths
from lm.weights.report import ImportReport


def detect(path: str) -> bool:
    """A directory with checkpoints/."""
    return files.is_dir(files.join(path, "checkpoints"))


def configure(config: ml_collections.ConfigDict, path: str) -> None:
    """The run's architecture (`ModelFamily.arch_keys`, when it trained our family) and its vocabulary."""
    source = files.read_run_config(path, given_as="config.init_from")
    model = source.get("model", {})
    if model.get("name") != config.model.name:
        raise ValueError(
            f"config.init_from={path!r} is a workdir of a {model.get('name')!r} model, but config.model.name="
            f"{config.model.name!r}: no weight would fit. Start from a run of the same model family (or give "
            f"a {model.get('name')!r} config)."
        )
    for key in models.model_family(config.model).arch_keys:
        if key in model and key in config.model:
            config.model[key] = model[key]
    vocab = source.get("data", {}).get("vocab_path", "")
    if "data" in config and "vocab_path" in config.data and not config.data.vocab_path and vocab:
        config.data.vocab_path = vocab


def _merge(ours, source, report: ImportReport, prefix: str = ""):
    """`ours` with the source's leaves where name and shape match; appends to the report."""
    flat_source, flat_ours = paths.flatten(source), paths.flatten(ours)
    merged, loaded = {}, set()
    for name, value in flat_ours.items():
        if name in flat_source and np.shape(flat_source[name]) == np.shape(value):
            merged[name] = np.asarray(flat_source[name], dtype=np.asarray(value).dtype)
            loaded.add(name)
            report.loaded.append(prefix + name)
        else:
            merged[name] = value
            report.new.append(prefix + name)
    report.used += sorted(prefix + name for name in loaded)
    report.unused += sorted(prefix + name for name in set(flat_source) - loaded)
    return paths.unflatten_like(ours, merged)


def load(workdir: str, params: dict, batch_stats: dict | None = None) -> tuple[dict, dict | None, ImportReport]:
    """Our parameters (and BatchNorm statistics, when both sides have them) from the workdir's best checkpoint.

    The second value is None when there are no statistics to load; the caller keeps its own.
    """
    from lm import checkpointing  # Orbax loads only when a workdir is imported.

    with checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True) as checkpointer:
        step = checkpointer.best_step()
        if step is None:
            raise FileNotFoundError(f"config.init_from={workdir!r} has no checkpoint under checkpoints/.")
        state, _ = checkpointer.restore_raw(step)
    report = ImportReport(source=f"{workdir} step {step}")
    new_params = _merge(params, jax.device_get(state["params"]), report)
    if not report.loaded:
        raise ValueError(
            f"config.init_from={workdir!r}: none of its step-{step} weights matches a parameter of this model by "
            f"name and shape (ours look like {report.new[:3]}); is it a run of this model?"
        )
    new_stats = None
    if batch_stats and state.get("batch_stats"):  # BatchNorm statistics belong with the weights they normalise.
        new_stats = _merge(batch_stats, jax.device_get(state["batch_stats"]), report, "batch_stats/")
    return new_params, new_stats, report
