"""A trained workdir as a function from raw inputs to class probabilities: what predict, export and serve share.

`load(workdir, which)` reads one checkpoint onto the host (any mesh it was trained on), the model's shape from
the checkpoint, and the data keys (vocabulary, `max_length`, label names) from the run's WORKDIR/config.json;
for an image model, the class names and evaluation's resolved preprocessing (size, channels, resize, mean and
std, which may come from the source's defaults) from WORKDIR/serving_facts.json, which training writes. So a
workdir alone is enough: the training data need not be present. Raw text goes through the training pipeline's
own tokenizer (`input_pipeline.tokenization`), encoded images through evaluation's own preprocessing
(`input_pipeline.image_eval`), so served and trained inputs cannot drift apart.
"""

import dataclasses
import json
import logging
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from flax import nnx

from input_pipeline import bucketing
from lm import checkpointing, evaluate, files, models, tasks
from lm import state as state_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainedModel:
    workdir: str
    step: int
    model: ml_collections.ConfigDict  # The model section the weights were trained with.
    data: ml_collections.ConfigDict  # The run's data section (config.json).
    label_names: tuple[str, ...]
    variables: tuple[dict, dict]  # (params, batch_stats) as host arrays.
    input_keys: tuple[str, ...]
    probabilities: Callable[[tuple[dict, dict], dict], jax.Array]  # Pure: jit it, or hand it to jax2tf.
    # [batch] raw inputs (TF strings) -> model inputs (TF); `.encode(list)` gives numpy model inputs.
    preprocess: Callable[[tf.Tensor], dict[str, tf.Tensor]]
    input_specs: dict[str, tf.TensorSpec]  # The model inputs, batch dimension None.
    raw_name: str  # The raw input's name in the SavedModel: "texts" or "image_bytes".
    modality: str  # "text" or "image"
    warmup_raw: str | bytes  # One valid raw input: the warm-up request.
    # Text: the token lengths a batch is cut to, as in training's evaluation (the smallest that holds its longest
    # example; input_pipeline/bucketing.py); (max_length,) when the run did not bucket, () when its config.json
    # predates data.bucket_lengths or config.serving.length_buckets is False: no cut. Images: ().
    length_buckets: tuple[int, ...] = ()

    def encode(self, raw: list) -> dict[str, np.ndarray]:
        """Raw inputs -> numpy model inputs; text is cut to the bucket of its longest example."""
        batch = self.preprocess.encode(raw)
        return bucketing.cut_host_batch(batch, self.length_buckets) if len(self.length_buckets) > 1 else batch


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config the run in `workdir` wrote at its start."""
    return ml_collections.ConfigDict(files.read_run_config(workdir))


# Sections of a run's config.json that describe the machine it ran on, not the run: kept from the command line.
MACHINE_KEYS = ("mesh", "distributed")


def data_config(config: ml_collections.ConfigDict, workdir: str,
                overrides: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """The config that reads the run's data as the run read it: `config` (the command line's, with today's
    defaults) with the values of WORKDIR/config.json laid over it, except the keys the user set (`overrides`,
    dotted) and the machine's sections (MACHINE_KEYS). Keys the run's config.json lacks (older runs) keep their
    defaults; keys only it has are left out. `init_from` is cleared unless set: config.json holds what it
    resolved to (vocabulary, classes, architecture), and the weights it named need not still exist."""
    merged = config.copy_and_resolve_references()
    keep = set(overrides) | set(MACHINE_KEYS)
    if "init_from" not in keep:
        merged.init_from = ""
        keep.add("init_from")
    _lay_over(merged, run_config(workdir).to_dict(), keep)
    return merged


def _lay_over(config: ml_collections.ConfigDict, values: dict, keep: set[str], prefix: str = "") -> None:
    for key, value in values.items():
        name = prefix + key
        if key not in config or name in keep:
            continue
        if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
            _lay_over(config[key], value, keep, name + ".")
        elif isinstance(config[key], tuple) and isinstance(value, list):  # JSON has no tuples.
            config[key] = tuple(value)
        else:
            config[key] = value


def _classifier_run(workdir: str) -> tuple[ml_collections.ConfigDict, tasks.TaskSpec, str]:
    """The run's config, its task and its checkpoint directory; an error unless it is a classifier with one."""
    run = run_config(workdir)
    spec = tasks.task_spec(run.task)
    if not spec.predicts_classes:
        raise ValueError(f"--workdir={workdir!r} holds a {run.task!r} run; predict, export and serve need a "
                         "classifier. Fine-tune one from it (--config.init_from=WORKDIR) and serve that.")
    ckpt_dir = checkpointing.checkpoint_dir(workdir)
    if not tf.io.gfile.isdir(ckpt_dir):
        raise FileNotFoundError(f"--workdir={workdir!r} has no checkpoints/ directory; train there first.")
    return run, spec, ckpt_dir


def checkpoint_step(workdir: str, which: str = "best") -> int:
    """The step that `load(workdir, which)` restores, chosen from the checkpoints' metadata without restoring one:
    a mode checks the workdir and what it will write (the SavedModel's version is this step) before the model
    loads, then loads this step."""
    run, _, ckpt_dir = _classifier_run(workdir)
    with checkpointing.Checkpointer(ckpt_dir, read_only=True, best_metric=run.best_metric,
                                    best_mode=run.best_mode) as checkpointer:
        return evaluate.select_step(checkpointer, which)


def modality(workdir: str) -> str:
    """What the classifier in `workdir` reads ("text" or "image"), from its config.json, before it loads."""
    run, _, _ = _classifier_run(workdir)
    return models.model_family(run.model).modality


def load(workdir: str, which: str = "best", length_buckets: bool = True) -> TrainedModel:
    """Checkpoint `which` (best | latest | a step number) of a classification run in `workdir`.

    `length_buckets`: text batches are cut to the run's data.bucket_lengths (False: every batch at max_length).

    The run's task must predict classes (`lm.tasks.TaskSpec.predicts_classes`): its logits become probabilities.
    """
    run, spec, ckpt_dir = _classifier_run(workdir)
    with checkpointing.Checkpointer(ckpt_dir, read_only=True, best_metric=run.best_metric,
                                    best_mode=run.best_mode) as checkpointer:
        step = evaluate.select_step(checkpointer, which)
        state, meta = checkpointer.restore_raw(step)
    model = ml_collections.ConfigDict(meta["model"])
    with nnx.use_eager_sharding(False):
        graphdef = nnx.split(nnx.eval_shape(lambda: models.create_model(model, rngs=nnx.Rngs(0))),
                             nnx.Param, nnx.BatchStat)[0]
    family = models.model_family(model)
    if family.modality not in _RAW_INPUTS:
        raise ValueError(f"--workdir={workdir!r} holds a {family.display_name} ({family.modality}) model: predict, "
                         f"export_savedmodel and serve take {' or '.join(_RAW_INPUTS)} classifiers.")
    input_keys = family.input_keys
    task = spec.create(ml_collections.ConfigDict({**run.to_dict(), "model": meta["model"]}), family)  # As trained.

    def probabilities(variables: tuple[dict, dict], inputs: dict) -> jax.Array:
        network = state_lib.merge_model(graphdef, *variables)
        logits = task.logits(network, inputs, deterministic=True)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    label_names, preprocess, specs, warmup_raw = _RAW_INPUTS[family.modality](workdir, run, model, input_keys)
    variables = jax.tree.map(np.asarray, jax.device_get((state["params"], state["batch_stats"])))
    log.info("Loaded step %d of %s (%s, %d classes).", step, workdir, model.name, model.num_classes)
    buckets = ()
    if length_buckets and family.modality == "text" and "bucket_lengths" in run.data:
        buckets = bucketing.bucket_lengths(run)
    return TrainedModel(workdir, step, model, run.data, label_names, variables, input_keys, probabilities,
                        preprocess, specs, _RAW_NAMES[family.modality], family.modality, warmup_raw, buckets)


def _text_inputs(workdir: str, run: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
                 input_keys: tuple[str, ...]):
    """Label names, the tokenizer, the token-id specs and a warm-up text of a text model."""
    from input_pipeline import tokenization

    label_names = tuple(run.data.label_names) or tuple(str(i) for i in range(model.num_classes))
    tokenizer = tokenization.WordPieceTokenizer(run.data.vocab_path, run.data.max_length, run.data.lowercase)
    specs = {key: tf.TensorSpec([None, run.data.max_length], tf.int32, name=key) for key in input_keys}
    return label_names, tokenizer, specs, "warm-up request"


def _image_inputs(workdir: str, run: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
                  input_keys: tuple[str, ...]):
    """Class names, evaluation's preprocessing of encoded images, the pixel specs and a warm-up PNG."""
    from input_pipeline.image_eval import EvalImages
    from lm.serving.images import ImagePreprocess

    facts = serving_facts(workdir, run)
    preprocess = ImagePreprocess(EvalImages.from_json(facts["eval_images"]), input_keys[0])
    specs = {key: tf.TensorSpec([None, *preprocess.eval_images.shape], tf.float32, name=key) for key in input_keys}
    return tuple(facts["label_names"]), preprocess, specs, preprocess.blank_png()


_RAW_INPUTS = {"text": _text_inputs, "image": _image_inputs}
# "_bytes": the input-name suffix that Google Cloud's prediction service expects of base64-encoded inputs.
_RAW_NAMES = {"text": "texts", "image": "image_bytes"}


def serving_facts(workdir: str, run: ml_collections.ConfigDict) -> dict:
    """WORKDIR/serving_facts.json; for a run trained before training recorded it, the same facts from its data."""
    import input_pipeline
    from lm import tasks

    path = os.path.join(workdir, files.SERVING_FACTS)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    log.warning("%s does not exist (the run predates it): reading the run's data (config.json) for its class names "
                "and preprocessing.", path)
    pipeline = tasks.task_spec(run.task).pipeline(models.model_family(run.model))
    return input_pipeline.create_data(run, 0, 1, pipeline=pipeline).serving_facts()
