"""Active-learning selection scores and ranking, and the drift statistics, against hand-computed numpy."""

import json
import logging
import os

import ml_collections
import numpy as np
import pytest

import lm
from configs import bert_sentiment
from lm.serving import monitor, predict, select

P = np.array([
    [0.50, 0.30, 0.20],
    [0.90, 0.05, 0.05],
    [0.40, 0.40, 0.20],
    [0.34, 0.33, 0.33],
    [0.50, 0.30, 0.20],  # Same as row 0: a tie.
    [1.00, 0.00, 0.00],
])


def test_scores_equal_hand_computed_values():
    np.testing.assert_allclose(select.scores(P, "least_confidence"), [0.5, 0.1, 0.6, 0.66, 0.5, 0.0])
    np.testing.assert_allclose(select.scores(P, "margin"), [0.8, 0.15, 1.0, 0.99, 0.8, 0.0])
    entropy = [-sum(p * np.log(p) for p in row if p > 0) for row in P]
    np.testing.assert_allclose(select.scores(P, "entropy"), entropy)
    assert select.scores(P, "entropy")[5] == 0.0  # 0 log 0 = 0, not NaN.


def test_ranking_is_most_uncertain_first_with_stable_ties_and_exclusions():
    assert select.rank(P, "least_confidence", 6).tolist() == [3, 2, 0, 4, 1, 5]
    assert select.rank(P, "margin", 3).tolist() == [2, 3, 0]
    exclude = np.array([False, False, True, False, False, False])
    assert select.rank(P, "least_confidence", 3, exclude).tolist() == [3, 0, 4]


def test_selection_records_carry_score_strategy_rank_and_skip_labelled_ids(tmp_path):
    predictions = [{"id": f"f.csv:{i + 2}", "input": f"text {i}", "label": "a", "step": 10} for i in range(len(P))]
    (tmp_path / "done.jsonl").write_text(json.dumps({"id": "f.csv:5"}) + "\n")
    (tmp_path / "done.txt").write_text("f.csv:4\n\n")
    labelled = select.read_labelled_ids([str(tmp_path / "done.jsonl"), str(tmp_path / "done.txt")])
    assert labelled == {"f.csv:5", "f.csv:4"}
    exclude = select.excluded_rows([p["id"] for p in predictions], labelled)
    records = select.selection_records(predictions, P, "entropy", 10, exclude)
    assert [r["id"] for r in records] == ["f.csv:2", "f.csv:6", "f.csv:3", "f.csv:7"]
    assert [r["rank"] for r in records] == [1, 2, 3, 4]
    assert records[0]["strategy"] == "entropy" and records[0]["score"] == pytest.approx(select.scores(P, "entropy")[0])
    task = select.label_studio_task(records[0], ("a", "b", "c"), "text")
    assert task["data"] == {"text": "text 0", "id": "f.csv:2"}
    assert task["predictions"][0]["result"][0]["value"] == {"choices": ["a"]}


def test_a_missing_labelled_ids_file_names_its_key_and_value():
    with pytest.raises(FileNotFoundError, match=r"config\.serving\.exclude_files: .*'/missing\.txt' does not exist"):
        select.read_labelled_ids(["/missing.txt"])


def test_input_ids_hold_absolute_paths_however_the_input_file_is_spelt(tmp_path, monkeypatch):
    (tmp_path / "pool.tsv").write_text("text\nfirst\nsecond\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    config = ml_collections.ConfigDict({"serving": {"input_files": "../pool.tsv"}, "on_bad_example": "error",
                                        "data": {"text_field": "text", "encoding": "utf-8"}})
    rows = predict.read_inputs(config)
    assert rows == [(f"{tmp_path}/pool.tsv line 2", "first"), (f"{tmp_path}/pool.tsv line 3", "second")]


def test_a_missing_input_file_names_the_serving_key():
    config = ml_collections.ConfigDict({"serving": {"input_files": "/missing.csv"}, "on_bad_example": "error",
                                        "data": {"text_field": "text", "encoding": "utf-8"}})
    with pytest.raises(FileNotFoundError, match=r"^config\.serving\.input_files='/missing\.csv': .* matches no file"):
        predict.read_inputs(config)


def test_labelled_ids_match_inputs_however_the_path_is_spelt_and_the_matches_are_counted(tmp_path, monkeypatch,
                                                                                         caplog):
    """An id written with a relative path (or before ids were absolute) matches from the directory it is read in;
    the log says how many labelled ids matched and names one that did not."""
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    inputs = [f"{tmp_path}/pool.tsv line {n}" for n in (2, 3, 4)]
    labelled = {"../pool.tsv line 3", f"{tmp_path}/sub/../pool.tsv line 4", "pool.tsv line 2", "other.tsv line 2"}
    with caplog.at_level(logging.INFO, logger="lm.serving.select"):
        exclude = select.excluded_rows(inputs, labelled)
    assert exclude.tolist() == [False, True, True]
    assert "excluded 2 of 4 labelled ids; 2 match no input id, e.g. 'other.tsv line 2'" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_labelled_ids_that_match_no_input_are_a_warning_showing_both_spellings(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    inputs = ["/data/pool.tsv line 2", "/data/pool.tsv line 3"]
    with caplog.at_level(logging.INFO, logger="lm.serving.select"):
        exclude = select.excluded_rows(inputs, {"pool.tsv line 2", "pool.tsv line 3"})
    assert not exclude.any()
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    expected = (f"none of its 2 labelled ids matches an input id, so nothing is excluded: e.g. labelled "
                f"'pool.tsv line 2' (read as '{os.path.join(tmp_path, 'pool.tsv')} line 2'), input "
                "'/data/pool.tsv line 2'")
    assert expected in warning.getMessage()
    assert select.excluded_rows(inputs, set()).tolist() == [False, False]  # No exclude file: nothing logged.
    assert len(caplog.records) == 1


def test_unknown_strategy_and_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="least_confidence"):
        select.scores(P, "random")
    with pytest.raises(ValueError, match="shape"):
        select.scores(np.ones(3), "entropy")
    with pytest.raises(ValueError, match="positive"):
        select.rank(P, "margin", 0)


def test_psi_equals_the_formula_and_is_zero_for_equal_distributions():
    q = np.array([0.5, 0.3, 0.2])
    p = np.array([0.2, 0.3, 0.5])
    assert monitor.psi(q, p) == pytest.approx(np.sum((p - q) * np.log(p / q)))
    assert monitor.psi(q, q * 10) == pytest.approx(0.0)
    assert np.isfinite(monitor.psi(q, np.array([1.0, 0.0, 0.0])))


def test_drift_rises_when_live_predictions_move_away_from_the_reference(caplog):
    reference = monitor.reference_profile(np.array([[0.9, 0.1], [0.2, 0.8]] * 50))
    assert reference["class_distribution"] == [0.5, 0.5]
    metrics = monitor.ServingMetrics(("x", "y"), 8, reference=reference, drift_window=100, drift_threshold=0.25)
    metrics.observe_predictions(np.array([[0.9, 0.1], [0.2, 0.8]] * 10))
    assert metrics.drift()["class"] == pytest.approx(0.0)
    with caplog.at_level("WARNING"):
        metrics.observe_predictions(np.array([[0.6, 0.4]] * 100))
    assert metrics.drift()["class"] > 1.0 and metrics.drift()["confidence"] > 1.0
    assert "drift" in caplog.text.lower()


def test_an_output_that_cannot_be_written_fails_before_the_model_loads(loads, tmp_path):
    """config.serving.output of predict and select (and select's Label Studio file beside it) is checked at the
    start of the mode, not when the result is written after the model ran over every input."""
    config = bert_sentiment.get_config("files")
    (tmp_path / "pool.txt").write_text("a text to predict\n")
    config.serving.input_files = str(tmp_path / "pool.txt")
    workdir = tmp_path / "run"
    (workdir / "selection.jsonl").mkdir(parents=True)
    (tmp_path / "a_file").write_text("not a directory")
    fix = "Set --config.serving.output to a file in a directory you can write (a missing directory is created)."
    cases = [("predict", str(tmp_path), f"config.serving.output={str(tmp_path)!r}", "it is a directory"),
             ("predict", str(tmp_path / "a_file" / "out.jsonl"),
              f"config.serving.output={str(tmp_path / 'a_file' / 'out.jsonl')!r}", "a_file is not a directory"),
             ("select", "", f"config.serving.output='' (the default, {str(workdir / 'selection.jsonl')!r})",
              "it is a directory")]
    for mode, output, named, reason in cases:
        config.serving.output = output
        with pytest.raises(OSError) as raised:
            lm.run(config, str(workdir), mode)
        assert str(raised.value).startswith(f"{named} cannot be written: ") and str(raised.value).endswith(fix)
        assert reason in str(raised.value)
    config.serving.output, config.serving.label_studio = str(tmp_path / "picked.jsonl"), True
    (tmp_path / "picked_label_studio.json").mkdir()
    with pytest.raises(OSError, match=r"^the Label Studio tasks file .*picked_label_studio.json' \(config.serving."
                                      r"label_studio=True\) cannot be written: it is a directory\. Set --config"):
        lm.run(config, str(workdir), "select")
    assert not loads
    config.serving.label_studio = False
    (tmp_path / "out.jsonl").write_text("an earlier result")
    for mode, output in (("select", str(tmp_path / "picked.jsonl")), ("predict", str(tmp_path / "out.jsonl")),
                         ("predict", str(tmp_path / "new" / "folder" / "out.jsonl"))):
        config.serving.output = output
        with pytest.raises(RuntimeError, match="stop at the model"):
            lm.run(config, str(workdir), mode)
    assert [args[:2] for args in loads] == [(str(workdir), "7")] * 3  # The step chosen before the check.
    assert (tmp_path / "out.jsonl").read_text() == "an earlier result"  # Written only once the model ran.
    assert os.listdir(tmp_path / "new" / "folder") == []  # Created, as the writer would; the probe file removed.
    assert sorted(os.listdir(tmp_path)) == ["a_file", "new", "out.jsonl", "picked_label_studio.json", "pool.txt",
                                            "run"]


@pytest.mark.parametrize("mode", ["predict", "select"])
def test_missing_inputs_fail_before_the_model_loads(loads, tmp_path, monkeypatch, mode):
    """config.serving.input_files is read once the checkpoint is chosen, before it is restored (the run's
    config.json says whether the model reads text or images)."""
    from lm.serving import trained

    config = bert_sentiment.get_config("files")
    config.serving.output = str(tmp_path / "out.jsonl")
    with pytest.raises(ValueError, match="need config.serving.input_files"):
        lm.run(config, str(tmp_path), mode)
    config.serving.input_files = str(tmp_path / "missing.tsv")
    with pytest.raises(FileNotFoundError, match=r"^config\.serving\.input_files='.*missing\.tsv': .* matches no file"):
        lm.run(config, str(tmp_path), mode)
    monkeypatch.setattr(trained, "modality", lambda workdir: "image")
    config.serving.input_files = str(tmp_path / "no_images")
    with pytest.raises(FileNotFoundError, match=r"config\.serving\.input_files: .*no_images' matches no file"):
        lm.run(config, str(tmp_path), mode)
    assert not loads
