"""Each vision family's smoke config trains on TFDS mock data and on an image folder, evaluates,
checkpoints and resumes; the quickstart config is what `make quickstart` runs."""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import lm
from configs import vision_classification
from lm import train


def _write_folder(root, classes=("cat", "dog"), per_class=24, size=20):
    """Class-coloured noisy images, PNG and JPEG: learnable, tiny."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3)) + np.array([150 * (k == 0), 150 * (k == 1), 40])
            ext = "png" if j % 2 else "jpg"
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / name / f"{j}.{ext}")
    return root


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _final_state(workdir):
    """(step, parameters and BatchNorm statistics as numpy leaves) of the latest checkpoint."""
    from lm import checkpointing

    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)
    state, _ = ckpt.restore_raw(ckpt.latest_step())
    ckpt.close()
    return int(state["step"]), jax.tree.leaves(jax.device_get((state["params"], state["batch_stats"])))


# The straight-run comparison (one more run) for ResNet, whose smoke config has BatchNorm statistics; BERT's
# exact resume is tested in tests/test_train.py.
@pytest.mark.parametrize("model, compare", [("resnet_small", True), ("vgg11", False), ("vit_ti16", False)])
def test_family_trains_on_folder_and_resumes(tmp_path, model, compare, monkeypatch):
    """A run stopped after its step-2 checkpoint resumes there and finishes; with `compare`, it ends with the
    parameters and BatchNorm statistics of a run that was never stopped, bit for bit."""
    folder = _write_folder(tmp_path / "images")
    config = vision_classification.get_config(f"{model},folder,smoke")
    config.data.train_dir = str(folder)
    if compare:
        lm.run(config, str(tmp_path / "straight"), "train")
    workdir = tmp_path / "run"

    # Stop the first run after its step-2 checkpoint (as a killed job would) ...
    original = train._train_loop

    def stop_after_checkpoint(exp, state, checkpointer, *rest):
        exp.total_steps = 2  # the step-2 checkpoint is written, then the loop ends early
        return original(exp, state, checkpointer, *rest)

    monkeypatch.setattr(train, "_train_loop", stop_after_checkpoint)
    monkeypatch.setattr(train, "_final_evaluation", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        lm.run(config, str(workdir), "train")
    assert _steps(workdir) == [2]
    monkeypatch.undo()

    # ... and the restart resumes at step 2 and finishes the 4 steps.
    starts = []
    monkeypatch.setattr(train, "_train_loop", lambda exp, state, *a: starts.append(int(state["step"])) or original(
        exp, state, *a))
    result = lm.run(config, str(workdir), "train")
    assert starts == [2]
    assert _steps(workdir)[-1] == 4
    test_metrics = json.loads((workdir / "metrics_test.json").read_text())
    assert test_metrics["num_examples"] == result["test"]["num_examples"] > 0
    assert np.array(test_metrics["confusion_matrix"]).shape == (2, 2)
    if compare:
        (straight_step, straight), (resumed_step, resumed) = _final_state(tmp_path / "straight"), _final_state(workdir)
        assert straight_step == resumed_step == 4 and len(straight) == len(resumed)
        for a, b in zip(straight, resumed):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "model",
    # The TFDS path is the same for every family: VGG and ViT on it run in `make test-all`.
    ["resnet_small", pytest.param("vgg11", marks=pytest.mark.slow), pytest.param("vit_ti16", marks=pytest.mark.slow)],
)
def test_family_trains_on_mock_tfds(tmp_path, model):
    config = vision_classification.get_config(f"{model},cifar10,smoke")
    with tfds.testing.mock_data(num_examples=48):
        result = lm.run(config, str(tmp_path / "run"), "train")
    assert result["test"]["num_examples"] == 48
    assert "top5_accuracy" in result["test"]
    assert _steps(tmp_path / "run")[-1] == 4


def test_quickstart_config_is_offline_digits():
    config = vision_classification.get_config("")
    assert config.data.source == "digits" and config.model.name == "resnet"


@pytest.mark.parametrize("arg", ["vit_b16,oxford_iiit_pet", "resnet50,oxford_flowers102", "vgg16,folder"])
def test_transfer_configs_build(arg):
    from configs import vision_transfer

    config = vision_transfer.get_config(arg)
    assert config.optimizer.name == "sgd" and config.data.image_size == 224
    assert config.model.name == arg.split(",")[0][:3].replace("res", "resnet")
