"""SimCLR: NT-Xent against a plain numpy reference, two seeded views per image, pretraining then a linear probe."""

import jax
import numpy as np
import pytest

import lm
from configs import vision_classification, vision_pretrain
from input_pipeline import image_classification
from lm import checkpointing, config_checks, experiment
from lm.tasks import simclr


def _reference_nt_xent(z1: np.ndarray, z2: np.ndarray, temperature: float) -> np.ndarray:
    """Chen et al. 2020, Algorithm 1, one term at a time."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    losses = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        similarities = np.array([z[i] @ z[k] / temperature for k in range(2 * n)])
        denominator = sum(np.exp(similarities[k]) for k in range(2 * n) if k != i)
        losses.append(-np.log(np.exp(similarities[positive]) / denominator))
    return np.array(losses)


def test_nt_xent_matches_the_reference():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    losses, correct = simclr.nt_xent(z1, z2, 0.5)
    np.testing.assert_allclose(losses, _reference_nt_xent(z1, z2, 0.5), rtol=1e-5)
    close = z1 + 0.01 * rng.normal(size=z1.shape)  # Views that nearly agree: every positive is the nearest.
    _, correct = simclr.nt_xent(z1, close, 0.1)
    np.testing.assert_array_equal(correct, 1.0)


def test_nt_xent_leaves_padded_images_out():
    """With weight 0 on the last two images, the others' losses equal the reference on the first four alone."""
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    weights = np.array([1, 1, 1, 1, 0, 0], np.float32)
    losses, _ = simclr.nt_xent(z1, z2, 0.2, weights)
    expected = _reference_nt_xent(z1[:4], z2[:4], 0.2)
    np.testing.assert_allclose(np.concatenate([losses[:4], losses[6:10]]), expected, rtol=1e-5)


def test_the_task_projects_both_views_in_one_pass():
    """logits: the model's output for `image` then for `image_view2`, in one call (BatchNorm sees both views);
    the loss is NT-Xent over exactly those two halves."""
    rng = np.random.default_rng(2)
    batch = {"image": rng.normal(size=(4, 3, 3, 1)).astype(np.float32),
             "image_view2": rng.normal(size=(4, 3, 3, 1)).astype(np.float32)}
    calls = []

    def model(images, *, deterministic, rngs=None):
        calls.append(images.shape)
        return images.reshape(len(images), -1) * 2.0

    task = simclr.SimCLRTask(temperature=0.5)
    projections = task.logits(model, batch, deterministic=True)
    assert calls == [(8, 3, 3, 1)]
    np.testing.assert_array_equal(projections[:4], batch["image"].reshape(4, -1) * 2.0)
    np.testing.assert_array_equal(projections[4:], batch["image_view2"].reshape(4, -1) * 2.0)
    loss, _ = task.loss(projections, batch)
    expected = _reference_nt_xent(batch["image"].reshape(4, -1), batch["image_view2"].reshape(4, -1), 0.5).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def _smoke_config():
    return vision_pretrain.get_config("resnet_small,digits,smoke")


def test_two_views_differ_and_replay():
    data = image_classification.ImageClassificationData(config_checks.resolved_copy(_smoke_config()))
    batch = next(data.train_iterator())
    assert batch["image"].shape == batch["image_view2"].shape == (16, 16, 16, 3)
    assert not np.allclose(batch["image"], batch["image_view2"])
    np.testing.assert_array_equal(next(data.train_iterator())["image_view2"], batch["image_view2"])
    first, again = (next(data.eval_batches("validation")) for _ in range(2))
    assert not np.allclose(first["image"], first["image_view2"])
    np.testing.assert_array_equal(first["image_view2"], again["image_view2"])


def test_simclr_pretraining_then_linear_probe(tmp_path):
    pretrain_dir = tmp_path / "simclr"
    result = lm.run(_smoke_config(), str(pretrain_dir), "train")["validation"]
    assert np.isfinite(result["loss"]) and 0 <= result["accuracy"] <= 1 and result["num_examples"] > 0

    probe = vision_classification.get_config("resnet_small,digits,smoke")
    probe.init_from, probe.trainable = str(pretrain_dir), "head"
    exp = experiment.build(config_checks.resolved_copy(probe))
    params = jax.device_get(experiment.initial_state(exp)["params"])
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(pretrain_dir), read_only=True)
    source, _ = ckpt.restore_raw(ckpt.latest_step())
    ckpt.close()
    np.testing.assert_array_equal(params["stem"]["conv"]["kernel"], source["params"]["stem"]["conv"]["kernel"])
    assert "projection" in source["params"] and "projection" not in params and "head" in params
    final = lm.run(probe, str(tmp_path / "probe"), "train")["test"]
    assert final["num_examples"] > 0


def test_simclr_config_errors():
    config = _smoke_config()
    config.data.views = 1
    with pytest.raises(ValueError, match="config.data.views=2"):
        config_checks.resolved_copy(config)
