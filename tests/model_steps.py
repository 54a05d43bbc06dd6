"""The trainer's jitted step on synthetic batches, without an input pipeline: for tests of models and of the step.

`experiment_for(config)` builds what `lm.experiment.build` builds except the data (mesh, batch-size checks, task,
optimizer, state layout), so `lm.train.jit_train_step` compiles the step exactly as training does;
`experiment.initial_state(exp)` gives its fresh state and `train_losses` runs it over random batches.
"""

import re

import jax
import ml_collections
import numpy as np

from configs import bert_sentiment, vision_classification
from lm import config_checks, experiment, optimizers, sharding, train
from lm import state as state_lib
from lm.models import packing, vit

# A ViT small enough for tests, with heads and MLP divisible by a tensor axis of 2: (hidden, layers, heads).
TEST_VIT = ("Test", (64, 2, 4))


def use_test_vit(monkeypatch) -> None:
    monkeypatch.setitem(vit.VIT_SIZES, TEST_VIT[0], TEST_VIT[1])


def _constant_adamw(config: ml_collections.ConfigDict, learning_rate: float) -> None:
    config.optimizer.update(name="adamw", learning_rate=learning_rate, schedule="constant", warmup_steps=0)


def bert_config(learning_rate: float = 1e-3, **model) -> ml_collections.ConfigDict:
    """A 2-layer BERT (hidden 128, 2 heads) over a 100-token vocabulary, classifying 16-token texts."""
    config = bert_sentiment.get_config("files,smoke")
    config.model.update(vocab_size=100, **model)
    config.data.max_length = 16
    _constant_adamw(config, learning_rate)
    return config


def vision_config(name: str, learning_rate: float = 1e-3, **model) -> ml_collections.ConfigDict:
    """`name` (resnet_small, vgg11 or vit_test) at its smoke size: 16x16 images (VGG 32x32), 2 classes."""
    family = "vit_ti16" if name == "vit_test" else name
    config = vision_classification.get_config(f"{family},arrays,smoke")
    if name == "vit_test":
        config.model.variant = TEST_VIT[0]
    config.model.update(num_classes=2, **model)
    _constant_adamw(config, learning_rate)
    return config


def experiment_for(config: ml_collections.ConfigDict, devices=None) -> experiment.Experiment:
    config = config_checks.resolved_copy(config)
    mesh = sharding.create_mesh(config.mesh, devices)
    config_checks.check_batch_sizes(config, sharding.data_parallel_size(mesh), jax.process_count())
    steps = config.num_train_steps
    tx, schedule = optimizers.create_optimizer(config.optimizer, steps, config.model)
    spec = state_lib.state_spec(config.model, tx, mesh, config.axis_rules, config.seed,
                                trainable=lambda params: optimizers.trainable_mask(params, config))
    return experiment.Experiment(config, mesh, None, experiment.create_task(config), tx, schedule, spec, steps, steps,
                                 steps)


def text_batch(seed: int, batch_size: int = 16, length: int = 16, vocab: int = 100) -> dict[str, np.ndarray]:
    """Right-padded texts after [CLS] (id 2): class 0 draws its tokens from the lower half of the ids, class 1
    from the upper half."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, batch_size).astype(np.int32)
    middle = (vocab + 5) // 2
    low = np.where(labels == 1, middle, 5)[:, None]
    ids = (low + rng.integers(0, vocab - middle, (batch_size, length))).astype(np.int32)
    ids[:, 0] = 2
    lengths = rng.integers(4, length + 1, batch_size)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids), "label": labels}


def image_batch(seed: int, batch_size: int = 16, size: int = 16) -> dict[str, np.ndarray]:
    """Noisy images whose class (0 or 1) brightens the red or the green channel."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, batch_size).astype(np.int32)
    images = rng.normal(0.0, 1.0, (batch_size, size, size, 3)).astype(np.float32)
    images[..., 0] += np.where(labels == 0, 1.0, -1.0)[:, None, None]
    images[..., 1] += np.where(labels == 1, 1.0, -1.0)[:, None, None]
    return {"image": images, "label": labels}


def train_losses(exp: experiment.Experiment, batches: list[dict]) -> tuple[np.ndarray, dict, object]:
    """(the loss of each step, the final state, the first batch's compiled step) of training from a fresh state;
    as the trainer does, a batch that packs (lm/models/packing.py) runs the packed step."""
    state, steps, losses = experiment.initial_state(exp), {}, []
    with jax.set_mesh(exp.mesh):
        for batch in batches:
            packed, global_batch = packing.packs(exp.config, exp.mesh, batch), sharding.global_batch(batch, exp.mesh)
            if packed not in steps:
                steps[packed] = train.jit_train_step(exp, packed).lower(state, global_batch).compile()
            state, metrics = steps[packed](state, global_batch)
            losses.append(float(metrics["loss"]))
    return np.array(losses), state, next(iter(steps.values()))  # The first compiled: the first batch's.


def copies_of_size(hlo: str, sizes: tuple[int, ...]) -> list[str]:
    """Shapes of the float32 copies and transposes in compiled HLO text whose element count is one of `sizes`."""
    shapes = re.findall(r"%(?:copy|transpose)[\w.]* = f32\[([\d,]+)\]", hlo)
    return [shape for shape in shapes if np.prod([int(n) for n in shape.split(",")]) in sizes]
