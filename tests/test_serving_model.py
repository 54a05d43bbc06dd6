"""Serving a trained tiny BERT: SavedModel export loaded in a fresh process, and the server's answers."""

import dataclasses
import http.client
import json
import logging
import os
import pathlib
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

import lm
from lm.serving import predict, servable, serve, trained
from tests import text_data
from tests.test_train import files_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXTS = ["the movie was great and i loved it", "awful boring plot", "the story", "a wonderful film", "hated it",
         "quite terrible acting", "music and ending"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, small_vocab):
    """A workdir of a tiny BERT trained for a few steps on synthetic reviews, with its config."""
    tmp = tmp_path_factory.mktemp("serving")
    csv_path = text_data.write_csv(tmp / "reviews.csv", text_data.sentiment_rows(256))
    config = files_config(small_vocab, csv_path, num_train_steps=24, eval_every=24, checkpoint_every=24,
                          log_every=12, **{"optimizer.learning_rate": 2e-3, "optimizer.warmup_steps": 4})
    workdir = tmp / "run"
    lm.run(config, str(workdir), "train")
    return config, workdir


def jax_probabilities(workdir, texts):
    model = trained.load(str(workdir), "best")
    inputs = model.preprocess.encode(texts)
    return np.asarray(jax.jit(model.probabilities)(model.variables, inputs))


def test_a_run_whose_task_predicts_no_classes_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"task": "mlm"}))  # Asked of the task registry.
    with pytest.raises(ValueError, match="holds a 'mlm' run; predict, export and serve need a classifier"):
        trained.load(str(tmp_path))


LOAD_IN_FRESH_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401 - registers the tokenizer ops the graph uses.
assert not any(m == "lm" or m.startswith("lm.") for m in sys.modules)  # Nothing of ours.
model = tf.saved_model.load(sys.argv[1])
texts = json.loads(sys.argv[2])
out = {}
for size in (1, 7):
    result = model.signatures["serving_default"](texts=tf.constant(texts[:size]))
    out[size] = {"probabilities": result["probabilities"].numpy().tolist(),
                 "label": [x.decode() for x in result["label"].numpy()]}
print(json.dumps(out))
"""


def test_savedmodel_matches_jax_in_a_fresh_process(text_run, tmp_path):
    config, workdir = text_run
    config = config.copy_and_resolve_references()  # The fixture's config is shared: change a copy.
    config.serving.export_dir = str(tmp_path / "export")
    # Data flags left out (the vocabulary, the files): the validation split is the run's (its config.json).
    config.data.vocab_path, config.data.train_files = "", str(tmp_path / "moved.csv")
    path = lm.run(config, str(workdir), "export_savedmodel")["export_dir"]
    step = trained.load(str(workdir), "best").step
    assert path == os.path.join(str(tmp_path / "export"), str(step))
    assert os.path.exists(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))
    reference = json.loads((workdir / serve.REFERENCE_FILE).read_text())
    assert reference["num_examples"] > 0 and abs(sum(reference["class_distribution"]) - 1) < 1e-6

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", LOAD_IN_FRESH_PROCESS, path, json.dumps(TEXTS)], env=env,
                            capture_output=True, text=True, timeout=300, check=True)
    served = json.loads(result.stdout.strip().splitlines()[-1])
    expected = jax_probabilities(workdir, TEXTS)
    for size in ("1", "7"):
        np.testing.assert_allclose(served[size]["probabilities"], expected[: int(size)], atol=1e-5)
        assert served[size]["label"] == [("negative", "positive")[i] for i in expected[: int(size)].argmax(1)]

    shown = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--dir", path,
                            "--all"], env=env, capture_output=True, text=True, timeout=300)
    assert "signature_def['serving_default']" in shown.stdout and "signature_def['serve_inputs']" in shown.stdout
    assert "inputs['texts']" in shown.stdout and "inputs['input_ids']" in shown.stdout


def test_an_export_dir_that_cannot_be_written_fails_before_the_model_loads(loads, tmp_path, small_vocab):
    """config.serving.export_dir is checked at the start of --mode=export_savedmodel, not after the model ran over
    the validation split and was converted: it must be a directory (created if missing; its other versions kept)
    without the version about to be written, <export_dir>/<step>/."""
    config = files_config(small_vocab, tmp_path / "reviews.csv")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (tmp_path / "a_file").write_text("not a directory")
    (workdir / "savedmodel").write_text("not a directory")
    (tmp_path / "export" / "7").mkdir(parents=True)
    fix = ("Set --config.serving.export_dir to a directory you can write (a missing one is created; each export adds "
           "a version <export_dir>/<step>/).")
    for export_dir, named in ((str(tmp_path / "a_file"), f"config.serving.export_dir={str(tmp_path / 'a_file')!r}"),
                              ("", "config.serving.export_dir='' (the default, "
                                   f"{str(workdir / 'savedmodel')!r})")):
        config.serving.export_dir = export_dir
        with pytest.raises(OSError) as raised:
            lm.run(config, str(workdir), "export_savedmodel")
        assert str(raised.value) == f"{named} cannot be written: it is a file, not a directory. {fix}"
    config.serving.export_dir = str(tmp_path / "export")
    with pytest.raises(FileExistsError, match=r"config.serving.export_dir=.*export' holds version 7 already "
                                              r"\(.*7'; the step of config.eval_checkpoint='best'\): export another"):
        lm.run(config, str(workdir), "export_savedmodel")
    (tmp_path / "export" / "7").rename(tmp_path / "export" / "6")
    (workdir / "serving_reference.json").mkdir()  # The drift reference the export writes into the workdir at its end.
    with pytest.raises(OSError, match=r"--workdir=.*, where the export writes serving_reference.json \(the drift "
                                      r"reference of --mode=serve\), cannot be written: it is a directory\. Export"):
        lm.run(config, str(workdir), "export_savedmodel")
    assert not loads
    (workdir / "serving_reference.json").rmdir()
    with pytest.raises(RuntimeError, match="stop at the model"):
        lm.run(config, str(workdir), "export_savedmodel")
    assert loads == [(str(workdir), "7")] and os.listdir(tmp_path / "export") == ["6"]  # No probe file left.


def test_export_reads_the_runs_data_also_from_an_older_run(text_run, tmp_path):
    """The drift reference's config (`trained.data_config`): the run's config.json over today's defaults; a key it
    lacks keeps its default, the weights `init_from` named need not exist, the flags the user gave win, and the
    mesh stays this machine's."""
    config, workdir = text_run
    run = json.loads((workdir / "config.json").read_text())
    del run["data"]["bucket_lengths"]  # Added after some runs were made.
    run["init_from"], run["mesh"]["data"] = str(tmp_path / "gone"), 64
    (tmp_path / "config.json").write_text(json.dumps(run))
    command_line = config.copy_and_resolve_references()
    command_line.data.vocab_path, command_line.eval_batch_size = "", 8
    merged = trained.data_config(command_line, str(tmp_path), ("eval_batch_size",))
    assert merged.data.vocab_path == run["data"]["vocab_path"] and merged.init_from == ""
    assert merged.eval_batch_size == 8 and merged.mesh.data == command_line.mesh.data
    assert merged.data.bucket_lengths == command_line.data.bucket_lengths
    model = trained.load(str(workdir), "best")
    reference = predict.validation_reference(merged, model)
    assert reference == predict.validation_reference(trained.data_config(config, str(workdir)), model)


def test_server_answers_equal_the_model_on_each_requests_own_input(text_run, tmp_path):
    config, workdir = text_run
    config = config.copy_and_resolve_references()  # The fixture's config is shared: change a copy.
    config.serving.port = 0
    config.serving.max_batch_size = 4
    config.serving.feedback_path = str(tmp_path / "feedback.jsonl")
    model_server = serve.build(config, str(workdir))
    thread = threading.Thread(target=model_server.serve_forever, daemon=True)
    thread.start()
    try:
        def ask(text):
            connection = http.client.HTTPConnection(*model_server.address, timeout=60)
            connection.request("POST", f"/v1/models/{model_server.servable.name}:predict",
                               body=json.dumps({"instances": [text]}), headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())

        answers = {}
        threads = [threading.Thread(target=lambda t=t: answers.__setitem__(t, ask(t))) for t in TEXTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        expected = jax_probabilities(workdir, TEXTS)
        for text, row in zip(TEXTS, expected):
            status, body = answers[text]
            assert status == 200
            np.testing.assert_allclose(body["predictions"][0]["probabilities"], row, atol=1e-5)
        assert "lm_batch_size_count" in model_server.metrics.render()
    finally:
        model_server.drain_and_stop()
        thread.join(10)


def test_text_batches_are_cut_to_length_buckets_all_compiled_at_warm_up(text_run):
    """A batch is cut to the smallest length bucket that holds its longest text; every (batch size, length) is
    compiled at warm-up, so requests compile nothing; the answers equal the model at the full length."""
    _, workdir = text_run
    model = trained.load(str(workdir), "best")
    assert model.length_buckets == (32,)  # The run trained with data.bucket_lengths=(): one length, no cut.
    assert trained.load(str(workdir), "best", length_buckets=False).length_buckets == ()  # serving.length_buckets
    bucketed = dataclasses.replace(model, length_buckets=(8, 16, 32))
    assert bucketed.encode(["the story"])["input_ids"].shape == (1, 8)
    assert bucketed.encode(["the story", " ".join(["great"] * 12)])["input_ids"].shape == (2, 16)
    served = servable.TextServable(bucketed, "m", max_batch_size=4)
    assert served.warm_up() == 3 * 3  # Batch sizes 1, 2, 4 times lengths 8, 16, 32.
    compiled = served._probabilities._cache_size()
    assert compiled == 3 * 3
    texts = [*TEXTS, " ".join(["great"] * 12), " ".join(["awful"] * 40)]
    for first, count in ((0, 1), (1, 3), (4, 4), (7, 2)):
        np.testing.assert_allclose(served.predict(texts[first:first + count]),
                                   jax_probabilities(workdir, texts[first:first + count]), atol=1e-5)
    assert served._probabilities._cache_size() == compiled


def test_predict_accuracy_equals_eval_and_keeps_order_and_ids(text_run, tmp_path):
    config, workdir = text_run
    config = config.copy_and_resolve_references()  # The fixture's config is shared: change a copy.
    rows = text_data.sentiment_rows(70, seed=5)
    labelled = text_data.write_csv(tmp_path / "labelled.csv", rows)
    config.data.test_files = str(labelled)
    config.eval_split = "test"
    evaluated = lm.run(config, str(workdir), "eval")

    config.serving.input_files = str(labelled)
    config.serving.output = str(tmp_path / "predictions.jsonl")
    result = lm.run(config, str(workdir), "predict")
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert result["count"] == len(records) == 70
    assert [r["id"] for r in records] == [f"{labelled} line {n}" for n in range(2, 72)]
    assert [r["input"] for r in records] == [text for text, _ in rows]
    accuracy = np.mean([r["label"] == label for r, (_, label) in zip(records, rows)])
    assert accuracy == pytest.approx(evaluated["accuracy"], abs=1e-9)
    assert all(r["step"] == evaluated["step"] for r in records)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in records)


def test_predict_bad_rows_follow_the_policy_and_select_ranks_the_least_sure(text_run, tmp_path, caplog):
    config, workdir = text_run
    config = config.copy_and_resolve_references()  # The fixture's config is shared: change a copy.
    inputs = tmp_path / "unlabelled.jsonl"
    texts = [text for text, _ in text_data.sentiment_rows(12, seed=9)]
    lines = [json.dumps({"text": t}) for t in texts[:5]] + [json.dumps({"text": "  "})]
    lines += [json.dumps({"text": t}) for t in texts[5:]]
    inputs.write_text("\n".join(lines) + "\n")
    config.data.text_field = "text"
    config.serving.input_files = str(inputs)
    config.serving.output = str(tmp_path / "out.jsonl")
    with pytest.raises(ValueError, match="line 6: the text is empty"):
        lm.run(config, str(workdir), "predict")
    config.on_bad_example = "skip"
    with caplog.at_level(logging.WARNING):
        assert lm.run(config, str(workdir), "predict")["count"] == 12
    assert "skipped 1 bad example(s) of config.serving.input_files" in caplog.text
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    probabilities = np.array([[r["probabilities"][n] for n in ("negative", "positive")] for r in records])

    (tmp_path / "done.txt").write_text(records[0]["id"] + "\n")
    config.serving.output = str(tmp_path / "selected.jsonl")
    config.serving.strategy, config.serving.top_k = "margin", 4
    config.serving.exclude_files, config.serving.label_studio = str(tmp_path / "done.txt"), True
    result = lm.run(config, str(workdir), "select")
    chosen = [json.loads(line) for line in (tmp_path / "selected.jsonl").read_text().splitlines()]
    margin = 1 - np.abs(probabilities[:, 0] - probabilities[:, 1])
    order = [i for i in np.argsort(-margin, kind="stable") if i != 0][:4]
    assert [c["id"] for c in chosen] == [records[i]["id"] for i in order]
    np.testing.assert_allclose([c["score"] for c in chosen], margin[order], rtol=1e-6)
    assert len(json.loads(pathlib.Path(result["label_studio"]).read_text())) == 4
    config.serving.strategy = "random"
    with pytest.raises(ValueError, match="least_confidence"):
        lm.run(config, str(workdir), "select")


def test_feedback_round_trip_teaches_the_next_fine_tuning(text_run, tmp_path, small_vocab):
    """serve -> :feedback lines -> fine-tune from the served workdir with them -> they are predicted as labelled."""
    config, workdir = text_run
    config = config.copy_and_resolve_references()  # The fixture's config is shared: change a copy.
    config.serving.port = 0
    config.serving.feedback_path = str(tmp_path / "feedback.jsonl")
    model_server = serve.build(config, str(workdir))
    thread = threading.Thread(target=model_server.serve_forever, daemon=True)
    thread.start()
    taught = {"fine fine movie": "positive", "fine fine story": "positive", ". . . movie": "negative",
              ". . . story": "negative"}
    try:
        connection = http.client.HTTPConnection(*model_server.address, timeout=60)
        connection.request("POST", f"/v1/models/{model_server.servable.name}:predict",
                           body=json.dumps({"instances": list(taught)}), headers={"Content-Type": "application/json"})
        predicted = json.loads(connection.getresponse().read())["predictions"]
        instances = [{"prediction_id": p["prediction_id"], "label": label}
                     for p, label in zip(predicted, taught.values())]
        connection.request("POST", f"/v1/models/{model_server.servable.name}:feedback",
                           body=json.dumps({"instances": instances}), headers={"Content-Type": "application/json"})
        assert connection.getresponse().status == 200
    finally:
        model_server.drain_and_stop()
        thread.join(10)
    lines = [json.loads(line) for line in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert lines == [{"review": text, "sentiment": label} for text, label in taught.items()]

    old = config.data.train_files
    fine_tune = files_config(small_vocab, old, num_train_steps=40, eval_every=40, checkpoint_every=40, log_every=20,
                             **{"optimizer.learning_rate": 2e-3, "optimizer.warmup_steps": 4,
                                "data.train_files": ",".join([old] + [str(tmp_path / "feedback.jsonl")] * 8)})
    fine_tune.init_from = str(workdir)
    lm.run(fine_tune, str(tmp_path / "tuned"), "train")
    probabilities = jax_probabilities(tmp_path / "tuned", list(taught))
    assert [("negative", "positive")[i] for i in probabilities.argmax(1)] == list(taught.values())
