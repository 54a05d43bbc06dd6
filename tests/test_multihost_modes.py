"""The modes other than train on many hosts: 2 main.py processes x 4 CPU devices against 1 process x 8 devices.

What only process 0 writes (predictions, a selection, metrics, an export, a vocabulary, a data report) it alone
checks and writes, through `lm.distributed.on_process_zero`, whose outcome (or error) the others wait for; the
work that needs every device (predicting, evaluating, restoring) runs in every process. The multi-process tests
are slow (make test-slow); the helper's own tests are not.
"""

import json
import os
import pathlib
import re

import numpy as np
import pytest

import lm
from lm import distributed
from lm.serving import serve
from tests import cluster, text_data
from tests.cluster import wait_all
from tests.test_multihost import ROOT, before_crash_dump, main_args, start, start_hosts, write_data
from tests.test_train import files_config


@pytest.fixture(scope="module")
def data(tmp_path_factory, small_vocab):
    return write_data(tmp_path_factory.mktemp("multihost_modes"), small_vocab)


class FakeClient:
    """The coordination service's key-value store, as on_process_zero uses it."""

    def __init__(self, values=None):
        self.values = dict(values or {})

    def key_value_set(self, key, value):
        self.values[key] = value

    def blocking_key_value_get(self, key, timeout_ms):
        assert timeout_ms == 1000  # The tests wait 1 s: the client takes milliseconds.
        if key not in self.values:
            raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out")
        return self.values[key]


def as_process(monkeypatch, index, client):
    monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
    monkeypatch.setattr(distributed.jax, "process_index", lambda: index)
    monkeypatch.setattr(distributed, "_client", lambda: client)


def test_process_0s_outcome_reaches_the_others(monkeypatch):
    """Process 0 runs the work and publishes its outcome; another process returns None, or raises process 0's
    error (its type when a built-in one takes a message alone, else a RuntimeError naming it), or a TimeoutError
    naming the key to raise when process 0 says nothing in time."""
    def fail(error):
        raise error

    client = FakeClient()
    monkeypatch.setattr(distributed, "_barrier_ids", iter(range(5)))  # The same keys in every process.
    as_process(monkeypatch, 0, client)
    assert distributed.on_process_zero(lambda: 7, "count", 1) == 7
    with pytest.raises(FileNotFoundError, match="no such file"):
        distributed.on_process_zero(lambda: fail(FileNotFoundError("no such file")), "read", 1)
    with pytest.raises(KeyboardInterrupt):  # Not an Exception: published all the same.
        distributed.on_process_zero(lambda: fail(KeyboardInterrupt()), "wait", 1)
    with pytest.raises(OSError):  # A path's lone surrogate: the store takes UTF-8 only.
        distributed.on_process_zero(lambda: fail(OSError("bad \udcff path")), "open", 1)
    published = list(client.values.values())
    assert published == ["", "FileNotFoundError\nno such file", "KeyboardInterrupt\n", "OSError\nbad ? path"]

    monkeypatch.setattr(distributed, "_barrier_ids", iter(range(5)))  # Process 1, from its start.
    as_process(monkeypatch, 1, FakeClient(client.values))
    assert distributed.on_process_zero(lambda: pytest.fail("only process 0 works"), "count", 1) is None
    with pytest.raises(FileNotFoundError, match=r"^no such file \(on process 0, while it tried to read\)$"):
        distributed.on_process_zero(lambda: None, "read", 1)
    with pytest.raises(RuntimeError, match=r"^KeyboardInterrupt:  \(on process 0, while it tried to wait\)$"):
        distributed.on_process_zero(lambda: None, "wait", 1)
    with pytest.raises(OSError, match=r"^bad \? path"):
        distributed.on_process_zero(lambda: None, "open", 1)
    with pytest.raises(TimeoutError, match=r"waited 1 s for process 0 to write.*process_zero_timeout_s"):
        distributed.on_process_zero(lambda: None, "write", 1)


def test_errors_are_rebuilt_by_type_or_named():
    assert type(distributed.rebuilt_error("OSError", "m")) is OSError
    for kind in ("UnicodeDecodeError", "CheckpointError", "NotAType"):
        error = distributed.rebuilt_error(kind, "m")
        assert type(error) is RuntimeError and str(error) == f"{kind}: m"


@pytest.mark.slow
def test_predict_in_two_processes_equals_one_and_computes_each_batch_once(data, trained, tmp_path):
    """--mode=predict in 2 processes x 4 devices writes what 1 process x 8 devices writes, and each global batch is
    eval_batch_size examples (every process reads every input: without `whole`, each would add its own copy)."""
    root, csv_path, vocab = data
    workdir = trained
    one = files_config(pathlib.Path(vocab), csv_path)
    one.serving.input_files, one.serving.output = csv_path, str(tmp_path / "one.jsonl")
    lm.run(one, str(workdir), "predict")

    args = [*main_args(vocab, csv_path, workdir, **{"serving.input_files": csv_path,
                                                    "serving.output": tmp_path / "two.jsonl"}), "--mode=predict"]
    hosts = start_hosts(args, tmp_path)
    wait_all(hosts, [tmp_path / "process0.log", tmp_path / "process1.log"])
    expected = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(got) == len(expected) == 400
    for a, b in zip(got, expected):
        assert (a["id"], a["label"], a["step"]) == (b["id"], b["label"], b["step"])
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-6)
    assert f"global batches of {one.eval_batch_size} examples on 8 devices in 2 process(es)" in \
        (tmp_path / "process0.log").read_text()


@pytest.mark.slow
def test_export_savedmodel_in_two_processes_writes_once_what_one_process_writes(data, trained, tmp_path):
    """--mode=export_savedmodel in 2 processes x 4 devices: process 0 writes the one SavedModel, with the drift
    reference of the whole validation split as 1 process measures it; process 1 waits for it. (Before, each
    process measured its own share of the split and wrote it into the same directory.)"""
    root, csv_path, vocab = data
    workdir = trained
    one = files_config(pathlib.Path(vocab), csv_path, **{"serving.export_dir": str(tmp_path / "one")})
    lm.run(one, str(workdir), "export_savedmodel")
    expected = json.loads((workdir / serve.REFERENCE_FILE).read_text())
    (workdir / serve.REFERENCE_FILE).unlink()

    args = [*main_args(vocab, csv_path, workdir, **{"serving.export_dir": tmp_path / "two"}),
            "--mode=export_savedmodel"]
    hosts = start_hosts(args, tmp_path)
    wait_all(hosts, [tmp_path / "process0.log", tmp_path / "process1.log"])
    assert os.listdir(tmp_path / "two") == os.listdir(tmp_path / "one") == ["2"]
    for got in (json.loads((workdir / serve.REFERENCE_FILE).read_text()),
                json.loads((tmp_path / "two" / "2" / "assets.extra" / "lm_export.json").read_text())["reference"]):
        assert got["num_examples"] == expected["num_examples"] > 0
        for key in ("class_distribution", "confidence_histogram"):
            np.testing.assert_allclose(got[key], expected[key], atol=1e-6)
    assert ("Process 1: waiting for process 0 to measure the validation split and write the SavedModel."
            in (tmp_path / "process1.log").read_text())


@pytest.fixture(scope="module")
def trained(data) -> pathlib.Path:
    """A workdir holding 2 steps of the tiny BERT, trained in this process."""
    root, csv_path, vocab = data
    workdir = root / "trained"
    lm.run(files_config(pathlib.Path(vocab), csv_path, num_train_steps=2, eval_every=2, checkpoint_every=2,
                        eval_splits_at_end=()), str(workdir), "train")
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "key"), [("select", "serving.output"), ("export_hf", "export_dir"),
                                           ("export_savedmodel", "serving.export_dir")])
def test_an_output_process_0_cannot_write_stops_every_process_with_the_error(data, trained, tmp_path, mode, key):
    """Process 0 checks the output it alone writes before the model loads; every process stops at once with its
    message. (Before, process 1 went on into the restore, waited at Orbax's barrier until the shutdown timeout
    aborted both, and never said why.)"""
    root, csv_path, vocab = data
    (tmp_path / "a_file").write_text("")
    args = main_args(vocab, csv_path, trained, **{key: tmp_path / "a_file" / "out", "serving.input_files": csv_path})
    hosts = start_hosts([*args, f"--mode={mode}"], tmp_path, timeout_s=10)
    statuses = cluster.exit_statuses(hosts, 120)
    logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
    assert statuses == [1, 1], [before_crash_dump(log)[-2000:] for log in logs]
    for log in logs:
        assert re.search(rf"OSError: config\.{key}='.*a_file/out' cannot be written", log), log[-3000:]


@pytest.mark.slow
def test_serve_refuses_many_processes_before_loading(data, trained, tmp_path):
    """--mode=serve is one process's server: on many, every process stops at once with the reason (before, each
    served on its own until one stopped; the coordination service then aborted the other)."""
    root, csv_path, vocab = data
    hosts = start_hosts([*main_args(vocab, csv_path, trained, **{"serving.port": 0}), "--mode=serve"], tmp_path,
                        timeout_s=10)
    statuses = cluster.exit_statuses(hosts, 60)
    logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
    assert statuses == [1, 1], [before_crash_dump(log)[-2000:] for log in logs]
    for log in logs:
        assert "--mode=serve runs in one process" in log and "Bound" not in log, log[-3000:]


WAITING = {"build_vocab": "learn and write vocab.txt", "inspect_data": "inspect the data and write data_report.json"}


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "output"), [("build_vocab", "vocab.txt"), ("inspect_data", "data_report.json")])
def test_process_0_alone_writes_what_one_process_writes(data, tmp_path, mode, output):
    """build_vocab and inspect_data: process 0 alone reads the whole corpus or data and writes the file, the bytes
    one process writes, while process 1 waits for it (before, every process wrote it, into the shared workdir)."""
    root, csv_path, vocab = data
    if mode == "build_vocab":
        corpus = text_data.write_corpus(tmp_path / "corpus.txt", 200)
        def args(workdir):
            return [f"--config={ROOT}/configs/bert_pretrain.py:files", f"--workdir={workdir}", "--mode=build_vocab",
                    f"--config.data.train_files={corpus}", "--config.vocab.size=1000", "--config.vocab.min_count=1"]
    else:
        def args(workdir):
            return [*main_args(vocab, csv_path, workdir), "--mode=inspect_data"]
    wait_all([start(args(tmp_path / "one"), 8, tmp_path / "one.log")], [tmp_path / "one.log"])
    wait_all(start_hosts(args(tmp_path / "two"), tmp_path), [tmp_path / "process0.log", tmp_path / "process1.log"])
    assert (tmp_path / "two" / output).read_bytes() == (tmp_path / "one" / output).read_bytes()
    assert "Wrote" in (tmp_path / "process0.log").read_text()
    assert "Wrote" not in (tmp_path / "process1.log").read_text(), "process 1 writes it too"
    assert f"Process 1: waiting for process 0 to {WAITING[mode]}." in (tmp_path / "process1.log").read_text()


@pytest.mark.slow
def test_eval_in_two_processes_equals_one(data, trained, tmp_path):
    """--mode=eval in 2 processes x 4 devices: the whole split (37 examples, not a multiple of the hosts or batch),
    the metrics 1 process finds, written once by process 0."""
    root, csv_path, vocab = data
    validation = str(text_data.write_csv(tmp_path / "validation.csv", text_data.sentiment_rows(37, seed=5)))
    one = files_config(pathlib.Path(vocab), csv_path, eval_split="validation", **{"data.validation_files": validation})
    expected = lm.run(one, str(trained), "eval")
    (trained / "metrics_validation.json").unlink()
    args = [*main_args(vocab, csv_path, trained, eval_split="validation", **{"data.validation_files": validation}),
            "--mode=eval"]
    wait_all(start_hosts(args, tmp_path), [tmp_path / "process0.log", tmp_path / "process1.log"])
    got = json.loads((trained / "metrics_validation.json").read_text())
    assert got["num_examples"] == expected["num_examples"] == 37 and got["step"] == expected["step"]
    assert got["confusion_matrix"] == expected["confusion_matrix"]
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)


@pytest.mark.slow
def test_export_hf_in_two_processes_writes_what_one_process_writes(data, trained, tmp_path):
    """--mode=export_hf in 2 processes: process 0 writes the files 1 process writes, byte for byte, and process 1
    waits for it at a barrier (not at exit, where the shutdown's timeout_s bounds a slow write)."""
    root, csv_path, vocab = data
    one = files_config(pathlib.Path(vocab), csv_path, export_dir=str(tmp_path / "one"))
    lm.run(one, str(trained), "export_hf")
    args = [*main_args(vocab, csv_path, trained, export_dir=tmp_path / "two"), "--mode=export_hf"]
    wait_all(start_hosts(args, tmp_path), [tmp_path / "process0.log", tmp_path / "process1.log"])
    names = sorted(os.listdir(tmp_path / "one"))
    assert sorted(os.listdir(tmp_path / "two")) == names and "model.safetensors" in names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert ("Process 1: waiting for process 0 to write the Hugging Face export."
            in (tmp_path / "process1.log").read_text())


@pytest.mark.slow
def test_a_failure_of_process_0s_work_stops_every_process_with_its_error(data, trained, tmp_path):
    """What process 0 alone does after the checks (here: export_savedmodel's validation pass, on a validation file
    that is gone) fails every process at once, each with the message. (Before, the others waited for the write
    until a timeout, and never said why.)"""
    root, csv_path, vocab = data
    args = main_args(vocab, csv_path, trained, **{"serving.export_dir": tmp_path / "export",
                                                  "data.validation_files": tmp_path / "gone.csv"})
    statuses = cluster.exit_statuses(start_hosts([*args, "--mode=export_savedmodel"], tmp_path, timeout_s=10), 120)
    logs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
    assert statuses == [1, 1], [before_crash_dump(log)[-2000:] for log in logs]
    for log in logs:
        assert re.search(r"FileNotFoundError: .*gone\.csv", log), log[-3000:]
    assert "while it tried to measure the validation split and write the SavedModel" in logs[1]
    assert not (tmp_path / "export").exists() or not os.listdir(tmp_path / "export")
