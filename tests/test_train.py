"""End-to-end training: main.py on mock TFDS data, learning a synthetic task, resuming after a stop."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import lm
from configs import bert_sentiment
from lm import train
from tests import text_data

ROOT = pathlib.Path(__file__).resolve().parents[1]


def smoke_config(vocab: pathlib.Path, **overrides):
    config = bert_sentiment.get_config("smoke")
    config.data.vocab_path = str(vocab)
    config.model.vocab_size = -1
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        if leaf not in node:  # As main.py's locked config: a misspelt key must not pass silently.
            raise KeyError(f"smoke_config: {key!r} is not a key of the config")
        node[leaf] = value
    return config


def files_config(vocab, csv_path, **overrides):
    return smoke_config(
        vocab,
        **{"data.source": "files", "data.train_files": str(csv_path), "data.text_field": "review",
           "data.label_field": "sentiment", "data.label_names": ("negative", "positive"), **overrides},
    )


MOCK_MAIN = """
import sys
import tensorflow_datasets as tfds
from absl import app
import main
with tfds.testing.mock_data(num_examples=64):
    app.run(main.main)
"""


def _run_main(args: list[str]) -> subprocess.CompletedProcess:
    """Runs main.py in a fresh process, as a user would, on TFDS mock data (no network)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", MOCK_MAIN, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_main_smoke_on_mock_tfds(tmp_path, minilm_vocab):
    """main.py trains, evaluates and leaves a checkpoint, a TensorBoard event file and metrics JSON."""
    workdir = tmp_path / "run"
    args = ["--config=configs/bert_sentiment.py:mini,imdb,smoke", f"--workdir={workdir}",
            f"--config.data.vocab_path={minilm_vocab}", "--config.model.vocab_size=-1"]
    result = _run_main(args)
    assert "ETA" in result.stderr and "train/loss" in result.stderr
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
    assert list(workdir.glob("events.out.tfevents.*"))
    metrics = json.loads((workdir / "metrics_test.json").read_text())
    assert metrics["num_examples"] == 64
    assert set(metrics) >= {"accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion_matrix", "loss"}

    config = bert_sentiment.get_config("mini,imdb,smoke")
    config.data.vocab_path, config.model.vocab_size = str(minilm_vocab), -1
    config.eval_split, config.eval_checkpoint = "validation", "latest"
    with tfds.testing.mock_data(num_examples=64):
        lm.run(config, str(workdir), "eval")
    validation = json.loads((workdir / "metrics_validation.json").read_text())
    assert validation["step"] == 6
    assert validation["num_examples"] == 64  # mock_data ignores split slicing.


def test_learns_synthetic_task(tmp_path, small_vocab):
    """A tiny BERT from scratch learns which cue word decides the label: >= 95% test accuracy."""
    csv_path = text_data.write_csv(tmp_path / "reviews.csv", text_data.sentiment_rows(1200))
    config = files_config(
        small_vocab, csv_path, num_train_steps=120, eval_every=60, checkpoint_every=60, log_every=20,
        global_batch_size=32, eval_batch_size=64, **{"optimizer.learning_rate": 2e-3, "optimizer.warmup_steps": 10},
    )
    result = lm.run(config, str(tmp_path / "run"), "train")
    assert result["test"]["accuracy"] >= 0.95, result["test"]
    assert result["test"]["num_examples"] == 120


class _StopAfter:
    """Wraps a train iterator so that the run dies after `n` batches, as a killed job would."""

    def __init__(self, iterator, n):
        self.iterator, self.left = iterator, n

    def __iter__(self):
        return self

    def __next__(self):
        if self.left == 0:
            raise KeyboardInterrupt("stopped by the test")
        self.left -= 1
        return next(self.iterator)


def _final_params(workdir):
    from lm import checkpointing

    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)
    state, _ = ckpt.restore_raw(ckpt.latest_step())
    ckpt.close()
    return jax.tree.leaves(jax.device_get(state["params"])), int(state["step"])


def test_resume_after_stop(tmp_path, small_vocab, monkeypatch):
    """A run stopped at step 5 restarts from its step-4 checkpoint and ends where a straight run ends."""
    csv_path = text_data.write_csv(tmp_path / "reviews.csv", text_data.sentiment_rows(300))
    config = files_config(small_vocab, csv_path, num_train_steps=8, checkpoint_every=4, eval_every=100)

    lm.run(config, str(tmp_path / "straight"), "train")

    from input_pipeline import text_classification

    original = text_classification.TextClassificationData.train_iterator
    monkeypatch.setattr(text_classification.TextClassificationData, "train_iterator",
                        lambda self, start_step=0: _StopAfter(original(self, start_step), 5))
    with pytest.raises(KeyboardInterrupt):
        lm.run(config, str(tmp_path / "stopped"), "train")
    monkeypatch.setattr(text_classification.TextClassificationData, "train_iterator", original)
    steps = sorted(int(p.name) for p in (tmp_path / "stopped" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4]

    starts = []
    real_loop = train._train_loop
    monkeypatch.setattr(train, "_train_loop",
                        lambda exp, state, *a: starts.append(int(state["step"])) or real_loop(exp, state, *a))
    lm.run(config, str(tmp_path / "stopped"), "train")
    assert starts == [4]
    straight, straight_step = _final_params(tmp_path / "straight")
    resumed, resumed_step = _final_params(tmp_path / "stopped")
    assert straight_step == resumed_step == 8
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)

    # The 8-device checkpoint restores onto another device count: 2 devices, split 1 x 2 (data x fsdp).
    from lm import checkpointing, config_checks, experiment

    small = experiment.build(config_checks.resolved_copy(files_config(
        small_vocab, csv_path, **{"mesh.data": 1, "mesh.fsdp": 2})), jax.devices()[:2])
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(tmp_path / "stopped"), read_only=True)
    state, _ = ckpt.restore(8, small.spec.abstract)
    ckpt.close()
    kernel = state["params"]["encoder"]["layers"][0]["intermediate"]["kernel"]
    assert len(kernel.sharding.device_set) == 2 and kernel.sharding.spec[0] == "fsdp"
    for a, b in zip(straight, jax.tree.leaves(jax.device_get(state["params"]))):
        np.testing.assert_array_equal(a, b)
