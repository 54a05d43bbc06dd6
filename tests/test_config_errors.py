"""Each config error names the key, the value and the fix, and comes before anything compiles."""

import jax
import pytest
from absl import flags

import lm
from configs import bert_sentiment
from tests import text_data
from tests.test_train import files_config, smoke_config


@pytest.fixture
def csv_path(tmp_path):
    return text_data.write_csv(tmp_path / "reviews.csv", text_data.sentiment_rows(64))


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if anything reaches XLA compilation."""

    def forbidden(*args, **kwargs):
        raise AssertionError("compiled before the config error was raised")

    monkeypatch.setattr(jax.stages.Lowered, "compile", forbidden)
    monkeypatch.setattr("jax._src.interpreters.pxla.UnloadedMeshExecutable.from_hlo", forbidden)


def _parse(argv):
    """Parses flags as main.py does (a locked config file flag), on fresh FlagValues."""
    from ml_collections import config_flags

    argv = ["main.py", *argv]
    flag_values = flags.FlagValues()
    # ml_collections reads the --config.KEY overrides from sys.argv unless given them (`sys_argv`).
    config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values, lock_config=True,
                                    sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def test_override_parses():
    config = _parse(["--config=configs/bert_sentiment.py:smoke", "--config.global_batch_size=8"])
    assert config.global_batch_size == 8


def test_unknown_key_is_an_error():
    with pytest.raises(AttributeError, match="Did you mean \"global_batch_size\""):
        _parse(["--config=configs/bert_sentiment.py:smoke", "--config.global_batchsize=8"])


def test_wrong_type_is_an_error():
    with pytest.raises(flags.IllegalFlagValueError, match="global_batch_size=eight: invalid literal for int"):
        _parse(["--config=configs/bert_sentiment.py:smoke", "--config.global_batch_size=eight"])


def test_unknown_config_argument():
    with pytest.raises(ValueError, match="Unknown config argument 'huge'.*known words"):
        bert_sentiment.get_config("huge,smoke")


def test_batch_not_divisible_by_devices(tmp_path, small_vocab, csv_path, no_compile):
    config = files_config(small_vocab, csv_path, global_batch_size=12)
    message = r"config.global_batch_size=12 is not divisible by the 8 data-parallel.*8 or 16"
    with pytest.raises(ValueError, match=message):
        lm.run(config, str(tmp_path / "run"))


def test_missing_file(tmp_path, small_vocab, no_compile):
    config = files_config(small_vocab, tmp_path / "nowhere.csv")
    with pytest.raises(FileNotFoundError, match="train_files.*nowhere.csv"):
        lm.run(config, str(tmp_path / "run"))


def test_missing_vocab(tmp_path, csv_path, no_compile):
    config = files_config(tmp_path / "no_vocab.txt", csv_path)
    with pytest.raises(FileNotFoundError, match="no_vocab.txt"):
        lm.run(config, str(tmp_path / "run"))


def test_mesh_does_not_fit(tmp_path, small_vocab, csv_path, no_compile):
    config = files_config(small_vocab, csv_path, **{"mesh.data": 3, "mesh.fsdp": 2})
    with pytest.raises(ValueError, match="config.mesh.*needs 6 devices but 8"):
        lm.run(config, str(tmp_path / "run"))


def test_max_length_over_positions(tmp_path, small_vocab, csv_path, no_compile):
    config = files_config(small_vocab, csv_path, **{"data.max_length": 1024})
    with pytest.raises(ValueError, match="config.data.max_length=1024 exceeds"):
        lm.run(config, str(tmp_path / "run"))


def test_init_from_missing(tmp_path, small_vocab, csv_path, no_compile):
    config = files_config(small_vocab, csv_path, init_from=str(tmp_path / "missing_model"))
    with pytest.raises(FileNotFoundError, match="config.init_from=.*missing_model"):
        lm.run(config, str(tmp_path / "run"))


def test_unknown_label_name(tmp_path, small_vocab, no_compile):
    rows = text_data.sentiment_rows(40) + [("a fine film", "neutral")]
    path = text_data.write_csv(tmp_path / "reviews.csv", rows)
    with pytest.raises(ValueError, match="neutral"):
        lm.run(files_config(small_vocab, path), str(tmp_path / "run"))


def test_bad_best_metric(tmp_path, small_vocab, no_compile):
    config = smoke_config(small_vocab, best_metric="auc")
    with pytest.raises(ValueError, match="config.best_metric='auc'"):
        lm.run(config, str(tmp_path / "run"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_consecutive_nonfinite": 0}, r"config.max_consecutive_nonfinite=0 must be a positive integer"),
        ({"debug.nan_steps": (0, 2)}, r"config.debug.nan_steps=\(0, 2\) must hold step numbers >= 1"),
    ],
)
def test_bad_reliability_keys(tmp_path, small_vocab, no_compile, overrides, message):
    with pytest.raises(ValueError, match=message):
        lm.run(smoke_config(small_vocab, **overrides), str(tmp_path / "run"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optimizer.learning_rate": -1.0}, r"config.optimizer.learning_rate=-1.0 must be >= 0"),
        ({"optimizer.warmup_fraction": 5.0}, r"config.optimizer.warmup_fraction=5.0 must be in \[0, 1\]"),
        ({"optimizer.weight_decay": -0.1}, r"config.optimizer.weight_decay=-0.1 must be >= 0"),
        ({"label_smoothing": 2.0}, r"config.label_smoothing=2.0 must be in \[0, 1\)"),
        ({"label_smoothing": -1.0}, r"config.label_smoothing=-1.0 must be in \[0, 1\)"),
    ],
)
def test_values_that_would_train_silently_wrong(tmp_path, small_vocab, no_compile, overrides, message):
    with pytest.raises(ValueError, match=message):
        lm.run(smoke_config(small_vocab, **overrides), str(tmp_path / "run"))


def test_debug_nan_steps_parses_from_the_command_line():
    config = _parse(["--config=configs/bert_sentiment.py:smoke", "--config.debug.nan_steps=(3,4)"])
    assert config.debug.nan_steps == (3, 4)


@pytest.mark.parametrize("arg", ["resnet18,folder", "vit_b16,arrays", "resnet_small,digits,smoke"])
def test_configs_with_keys_left_to_the_recipe_pass_the_static_checks(arg):
    """predict and serve check the command line's config before any recipe fills the optimizer (None)."""
    from configs import vision_classification
    from lm import config_checks

    config_checks.check_static(vision_classification.get_config(arg))
