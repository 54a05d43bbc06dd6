"""Every baseline config's smoke variant trains two steps (TFDS mock data or data the test writes) and its
`baseline` section reaches config.json, where lm.report finds it."""

import importlib
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import lm
from configs import baselines

# Baselines whose smoke programs another case (or tests/test_vision_train.py) already builds, and ViT-S/16 (a 224-pixel
# ViT: minutes of compiling on 2 cores), run with the slow tests (`make test-slow`, CI's second stage).
SAME_PROGRAMS = ("bert_base_imdb", "bert_mini_sst2", "vit_b16_imagenet", "vgg16_cifar10", "vit_s16_imagenet")
TFDS_BASELINES = [
    pytest.param(name, marks=pytest.mark.slow) if name in SAME_PROGRAMS else name
    for name in baselines.NAMES if name not in ("minilm_sst2", "resnet_small_mnist")
]


def _smoke(name: str):
    return importlib.import_module(f"configs.baselines.{name}").get_config("smoke")


def _train(config, workdir) -> dict:
    result = lm.run(config, str(workdir), "train")
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["baseline"]["name"] == config.baseline.name
    assert json.loads((workdir / "metrics_test.json").read_text())["step"] == 2
    return result


def test_every_baseline_has_a_config_and_its_paper_number():
    for name in baselines.NAMES:
        config = importlib.import_module(f"configs.baselines.{name}").get_config()
        assert config.baseline.name == name and config.baseline.metric == "accuracy"
        assert config.baseline.paper > 0 or "no paper" in config.baseline.source
        assert f"configs/baselines/{name}.py" in config.baseline.command


@pytest.mark.parametrize("name", TFDS_BASELINES)
def test_tfds_baseline_smoke_trains_two_steps(tmp_path, name, minilm_vocab):
    config = _smoke(name)
    if config.model.name == "bert":
        config.data.vocab_path, config.model.vocab_size = str(minilm_vocab), -1
    if config.data.tfds_name == "imagenet2012":  # TFDS asks for the manual download before mock data replaces it.
        config.data.tfds_manual_dir = str(tmp_path / "manual")
        (tmp_path / "manual").mkdir()
        for tar in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
            (tmp_path / "manual" / tar).touch()
    with tfds.testing.mock_data(num_examples=32):
        result = _train(config, tmp_path / "run")
    assert result["test"]["num_examples"] == 32


def test_minilm_sst2_smoke_trains_two_steps(tmp_path, minilm_vocab):
    config = _smoke("minilm_sst2")
    rng = np.random.default_rng(0)
    for split in ("train", "validation", "test"):
        path = tmp_path / f"{split}.tsv"
        rows = [f"{label}\t{'a good film' if label else 'a bad film'} {i}" for i, label in
                enumerate(rng.integers(0, 2, 40))]
        path.write_text("label\tsentence\n" + "\n".join(rows) + "\n")
        config.data[f"{split}_files"] = str(path)
    config.data.vocab_path, config.model.vocab_size = str(minilm_vocab), -1
    assert _train(config, tmp_path / "run")["test"]["num_examples"] == 40


def test_mnist_smoke_trains_two_steps(tmp_path):
    config = _smoke("resnet_small_mnist")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "digits.npz", x_train=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
             y_train=np.arange(64) % 10, x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
             y_test=np.arange(20) % 10)
    config.data.arrays_path = str(tmp_path / "digits.npz")
    assert _train(config, tmp_path / "run")["test"]["num_examples"] == 20


def test_minilm_sst2_smoke_finds_the_packages_vocabulary():
    """`minilm_sst2:smoke` runs as it is after `python data/prepare.py`: its tiny BERT takes the vocabulary of the
    installed MiniLM package (it failed with "No vocabulary" before)."""
    config = _smoke("minilm_sst2")
    assert config.data.vocab_path.endswith("vocab.txt") and os.path.exists(config.data.vocab_path)
    assert config.model.vocab_size == -1 and config.init_from == ""
