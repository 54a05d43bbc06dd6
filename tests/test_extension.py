"""Extending `lm` from outside it: a new model family, a new task and a new data source, defined and registered in
this file only (nothing under lm/, input_pipeline/ or configs/ names them), train through `lm.run` with a
checkpoint, a resume and a final evaluation; a weight format registered here loads into a family that lists it.

The family is a two-layer perceptron over images; the task is classification trained with the Brier score (the
squared error between the predicted distribution and the one-hot label) instead of cross-entropy. Data sources
are in `SOURCES`: each gives the `config.data` overrides of one source: scikit-learn's digits (built in) and
`test_blobs`, registered below (8x8 RGB images whose class is the bright quadrant).
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import input_pipeline
import lm
from configs import common, vision_data
from input_pipeline import source
from lm import models, step_log, tasks, weights
from lm.paths import param_name
from lm.tasks.classification import ClassificationTask
from lm.weights import pretrained
from lm.weights.report import ImportReport


class TinyMLP(nnx.Module):
    """Flattened pixels -> hidden ReLU layer -> logits. Its parameters carry no sharding names: replicated."""

    def __init__(self, model: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(model.image_size**2 * 3, model.hidden_size, rngs=rngs)
        self.head = nnx.Linear(model.hidden_size, model.num_classes, rngs=rngs)

    def __call__(self, image: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        del deterministic, rngs  # No dropout, no BatchNorm.
        x = image.reshape(image.shape[0], -1).astype(jnp.float32)
        return self.head(jax.nn.relu(self.hidden(x)))


MLP = models.register_model(models.ModelFamily(
    name="test_tiny_mlp",
    build=lambda model, rngs: TinyMLP(model, rngs=rngs),
    modality="image",
    input_keys=("image",),
    head_name=lambda model: "head",
    classifier_head="head",
    importers=("workdir",),
))


@dataclasses.dataclass(frozen=True)
class BrierTask(ClassificationTask):
    """Classification whose training loss is the Brier score; evaluation is classification's (confusion matrix)."""

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        targets = jax.nn.one_hot(batch["label"], self.num_classes)
        loss = jnp.mean(jnp.sum(jnp.square(jax.nn.softmax(logits) - targets), axis=-1))
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


BRIER = tasks.register_task(tasks.TaskSpec(
    name="test_brier",
    create=lambda config, family: BrierTask(num_classes=config.model.num_classes, input_keys=family.input_keys),
    pipelines={"image": "images"},
    batch_keys=("label",),
    metrics=("accuracy", "loss", "f1_macro"),
    best_metric="accuracy",
))

@input_pipeline.register_source("test_blobs", fields=[("image", "label")])
def _blobs(request: source.Request) -> source.InMemory:
    """A data source of this test: 8x8 RGB noise with one bright quadrant, the class (4 of the 10 used)."""
    rng = np.random.default_rng(request.config.seed)
    labels = rng.integers(0, 4, size=400)
    images = rng.integers(0, 64, size=(400, 8, 8, 3)).astype(np.uint8)
    for image, label in zip(images, labels):
        row, col = divmod(int(label), 2)
        image[4 * row:4 * row + 4, 4 * col:4 * col + 4] += 160
    examples = [{"image": image, "label": int(label)} for image, label in zip(images, labels)]
    return source.InMemory(description="test blobs", class_names=[str(i) for i in range(10)],
                           splits={"train": source.columns(examples, request.fields)})


# Data source -> config.data overrides. Digits are scikit-learn's (offline, 1797 images of 8x8, 10 classes).
SOURCES = {"digits": {"source": "digits"}, "test_blobs": {"source": "test_blobs"}}


def _config(source: str) -> ml_collections.ConfigDict:
    config = common.training_defaults()
    config.task = BRIER.name
    config.data = vision_data.image_data_config("digits")
    config.data.update(SOURCES[source])
    config.data.update(channels=3, image_size=8, augmentation="none", eval_resize=0)
    config.model = ml_collections.ConfigDict({"name": MLP.name, "image_size": 8, "hidden_size": 32,
                                              "num_classes": 10, "dtype": "float32"})
    config.optimizer.update(learning_rate=3e-3, warmup_fraction=0.0, schedule="constant")
    config.update(global_batch_size=32, eval_batch_size=64, num_train_steps=4, log_every=2, eval_every=2,
                  checkpoint_every=2, eval_splits_at_end=("test",), peak_flops_per_device=1.0)
    config.debug.step_log = True  # "start STEP" lines show where each run began.
    return config


def test_registered_names_resolve():
    config = _config("digits")
    assert models.model_family(config.model) is MLP and tasks.task_spec(config.task) is BRIER
    assert models.head_name(config.model) == "head" and models.layer_stack(config.model) is None
    with pytest.raises(ValueError, match="config.task='test_brier' has no input pipeline for text models"):
        BRIER.pipeline(models.model_family("bert"))


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_new_family_and_task_train_resume_and_evaluate(tmp_path, source, monkeypatch):
    workdir = tmp_path / "run"
    config = _config(source)
    losses, brier = [], BrierTask.loss  # The registered task's loss, as the train step calls it (when traced).
    monkeypatch.setattr(BrierTask, "loss", lambda self, logits, batch: losses.append(logits.shape) or
                        brier(self, logits, batch))
    first = lm.run(config, str(workdir), "train")
    assert losses and all(shape[-1] == 10 for shape in losses)  # The Brier task trained the tiny MLP's logits.
    assert first["test"]["num_examples"] > 0 and 0.0 <= first["test"]["accuracy"] <= 1.0

    config.num_train_steps = 6  # The same workdir: resumes from the step-4 checkpoint and trains 2 more steps.
    final = lm.run(config, str(workdir), "train")
    starts = [int(words[1]) for words in step_log.read(str(workdir)) if words[0] == "start"]
    assert starts == [0, 4]
    assert final["test"]["step"] in (2, 4, 6)  # The best checkpoint by validation accuracy.
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 6

    config.eval_checkpoint, config.eval_split = "latest", "validation"
    evaluated = lm.run(config, str(workdir), "eval")
    assert evaluated["step"] == 6 and evaluated["num_examples"] > 0
    saved = json.loads((workdir / "metrics_validation.json").read_text())
    assert saved["accuracy"] == evaluated["accuracy"]


class _ToyImporter:
    """A weight format of this test: a `.toy` file whose text is one number, for every parameter."""

    @staticmethod
    def detect(path: str) -> bool:
        return path.endswith(".toy")

    @staticmethod
    def load(path, params, batch_stats):
        value = float(pathlib.Path(path).read_text())
        report = ImportReport(source=path)
        new = jax.tree_util.tree_map_with_path(
            lambda keypath, leaf: report.loaded.append(param_name(keypath)) or jnp.full(leaf.shape, value), params)
        return new, None, report


def test_a_registered_importer_loads_and_a_family_refuses_others(tmp_path):
    weights.register_importer("test_toy", _ToyImporter)
    models.register_model(dataclasses.replace(MLP, name="test_toy_mlp", importers=("test_toy",)))
    config = _config("digits")
    config.model.name = "test_toy_mlp"
    (tmp_path / "weights.toy").write_text("0.5")
    config.init_from = str(tmp_path / "weights.toy")
    params = {"hidden": {"kernel": np.zeros((2, 3), np.float32)}, "head": {"bias": np.zeros(3, np.float32)}}
    new, batch_stats, report = pretrained.load_into(config, params, {})
    assert batch_stats is None and report["loaded"] == ["head/bias", "hidden/kernel"]
    np.testing.assert_array_equal(new["hidden"]["kernel"], 0.5)

    config.model.name = MLP.name  # Loads from our workdirs only.
    message = r"is a test_toy checkpoint; config.model.name='test_tiny_mlp' loads \('workdir',\)"
    with pytest.raises(ValueError, match=message):
        pretrained.load_into(config, params, {})
