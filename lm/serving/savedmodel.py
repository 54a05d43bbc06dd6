"""A JAX classifier -> a TensorFlow SavedModel that TF Serving loads, raw inputs in, probabilities out.

The model's forward pass goes through `jax2tf` native serialization (StableHLO inside an XlaCallModule op,
lowered for CPU and CUDA) with a polymorphic batch dimension; its parameters are `tf.Variable`s of the
SavedModel, not constants folded into the graph. Two signatures:
- `serving_default`: raw inputs (`texts`: strings, or `image_bytes`: encoded JPEG/PNG images), preprocessed in
  the graph by the same TensorFlow functions that the training pipeline uses (tokenization; decoding, resizing
  and normalisation as in evaluation);
- `serve_inputs`: the model's own inputs (token ids and masks, or normalised pixels `image` [batch, S, S, C]).
Both return `probabilities` [batch, classes] and `label` (the name of the most probable class).
`assets.extra/tf_serving_warmup_requests` holds one request, so TF Serving compiles before its first client.
"""

import json
import logging
import os
from collections.abc import Callable

import jax
import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

log = logging.getLogger(__name__)

PLATFORMS = ("cpu", "cuda")


class _Exported(tf.Module):
    def __init__(self, leaves: list[np.ndarray], label_names: tuple[str, ...]):
        super().__init__()
        self.weights = [tf.Variable(leaf, trainable=False) for leaf in leaves]
        self.label_names = tf.constant(label_names)


def export(
    probabilities: Callable[[object, dict], jax.Array],
    variables: object,
    input_specs: dict[str, tf.TensorSpec],
    raw_name: str,
    preprocess: Callable[[tf.Tensor], dict[str, tf.Tensor]],
    label_names: tuple[str, ...],
    directory: str,
    version: int,
    warmup_raw: list,
    metadata: dict,
) -> str:
    """Writes `<directory>/<version>/`; returns that path.

    `probabilities(variables, inputs)` is the JAX forward pass on host arrays; `variables` a pytree of host
    arrays (parameters and batch statistics); `input_specs` the model inputs with a None batch dimension;
    `preprocess` maps a [batch] tensor of raw inputs (`raw_name`: strings or bytes) to those inputs.
    """
    leaves, treedef = jax.tree.flatten(jax.device_get(variables))
    leaves = [np.asarray(leaf) for leaf in leaves]

    def forward(flat: list, inputs: dict) -> jax.Array:
        return probabilities(jax.tree.unflatten(treedef, flat), inputs)

    batch_polymorphic = {name: "(b, " + ", ".join(str(d) for d in spec.shape[1:]) + ")" if spec.shape.rank > 1
                         else "(b,)" for name, spec in input_specs.items()}
    tf_forward = jax2tf.convert(forward, polymorphic_shapes=[None, batch_polymorphic], with_gradient=False,
                                native_serialization_platforms=PLATFORMS)
    module = _Exported(leaves, label_names)

    def outputs(inputs: dict) -> dict:
        probs = tf_forward(module.weights, inputs)
        return {"probabilities": probs, "label": tf.gather(module.label_names, tf.argmax(probs, axis=-1))}

    module.serve_inputs = tf.function(outputs, input_signature=[input_specs], autograph=False)
    raw_spec = tf.TensorSpec([None], tf.string, name=raw_name)
    module.serve_raw = tf.function(lambda raw: outputs(preprocess(raw)), input_signature=[raw_spec],
                                   autograph=False)
    path = os.path.join(directory, str(version))
    if tf.io.gfile.exists(path):
        raise FileExistsError(f"{path} exists already; export another step (config.eval_checkpoint), to another "
                              "config.serving.export_dir, or remove it.")
    signatures = {"serving_default": module.serve_raw.get_concrete_function(),
                  "serve_inputs": module.serve_inputs.get_concrete_function()}
    tf.saved_model.save(module, path, signatures=signatures)
    _write_warmup(path, raw_name, warmup_raw, metadata.get("model_name", "model"))
    with tf.io.gfile.GFile(os.path.join(path, "assets.extra", "lm_export.json"), "w") as f:
        json.dump(metadata, f, indent=2)
    log.info("SavedModel with signatures %s -> %s", sorted(signatures), path)
    return path


def _write_warmup(path: str, raw_name: str, raw: list, model_name: str) -> None:
    """One PredictionLog record in TF Serving's warm-up file, on `serving_default`."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"),
        inputs={raw_name: tf.make_tensor_proto(raw, dtype=tf.string)},
    )
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    tf.io.gfile.makedirs(os.path.join(path, "assets.extra"))
    with tf.io.TFRecordWriter(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")) as writer:
        writer.write(record.SerializeToString())


def export_directory(config, workdir: str) -> str:
    """Where the versions go: config.serving.export_dir, else WORKDIR/savedmodel."""
    return config.serving.export_dir or os.path.join(workdir, "savedmodel")


def check_export_dir(config, workdir: str, step: int) -> None:
    """config.serving.export_dir, else WORKDIR/savedmodel, checked before the model loads: a directory (created if
    missing; the versions it holds are kept) that can be written (`lm.files.check_writable`), without a version
    `step` yet; and WORKDIR/serving_reference.json, written after the export. Process 0 writes them: only it
    calls this (`lm.distributed.on_process_zero`)."""
    from lm import files
    from lm.serving import serve

    directory = export_directory(config, workdir)
    setting = files.setting("config.serving.export_dir", config.serving.export_dir, directory)
    files.check_writable(directory, setting, "Set --config.serving.export_dir to a directory you can write (a "
                         "missing one is created; each export adds a version <export_dir>/<step>/).", directory=True)
    version = os.path.join(directory, str(step))
    if tf.io.gfile.exists(version):
        raise FileExistsError(f"{setting} holds version {step} already ({version!r}; the step of "
                              f"config.eval_checkpoint={str(config.eval_checkpoint)!r}): export another step "
                              "(config.eval_checkpoint), to another config.serving.export_dir, or remove it.")
    reference = os.path.join(workdir, serve.REFERENCE_FILE)
    files.check_writable(reference, f"--workdir={workdir!r}, where the export writes {serve.REFERENCE_FILE} (the drift "
                         "reference of --mode=serve),", "Export from a workdir you can write to.")


def run_export(config, workdir: str, overrides: tuple[str, ...] = ()) -> dict:
    """--mode=export_savedmodel: checkpoint `config.eval_checkpoint` of `workdir` -> `<export dir>/<step>/`.

    Also records the validation set's predicted-class distribution and confidence histogram (the drift
    reference of `--mode=serve`) in the export and in WORKDIR/serving_reference.json; the validation split is the
    one the run's WORKDIR/config.json defines, with the keys the user set (`overrides`) as given.

    On many hosts every process restores the checkpoint (Orbax's restore meets all of them), then process 0 alone
    measures the whole validation split and writes the export (`lm.distributed.on_process_zero`: the others wait
    for it, and stop with its error if it fails); each returns the export's path.
    """
    from lm import distributed
    from lm.serving import predict, serve, trained

    step = trained.checkpoint_step(workdir, str(config.eval_checkpoint))  # The version; a wrong --workdir fails here.
    directory, timeout_s = export_directory(config, workdir), config.distributed.process_zero_timeout_s
    distributed.on_process_zero(lambda: check_export_dir(config, workdir, step), "check the export directory",
                                timeout_s)
    model = trained.load(workdir, str(step))

    def measure_and_write() -> None:
        # The run's own validation split, read as the run read it (its config.json: data, vocabulary, classes), as
        # predict and serve read the run's data keys: the command line needs no data flags for this mode, and the
        # flags it gives (`overrides`: moved files, a smaller eval_batch_size) win.
        reference = predict.validation_reference(trained.data_config(config, workdir, tuple(overrides)), model)
        name = config.serving.model_name or os.path.basename(os.path.normpath(workdir))
        metadata = {"model_name": name, "step": model.step, "label_names": list(model.label_names),
                    "raw_input": model.raw_name, "reference": reference}
        export(model.probabilities, model.variables, model.input_specs, model.raw_name, model.preprocess,
               model.label_names, directory, model.step, [model.warmup_raw], metadata)
        with tf.io.gfile.GFile(os.path.join(workdir, serve.REFERENCE_FILE), "w") as f:
            json.dump(reference, f, indent=2)

    distributed.on_process_zero(measure_and_write, "measure the validation split and write the SavedModel", timeout_s)
    return {"export_dir": os.path.join(directory, str(model.step))}
