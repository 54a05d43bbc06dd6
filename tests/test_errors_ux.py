"""Errors a new user meets, each in a few lines: an unknown config key, a model built outside create_model,
a TFDS data set that is not prepared on a machine without network."""

import contextlib
import os
import pathlib
import socket
import subprocess
import sys

import jax.numpy as jnp
import pytest
from flax import nnx

from configs import vision_classification
from input_pipeline import tfds_check
from lm import config_keys
from lm.models import bert

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    return vision_classification.get_config("resnet_small,digits,smoke")


@pytest.mark.parametrize("typed, expected", [
    ("optimizer.lr", "optimizer.learning_rate"),
    ("optimzer.learning_rate", "optimizer.learning_rate"),
    ("learning_rate", "optimizer.learning_rate"),
    ("optimizer.weightdecay", "optimizer.weight_decay"),
    ("global_batchsize", "global_batch_size"),
    ("modle.name", "model.name"),
])
def test_unknown_key_suggests_the_nearest_valid_ones(config, typed, expected):
    assert not config_keys.exists(config, typed)
    assert config_keys.suggestions(config, typed)[0] == expected


def test_unknown_override_is_found_in_argv(config):
    argv = ["main.py", "--config=x.py", "--config.num_train_steps=3", "--config.optimizer.lr=1e-3", "--workdir=/w"]
    assert config_keys.unknown_override(config, argv) == "optimizer.lr"
    assert config_keys.unknown_override(config, argv[:3]) is None


def test_main_reports_an_unknown_key_in_a_few_lines(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "main.py", "--config=configs/vision_classification.py:resnet_small,digits,smoke",
         f"--workdir={tmp_path}", "--config.optimizer.lr=1e-3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 4, result.stderr
    assert "config.optimizer.lr" in lines[0] and "Did you mean optimizer.learning_rate?" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "config.json").exists()


def test_main_reports_a_missing_config_file_in_a_few_lines(tmp_path):
    """ml_collections defers this error to the config's first use: a double traceback from inside lm.run."""
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--config", "configs/vision_classification.py:resnet_small,digits",
         f"--workdir={workdir}"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "there is no file 'configs/vision_classification.py'" in lines[0], result.stderr
    assert str(tmp_path) in lines[0] and str(ROOT / "configs") in lines[0]
    assert not workdir.exists()


def test_models_build_outside_create_model():
    """No `nnx.use_eager_sharding(False)` and no mesh: the classes build (and run) as in a notebook."""
    config = bert.BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    encoder = bert.BertEncoder(config, rngs=nnx.Rngs(0))
    _, pooled = encoder(jnp.ones((1, 4), jnp.int32))
    assert pooled.shape == (1, 16)
    classifier = bert.BertClassifier(config, 3, rngs=nnx.Rngs(0))
    assert classifier(jnp.ones((1, 4), jnp.int32)).shape == (1, 3)


# --- TFDS without network -----------------------------------------------------------------------------------


class FakeBuilder:
    def __init__(self, prepared: bool):
        self.prepared, self.calls, self.data_dir = prepared, [], "/data/fake/1.0.0"

    def is_prepared(self) -> bool:
        return self.prepared

    def download_and_prepare(self, **kwargs):
        self.calls.append(kwargs)


def _offline(*args, **kwargs):
    raise OSError(101, "Network is unreachable")


def test_unprepared_tfds_dataset_offline_fails_at_once(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(socket, "create_connection", _offline)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    monkeypatch.setattr(builder, "download_and_prepare", lambda **_: pytest.fail("tried to download"))
    with pytest.raises(ValueError) as error:
        tfds_check.prepare(builder, "mnist", str(tmp_path))
    message = str(error.value)
    assert "config.data.tfds_name='mnist' is not prepared in" in message
    assert "--config.data.tfds_data_dir=" in message and "download_and_prepare()" in message
    assert "storage.googleapis.com:443" in message and "Network is unreachable" in message


def test_prepared_or_online_builders_are_left_to_tfds(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed the network"))
    prepared = FakeBuilder(prepared=True)
    tfds_check.prepare(prepared, "x", "")
    assert prepared.calls == []
    manual = FakeBuilder(prepared=False)
    tfds_check.prepare(manual, "x", "", download_config="manual", needs_network=False)
    assert manual.calls == [{"download_config": "manual"}]

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: contextlib.nullcontext())
    online = FakeBuilder(prepared=False)
    tfds_check.prepare(online, "x", "")
    assert online.calls == [{}]


def test_mock_data_needs_no_network(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(socket, "create_connection", _offline)
    with tfds.testing.mock_data(num_examples=4):
        builder = tfds.builder("mnist", data_dir=str(tmp_path))
        tfds_check.prepare(builder, "mnist", str(tmp_path))


def test_the_probe_goes_through_the_https_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert tfds_check._probe_address() == ("proxy.internal", 3128)


def test_a_folder_without_config_json_is_named_as_the_user_gave_it(tmp_path, config):
    """predict/serve/export (--workdir), fine-tuning from it (config.init_from) and lm.report all read a run's
    config.json through one reader; a folder that is no run of ours gets one message, naming the flag."""
    from lm import report
    from lm.serving import trained
    from lm.weights import workdir as workdir_source

    (tmp_path / "checkpoints").mkdir()  # Looks like a workdir to the importer's detect(), but holds no config.json.
    with pytest.raises(FileNotFoundError, match=r"--workdir='.*' has no config.json: it is not the workdir of a run"):
        trained.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"config.init_from='.*' has no config.json"):
        workdir_source.configure(config.copy_and_resolve_references(), str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"workdir='.*' has no config.json"):
        report.run_row(str(tmp_path))


# --- A damaged checkpoint -------------------------------------------------------------------------------------


@pytest.mark.slow  # ~17 s: a run of main.py in its own process.
def test_main_ends_with_the_checkpoint_error(tmp_path):
    """--mode=eval on a truncated checkpoint, through main.py as a user runs it: exit status 1, and the last line
    on stderr is our CheckpointError (the other saved steps, --config.eval_checkpoint), nothing printed after it."""
    from lm import checkpointing, config_checks, experiment
    from tests.test_reliability import _corrupt

    args = ["--config=configs/vision_classification.py:resnet_small,digits,smoke", f"--workdir={tmp_path}"]
    exp = experiment.build(config_checks.resolved_copy(vision_classification.get_config("resnet_small,digits,smoke")))
    with checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(tmp_path))) as checkpointer:
        for step in (1, 2):
            checkpointer.save(step, experiment.initial_state(exp), {"step": step}, force=True)
        checkpointer.wait()
    _corrupt("truncated", tmp_path / "checkpoints" / "2")
    result = subprocess.run([sys.executable, "main.py", *args, "--mode=eval", "--config.eval_checkpoint=2"],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                            timeout=600)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and lines, result.stderr[-4000:]
    assert lines[-1].startswith("lm.checkpointing.CheckpointError: "), result.stderr[-4000:]
    assert "checkpoints/2 cannot be restored" in lines[-1] and "Other saved steps: [1]" in lines[-1], lines[-1]
    assert "--config.eval_checkpoint=STEP" in lines[-1]
