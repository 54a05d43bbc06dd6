"""`lm`: a JAX research codebase for large models. `run(config, workdir, mode)` is the library's front door."""

import ml_collections

MODES = ("train", "eval", "export_hf", "build_vocab", "export_savedmodel", "serve", "predict", "select")


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "train") -> dict:
    """Runs one mode of an experiment; imports lazily so that `import lm` stays cheap."""
    import tensorflow as tf

    # tf.data only feeds numpy batches: keep TensorFlow off accelerators JAX owns.
    tf.config.set_visible_devices([], "GPU")
    _quiet_library_logs()
    from lm import distributed

    distributed.initialize(config)
    if mode == "train":
        from lm import train

        return train.train_and_evaluate(config, workdir)
    if mode == "eval":
        from lm import evaluate

        return evaluate.run_eval(config, workdir)
    if mode == "build_vocab":
        from input_pipeline import vocab

        return {"vocab_path": vocab.build_vocab(config, workdir)}
    if mode == "export_hf":
        from lm.serving import export_hf

        return {"export_dir": export_hf.export(config, workdir)}
    if mode == "export_savedmodel":
        from lm.serving import savedmodel

        return savedmodel.run_export(config, workdir)
    if mode in ("predict", "select"):
        from lm.serving import predict

        return predict.run_predict(config, workdir) if mode == "predict" else predict.run_select(config, workdir)
    if mode == "serve":
        from lm.serving import serve

        return serve.run_serve(config, workdir)
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
