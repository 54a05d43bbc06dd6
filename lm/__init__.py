"""`lm`: a JAX research codebase for large models. `run(config, workdir, mode)` is the library's front door."""

import os
import sys
import tempfile
from collections.abc import Collection

import ml_collections

MODES = ("train", "eval", "export_hf", "build_vocab", "inspect_data", "export_savedmodel", "serve", "predict",
         "select")


TF_LOGS_ENV = "LM_TF_LOGS"  # LM_TF_LOGS=1 shows TensorFlow's start-up and C++ log messages again.


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow without its start-up noise, unless LM_TF_LOGS=1; call before anything imports it.

    TensorFlow only feeds tf.data here (it never sees an accelerator), yet importing it prints CUDA, cuInit,
    oneDNN and CPU-feature messages, partly from C++ before its log level applies. So its C++ log level
    is set to errors-hidden (TF_CPP_MIN_LOG_LEVEL=3, unless already set) and what the import itself writes to
    the process's stderr is held back; it is shown if the import fails.
    """
    if os.environ.get(TF_LOGS_ENV, "") not in ("", "0") or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


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
    # Process 0 alone learns the vocabulary or inspects the data (each reads all of it) and writes the one file.
    if mode == "build_vocab":
        from input_pipeline import vocab

        distributed.on_process_zero(lambda: vocab.build_vocab(config, workdir), "learn and write vocab.txt",
                                    config.distributed.process_zero_timeout_s)
        return {"vocab_path": vocab.vocab_file(workdir)}
    if mode == "export_hf":
        from lm.serving import export_hf

        return {"export_dir": export_hf.export(config, workdir)}
    if mode == "inspect_data":
        from lm import inspect_data

        report = distributed.on_process_zero(lambda: inspect_data.run(config, workdir),
                                             "inspect the data and write data_report.json",
                                             config.distributed.process_zero_timeout_s)
        return report or {}  # {} on the other processes.
    if mode == "export_savedmodel":
        from lm.serving import savedmodel

        return savedmodel.run_export(config, workdir, tuple(overrides))
    if mode in ("predict", "select"):
        from lm.serving import predict

        return predict.run_predict(config, workdir) if mode == "predict" else predict.run_select(config, workdir)
    if mode == "serve":
        from lm.serving import serve

        return serve.run_serve(config, workdir)
    raise ValueError(f"--mode={mode!r} is not known; use one of {MODES}.")


class _DropLibraryInfo:
    """Drops INFO records from Orbax (dozens a checkpoint) and JAX's backend probing ("Unable to initialize
    backend 'tpu'" on every machine without one); their warnings and errors still show."""

    def filter(self, record) -> bool:
        import logging

        noisy = "/orbax/" in record.pathname or record.pathname.endswith("xla_bridge.py")
        return record.levelno >= logging.WARNING or not noisy


def _quiet_library_logs() -> None:
    import logging

    for name in ("absl", "jax._src.xla_bridge"):  # Orbax logs through absl's logger.
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLibraryInfo) for f in logger.filters):
            logger.addFilter(_DropLibraryInfo())
