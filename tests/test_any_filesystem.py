"""A workdir on a non-local file system: train -> eval -> export_hf -> init_from, offline.

TensorFlow's in-memory `ram://` file system stands in for a bucket. It is made a URI scheme of etils.epath
(with the tf.io.gfile backend that epath already uses for `gs://`), so every write of ours and of clu's
TensorBoard writer goes through the same code a `gs://` workdir takes. Orbax cannot hold checkpoints
there: its array data goes through tensorstore, which knows local paths and `gs://` but not `ram://`
("Checkpoint path should be absolute. Got ram:/..."). So the test points only `checkpoints/` at a local
directory and asserts that nothing else of the workdir lands on the local disk.
"""

import os
import pathlib
import uuid

import numpy as np
import pytest
import tensorflow as tf

import lm
from lm import checkpointing, config_checks, files, step_log
from lm.weights import hf_bert, reader
from tests import text_data
from tests.test_train import files_config


@pytest.fixture
def ram_workdir(monkeypatch, tmp_path):
    """A fresh `ram://` workdir whose checkpoints/ (only) live under tmp_path/orbax."""
    from etils.epath import backend, gpath, register

    monkeypatch.setattr(gpath, "_URI_PREFIXES", (*gpath._URI_PREFIXES, "ram://"))
    monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {"ram"})
    monkeypatch.setitem(gpath._URI_MAP_ROOT, "ram://", "/ram/")
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "ram", backend.tf_backend)
    monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, "ram://", gpath.PosixGPath)
    local = tmp_path / "orbax"
    local_checkpoints = checkpointing.checkpoint_dir

    def checkpoint_dir(workdir: str) -> str:
        return local_checkpoints(str(workdir).replace("ram://", f"{local}/", 1))

    monkeypatch.setattr(checkpointing, "checkpoint_dir", checkpoint_dir)
    workdir = f"ram://{uuid.uuid4().hex}/run"
    yield workdir, local
    tf.io.gfile.rmtree(workdir.rsplit("/", 1)[0])


def test_train_eval_export_with_a_ram_workdir(ram_workdir, tmp_path, small_vocab):
    workdir, local = ram_workdir
    csv_path = text_data.write_csv(tmp_path / "reviews.csv", text_data.sentiment_rows(64))
    config = files_config(small_vocab, csv_path, num_train_steps=2, eval_every=2, checkpoint_every=2,
                          **{"debug.step_log": True})
    final = lm.run(config, workdir, "train")
    assert "test" in final

    written = set(tf.io.gfile.listdir(workdir))
    assert {"config.json", "metrics_test.json", "debug_steps.txt"} <= written
    assert any(name.startswith("events.out.tfevents") for name in written)
    assert files.read_json(f"{workdir}/metrics_test.json")["accuracy"] == pytest.approx(final["test"]["accuracy"])
    assert [line[0] for line in step_log.read(workdir)] == ["start", "1", "2"]
    # On the local disk: the checkpoints and nothing else.
    (local_run,) = [os.path.join(root, d) for root, dirs, _ in os.walk(local) for d in dirs if d == "run"]
    assert os.listdir(local_run) == ["checkpoints"]

    config.eval_split = "validation"
    lm.run(config, workdir, "eval")
    assert files.read_json(f"{workdir}/metrics_validation.json")["step"] == 2

    config.export_dir = f"{workdir}/hf"
    config.data.vocab_path = ""  # Read from the run's config.json in ram://.
    assert lm.run(config, workdir, "export_hf") == {"export_dir": f"{workdir}/hf"}
    assert set(tf.io.gfile.listdir(f"{workdir}/hf")) == {"config.json", "model.safetensors", "vocab.txt",
                                                         "tokenizer_config.json"}
    assert files.read_text(f"{workdir}/hf/vocab.txt") == small_vocab.read_text()

    # init_from a Hugging Face directory in ram://: the shape, the vocabulary and the weights are read there.
    fine_tune = files_config(small_vocab, csv_path, init_from=f"{workdir}/hf")
    fine_tune.model.num_layers = 99
    resolved = config_checks.resolved_copy(fine_tune)
    assert resolved.model.num_layers == config.model.num_layers
    assert reader.is_hf_directory(f"{workdir}/hf")
    weights = hf_bert.read_state_dict(f"{workdir}/hf")
    local_copy = tmp_path / "hf_local"
    local_copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        files.copy(f"{workdir}/hf/{name}", local_copy / name)
    expected = hf_bert.read_state_dict(str(local_copy))
    assert sorted(weights) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(weights[name], value, err_msg=name)


@pytest.mark.parametrize("scheme", ["local", "ram"])
def test_check_writable_refuses_the_wrong_kind_and_leaves_nothing_behind(scheme, tmp_path):
    """files.check_writable, which the modes call before the model loads: a file must not be a directory, a
    directory not a file; missing directories are created, what is there is kept, the probe file is removed."""
    root = str(tmp_path) if scheme == "local" else f"ram://{uuid.uuid4().hex}"
    fix = "Do this."
    with tf.io.gfile.GFile(f"{root}/a_file", "w") as f:
        f.write("kept")
    tf.io.gfile.makedirs(f"{root}/a_dir")
    with tf.io.gfile.GFile(f"{root}/a_dir/old", "w") as f:
        f.write("kept")
    for location, directory, reason in ((f"{root}/a_dir", False, "it is a directory"),
                                        (f"{root}/new/", False, "it names a directory (it ends with '/')"),
                                        (f"{root}/a_file", True, "it is a file, not a directory")):
        with pytest.raises(OSError) as raised:
            files.check_writable(location, f"key={location!r}", fix, directory=directory)
        assert str(raised.value) == f"key={location!r} cannot be written: {reason}. {fix}"
    if scheme == "local":  # ram:// keeps "a_file/x" beside the file "a_file", as a bucket would.
        with pytest.raises(OSError, match=r"key cannot be written: .*a_file is not a directory\. Do this\.$"):
            files.check_writable(f"{root}/a_file/out.jsonl", "key", fix)
    files.check_writable(f"{root}/a_file", "key", fix)  # An existing file is written over by the mode, not here.
    files.check_writable(f"{root}/a_dir", "key", fix, directory=True)
    files.check_writable(f"{root}/new/folder/out.jsonl", "key", fix)
    files.check_writable(f"{root}/other/folder", "key", fix, directory=True)
    assert tf.io.gfile.GFile(f"{root}/a_file").read() == "kept" and tf.io.gfile.listdir(f"{root}/a_dir") == ["old"]
    assert tf.io.gfile.listdir(f"{root}/new/folder") == [] and tf.io.gfile.listdir(f"{root}/other/folder") == []
    assert files.setting("key", "", "/w/out") == "key='' (the default, '/w/out')"
    assert files.setting("key", "/x/out", "/x/out") == "key='/x/out'"
    if scheme == "ram":
        tf.io.gfile.rmtree(root)


def test_check_writable_of_an_existing_local_file_asks_the_file_and_tolerates_a_probe_it_cannot_remove(
        tmp_path, monkeypatch, caplog):
    """An existing local file that the mode writes in place needs no new file beside it (e.g. /dev/stdout, or a
    file in a directory only it may be written in); a writer that creates files beside it (feedback) does. Storage
    that creates files but refuses to delete them keeps the probe, with a warning, and the check passes."""
    existing = tmp_path / "out.jsonl"
    existing.write_text("kept")
    probes = []
    real_gfile = tf.io.gfile.GFile

    def gfile(path, mode="r"):
        probes.append(path)
        return real_gfile(path, mode)

    monkeypatch.setattr(tf.io.gfile, "GFile", gfile)
    files.check_writable(str(existing), "key", "Do this.")
    assert probes == []  # The file alone decided.
    files.check_writable(str(existing), "key", "Do this.", writes_beside=True)
    assert len(probes) == 1 and not pathlib.Path(probes[0]).exists()

    def refuse(path):
        raise tf.errors.PermissionDeniedError(None, None, "deleting is not allowed here")

    monkeypatch.setattr(tf.io.gfile, "remove", refuse)
    with caplog.at_level("WARNING", logger="lm.files"):
        files.check_writable(str(tmp_path / "new"), "key", "Do this.", directory=True)
    left = list((tmp_path / "new").iterdir())
    assert len(left) == 1 and left[0].name.startswith(".lm_write_check_")
    assert f"Could not remove the write check's probe file {left[0]}" in caplog.text
