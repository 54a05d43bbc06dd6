"""Probabilities of a trained model over data: the validation reference of an export, predict and select."""

import json
import logging
import os
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from lm import distributed
from lm.serving import monitor
from lm.serving.trained import TrainedModel

log = logging.getLogger(__name__)


def validation_reference(config: ml_collections.ConfigDict, model: TrainedModel) -> dict:
    """The drift reference: predicted-class distribution and confidence histogram on the validation split,
    read by the training pipeline from `config.data`; `config` reads the run's data (`trained.data_config`).
    The whole split, in this process alone (no collective: on many hosts, the process that writes the export)."""
    import input_pipeline
    from lm import config_checks, models, tasks

    config = config_checks.resolved_copy(config)
    pipeline = tasks.task_spec(config.task).pipeline(models.model_family(config.model))
    data = input_pipeline.create_data(config, 0, 1, pipeline=pipeline)
    forward = jax.jit(model.probabilities)
    variables = jax.device_put(model.variables)
    rows = []
    for batch in data.eval_batches("validation"):
        probabilities = np.asarray(forward(variables, {key: batch[key] for key in model.input_keys}))
        rows.append(probabilities[batch["weight"] > 0])
    if not rows:
        raise ValueError("The validation split is empty: the export needs it for the drift reference.")
    return monitor.reference_profile(np.concatenate(rows))


# Unlabelled text for predict and select: the labelled formats plus one-document-a-line .txt.
TEXT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}


def read_inputs(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """(id, text) of every row of config.serving.input_files, in file and row order; the id is "FILE line N",
    FILE's path made absolute (lm.files.absolute_path).

    The text column is config.data.text_field; no label column is needed. An empty text or a row without
    the column follows config.on_bad_example: it stops the run, naming file and line, or is skipped and counted.
    """
    from input_pipeline.common import BadExamples
    from input_pipeline.sources import files
    from lm import files as lm_files

    if not config.serving.input_files:
        raise ValueError("--mode=predict and --mode=select need config.serving.input_files (comma-separated CSV, "
                         "TSV, JSONL or TXT files or globs; the text column is config.data.text_field).")
    reading = ml_collections.ConfigDict({"text_field": config.data.text_field, "encoding": config.data.encoding})
    bad = BadExamples(config.on_bad_example)
    rows = []
    for found in files.expand_files("serving.input_files", config.serving.input_files, TEXT_FORMATS):
        path = lm_files.absolute_path(found)
        for where, record, problem in files.read_records(path, ("text",), reading, TEXT_FORMATS):
            text = None if record is None else record["text"]
            if not problem and (text is None or not str(text).strip()):
                problem = "the text is empty."
            if problem:
                bad.report("serving.input_files", path, f"{where}: {problem}")
                continue
            rows.append((where, str(text).strip()))
    bad.log_summary()
    if not rows:
        raise ValueError(f"config.serving.input_files={config.serving.input_files!r} holds no text to predict.")
    return rows


def probabilities_over(model: TrainedModel, inputs: list, batch_size: int, mesh: jax.sharding.Mesh,
                       read: Callable[[object], object] = lambda x: x) -> np.ndarray:
    """Class probabilities of `inputs` [n, classes], in order: batches of `batch_size` sharded over the mesh's
    data axes (the last one padded; text cut to its length bucket, as evaluation does), the parameters
    replicated; a progress line with the throughput. Batch k + 1 is read and preprocessed while the device
    computes batch k (jax dispatches asynchronously).

    `read` turns an input into the model's raw input when its batch is built (an image path into its bytes).
    """
    from lm import sharding

    forward = jax.jit(model.probabilities, in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                      out_shardings=sharding.replicated(mesh))
    variables = jax.device_put(model.variables, sharding.replicated(mesh))
    rows, start, done, pending = [], time.perf_counter(), 0, None

    def collect(result: jax.Array, count: int) -> None:
        nonlocal done
        rows.append(np.asarray(result)[:count])
        done += count
        log.info("predict %d/%d examples, %.1f examples/s", done, len(inputs),
                 done / max(time.perf_counter() - start, 1e-9))

    for first in range(0, len(inputs), batch_size):
        chunk = [read(x) for x in inputs[first:first + batch_size]]
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
        with jax.set_mesh(mesh):
            batch = sharding.global_batch(model.encode(padded), mesh, whole=True)  # Every host reads every input.
            if first == 0:
                log.info("predict: global batches of %d examples on %d devices in %d process(es)",
                         next(iter(batch.values())).shape[0], mesh.size, jax.process_count())
            result = forward(variables, batch)
        if pending is not None:
            collect(*pending)
        pending = (result, len(chunk))
    if pending is not None:
        collect(*pending)
    return np.concatenate(rows)


def load_inputs(config: ml_collections.ConfigDict, workdir: str, default_output: str,
                label_studio: bool = False) -> tuple[TrainedModel, list[tuple[str, str]], str]:
    """The trained model, the (id, input) rows of config.serving.input_files and the output path; nothing compiled
    yet. The output (`check_output`) and the inputs are checked once the checkpoint is chosen, before it is
    restored: a bad path or a missing file fails in a moment, not after the model loaded or ran over every input."""
    from lm import config_checks
    from lm.serving import images, trained

    config_checks.check_static(config)
    step = trained.checkpoint_step(workdir, str(config.eval_checkpoint))  # A wrong --workdir fails here.
    path = check_output(config, workdir, default_output, label_studio)
    rows = images.read_inputs(config) if trained.modality(workdir) == "image" else read_inputs(config)
    model = trained.load(workdir, str(step), config.serving.length_buckets)
    return model, rows, path


def label_studio_path(output: str) -> str:
    """Where select writes the Label Studio tasks (config.serving.label_studio): beside config.serving.output."""
    return os.path.splitext(output)[0] + "_label_studio.json"


def check_output(config: ml_collections.ConfigDict, workdir: str, default_name: str,
                 label_studio: bool = False) -> str:
    """config.serving.output, else WORKDIR/`default_name`, checked where it is written (process 0) with
    `lm.files.check_writable`: not a directory, its directory created if missing, writable; with `label_studio`,
    the Label Studio file beside it too. On many hosts a failed check stops every process (with its message)."""
    from lm import files

    path = config.serving.output or os.path.join(workdir, default_name)

    def check() -> None:
        fix = "Set --config.serving.output to a file in a directory you can write (a missing directory is created)."
        files.check_writable(path, files.setting("config.serving.output", config.serving.output, path), fix)
        if label_studio:
            tasks = label_studio_path(path)
            files.check_writable(tasks, f"the Label Studio tasks file {tasks!r} (config.serving.label_studio=True)",
                                 "Set --config.serving.output to another file: the tasks go beside it, to "
                                 "OUTPUT_label_studio.json for OUTPUT.jsonl (or set --config.serving.label_studio="
                                 "False).")

    distributed.on_process_zero(check, f"check {path}", config.distributed.process_zero_timeout_s)
    return path


def predict_rows(config: ml_collections.ConfigDict, model: TrainedModel,
                 rows: list[tuple[str, str]]) -> tuple[list[dict], np.ndarray]:
    """Predict's records (id, input, label, probabilities by class name, step) and the probability matrix."""
    from lm import files, sharding

    mesh = sharding.create_mesh(config.mesh)
    if config.eval_batch_size % sharding.data_parallel_size(mesh):
        raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be a multiple of the data-parallel "
                         f"size {sharding.data_parallel_size(mesh)} of the mesh.")
    read = files.read_bytes if model.modality == "image" else (lambda text: text)
    probabilities = probabilities_over(model, [x for _, x in rows], config.eval_batch_size, mesh, read)
    records = [{"id": row_id, "input": x, "label": model.label_names[int(p.argmax())],
                "probabilities": {name: float(v) for name, v in zip(model.label_names, p)}, "step": model.step}
               for (row_id, x), p in zip(rows, probabilities)]
    return records, probabilities


def write_jsonl(path: str, records: list[dict]) -> None:
    import tensorflow as tf

    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def run_predict(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=predict: one JSONL line per input row, in input order -> config.serving.output."""
    model, rows, path = load_inputs(config, workdir, "predictions.jsonl")
    records, _ = predict_rows(config, model, rows)
    distributed.on_process_zero(lambda: write_jsonl(path, records), f"write {path}",
                                config.distributed.process_zero_timeout_s)
    log.info("Wrote %d predictions of step %d to %s.", len(records), model.step, path)
    return {"predictions": path, "count": len(records), "step": model.step}


def run_select(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=select: the config.serving.top_k most uncertain inputs, ranked, as JSONL (and Label Studio tasks)."""
    from lm.serving import select

    labelled = select.read_labelled_ids([p.strip() for p in config.serving.exclude_files.split(",") if p.strip()])
    model, rows, path = load_inputs(config, workdir, "selection.jsonl", config.serving.label_studio)
    exclude = select.excluded_rows([row_id for row_id, _ in rows], labelled)  # Logged before the model runs.
    records, probabilities = predict_rows(config, model, rows)
    chosen = select.selection_records(records, probabilities, config.serving.strategy, config.serving.top_k, exclude)
    result = {"selection": path, "count": len(chosen), "step": model.step}
    if config.serving.label_studio:
        result["label_studio"] = label_studio_path(path)

    def write() -> None:
        write_jsonl(path, chosen)
        if config.serving.label_studio:
            import tensorflow as tf

            tasks = [select.label_studio_task(r, model.label_names, model.modality) for r in chosen]
            with tf.io.gfile.GFile(result["label_studio"], "w") as f:
                json.dump(tasks, f, ensure_ascii=False, indent=1)

    distributed.on_process_zero(write, f"write {path}", config.distributed.process_zero_timeout_s)
    log.info("Selected the %d most uncertain of %d inputs by %s -> %s", len(chosen), len(records),
             config.serving.strategy, path)
    return result
