"""`lm`: a JAX research codebase for large models. `run(config, workdir, mode)` is the library's front door."""

from collections.abc import Collection

import ml_collections

MODES = ("train", "eval", "export_hf", "build_vocab")


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "train", overrides: Collection[str] = ()) -> dict:
    """Runs one mode of an experiment; imports lazily so that `import lm` stays cheap.

    `overrides`: the dotted keys of `config` the user set explicitly, e.g. ("model.dropout_rate",) (main.py
    passes the --config.KEY flags). With `init_from`, those win over the checkpoint's model hyperparameters.
    """
    import tensorflow as tf

    # tf.data only feeds numpy batches: keep TensorFlow off accelerators JAX owns.
    tf.config.set_visible_devices([], "GPU")
    _quiet_library_logs()
    from lm import distributed

    distributed.initialize(config)
    if mode == "train":
        from lm import train

        return train.train_and_evaluate(config, workdir, overrides)
    if mode == "eval":
        from lm import evaluate

        return evaluate.run_eval(config, workdir)
    if mode == "build_vocab":
        from input_pipeline import vocab

        return {"vocab_path": vocab.build_vocab(config, workdir)}
    if mode == "export_hf":
        from lm.serving import export_hf

        return {"export_dir": export_hf.export(config, workdir)}
    raise ValueError(f"--mode={mode!r} is not known; use one of {MODES}.")


class _DropLibraryInfo:
    """Drops INFO records from Orbax (dozens a checkpoint); its warnings and errors still show."""

    def filter(self, record) -> bool:
        import logging

        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def _quiet_library_logs() -> None:
    import logging

    logger = logging.getLogger("absl")  # Orbax logs through absl's logger.
    if not any(isinstance(f, _DropLibraryInfo) for f in logger.filters):
        logger.addFilter(_DropLibraryInfo())
