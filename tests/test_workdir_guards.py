"""A workdir holds one run: what would mix two runs (another model resumed in it, an export or a training written
over a directory that is not ours) stops before anything is compiled or overwritten, and says what to do."""

import json
import logging
import os
import re

import pytest

import lm
from configs import vision_classification
from tests.test_config_errors import no_compile  # noqa: F401  (a fixture)
from tests.test_train import smoke_config


def _digits(**overrides):
    config = vision_classification.get_config("resnet_small,digits,smoke")
    config.update(num_train_steps=2, checkpoint_every=2, eval_every=2, eval_splits_at_end=())
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits") / "run"
    lm.run(_digits(), str(workdir), "train")
    return workdir


def _snapshot(workdir):
    return (workdir / "config.json").read_text(), sorted(p.name for p in (workdir / "checkpoints").iterdir())


@pytest.mark.parametrize("overrides, changed", [
    ({"model.depth": 34}, "model.depth: 18 -> 34"),
    ({"optimizer.name": "sgd"}, "optimizer.name: 'adamw' -> 'sgd'"),  # Another optimizer state.
])
def test_resuming_another_model_or_optimizer_is_refused_and_the_run_is_kept(trained, no_compile,  # noqa: F811
                                                                            overrides, changed):
    before = _snapshot(trained)
    with pytest.raises(ValueError, match=r"holds checkpoints of another model or optimizer than this config builds "
                                         rf"\(changed since its run started: {re.escape(changed)}\).*"
                                         r"--config.init_from="):
        lm.run(_digits(**overrides), str(trained), "train")
    assert _snapshot(trained) == before  # Nothing set aside, config.json not rewritten.
    assert not (trained / "checkpoints_rejected").exists()


def test_a_key_an_older_config_json_lacks_is_no_change():
    from lm import config_keys, train

    config = _digits()
    written = json.loads(config.to_json_best_effort())
    older = {**written, "model": {k: v for k, v in written["model"].items() if k != "depth"}}
    assert config_keys.changed(older, config, train.RESUME_KEYS) == []
    older["data"] = {**written["data"], "image_size": 99}
    assert config_keys.changed(older, config, train.RESUME_KEYS) == ["data.image_size: 99 -> 16"]


def test_evaluating_with_another_model_names_the_difference(trained, no_compile):  # noqa: F811
    with pytest.raises(lm.checkpointing.CheckpointError, match=r"holds another model or optimizer state than this "
                                                                r"config builds.*array\(s\) differ, e\.g\. "
                                                                r"batch_stats/blocks/10/norm1/mean only here"):
        lm.run(_digits(**{"model.depth": 34}), str(trained), "eval")


def test_evaluating_with_other_data_settings_than_the_run_warns(trained, caplog):
    """--mode=eval reads the data its config defines: where that differs from the run's config.json (here another
    image size: the same checkpoint gives other numbers), a warning names the keys; the run's settings, none."""
    config = _digits()
    config.eval_split = "validation"
    with caplog.at_level(logging.WARNING, logger="lm.evaluate"):
        lm.run(config, str(trained), "eval")
        assert not [r for r in caplog.records if "differ from the run's" in r.getMessage()]
        lm.run(_digits(**{"data.image_size": 24}), str(trained), "eval")
    (warning,) = [r.getMessage() for r in caplog.records if "differ from the run's" in r.getMessage()]
    assert "data.image_size: 16 -> 24" in warning and "give the run's values" in warning, warning


def test_resuming_with_other_data_settings_warns(tmp_path, caplog):
    workdir = tmp_path / "run"
    lm.run(_digits(), str(workdir), "train")
    config = _digits()
    config.update(num_train_steps=4, global_batch_size=32)
    with caplog.at_level(logging.WARNING, logger="lm.train"):
        lm.run(config, str(workdir), "train")
    warnings = [r.getMessage() for r in caplog.records if "differs from the one this run started" in r.getMessage()]
    assert len(warnings) == 1 and "global_batch_size: 16 -> 32" in warnings[0], warnings
    caplog.clear()
    config.num_train_steps = 6  # The same settings again: it resumes without a warning.
    with caplog.at_level(logging.INFO, logger="lm.train"):
        lm.run(config, str(workdir), "train")
    assert any("Resumed from" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if "differs from the one this run started" in r.getMessage()]
    assert "num_train_steps" not in warnings[0]  # Steps, logging and evaluation may change freely.
    assert json.loads((workdir / "config.json").read_text())["global_batch_size"] == 32


def test_a_directory_with_a_foreign_config_json_is_no_workdir(tmp_path, small_vocab, no_compile):  # noqa: F811
    """A Hugging Face model directory given as --workdir: training refuses to write into it, predict refuses to
    read it as a run."""
    hf_config = json.dumps({"model_type": "bert", "hidden_size": 32})
    (tmp_path / "config.json").write_text(hf_config)
    with pytest.raises(ValueError, match=r"holds a config.json that lm did not write \(a Hugging Face model "
                                         r"directory\?\).*--config.init_from"):
        lm.run(smoke_config(small_vocab), str(tmp_path), "train")
    assert (tmp_path / "config.json").read_text() == hf_config and not (tmp_path / "checkpoints").exists()
    with pytest.raises(ValueError, match=r"--workdir=.* holds a config.json that lm did not write"):
        lm.run(smoke_config(small_vocab), str(tmp_path), "predict")


def test_export_hf_refuses_to_write_into_a_workdir(tmp_path, small_vocab, no_compile):  # noqa: F811
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text("{}")
    config = smoke_config(small_vocab, export_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"config.export_dir=.* is a training workdir \(it holds checkpoints/\)"):
        lm.run(config, str(tmp_path), "export_hf")
    assert (tmp_path / "config.json").read_text() == "{}"


def test_an_export_dir_that_cannot_be_written_fails_before_the_restore(tmp_path, small_vocab, monkeypatch,
                                                                        no_compile):  # noqa: F811
    """config.export_dir must be a directory (created if missing; an earlier export there is written over, as
    before): checked once --mode=export_hf has chosen the step (a wrong eval_checkpoint creates nothing), before
    the checkpoint is restored, not when the files are written after it."""
    from lm import checkpointing, evaluate

    restored = []

    class Checkpointer:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def restore_raw(self, step):
            restored.append(step)
            raise RuntimeError("stop at the restore")

    monkeypatch.setattr(checkpointing, "Checkpointer", Checkpointer)
    monkeypatch.setattr(evaluate, "select_step", lambda checkpointer, which: 7)
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "hf_export").write_text("not a directory")
    (tmp_path / "a_file").write_text("not a directory")
    fix = ("Set --config.export_dir to a directory you can write (a missing one is created; the files of an earlier "
           "export there are replaced).")
    for export_dir, named in ((str(tmp_path / "a_file"), f"config.export_dir={str(tmp_path / 'a_file')!r}"),
                              ("", f"config.export_dir='' (the default, {str(workdir / 'hf_export')!r})")):
        with pytest.raises(OSError) as raised:
            lm.run(smoke_config(small_vocab, export_dir=export_dir), str(workdir), "export_hf")
        assert str(raised.value) == f"{named} cannot be written: it is a file, not a directory. {fix}"
    assert not restored
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="stop at the restore"):
        lm.run(smoke_config(small_vocab, export_dir=str(tmp_path / "earlier")), str(workdir), "export_hf")
    assert restored == [7] and os.listdir(tmp_path / "earlier") == ["config.json"]  # No probe file left.
