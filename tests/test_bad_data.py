"""Bad examples in the user's files: a clear error naming the file and row, or skipped and counted (on_bad_example)."""

import itertools
import logging

import numpy as np
import pytest
from PIL import Image

import lm
from input_pipeline.image_classification import ImageClassificationData
from input_pipeline.text_classification import TextClassificationData
from tests import text_data
from tests.test_image_pipeline import folder_config
from tests.test_text_pipeline import NAMES, make_config, make_rows, write
from tests.test_train import files_config

BAD_CSV = "\n".join([
    "text,label",
    "review 0 is great,positive",
    ",negative",  # line 3: empty text
    "review 2 is fine,neutral",  # line 4: unknown label
    "review 3 is great",  # line 5: no label field
    "   ,positive",  # line 6: blank text
    *[f"review {i} is {'great' if i % 2 else 'awful'},{NAMES[i % 2]}" for i in range(4, 24)],
]) + "\n"


@pytest.fixture
def bad_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_CSV)
    return path


@pytest.mark.parametrize(
    ("bad_row", "match"),
    [
        (",negative", r"bad.csv line 3: the text \('text'\) is empty"),
        ("review 2 is fine,neutral", r"bad.csv line 3: label 'neutral' is not in config.data.label_names"),
        ("review 3 is great", r"bad.csv line 3: the row has fewer fields than the header: no 'label'"),
    ],
)
def test_error_names_the_file_the_row_and_the_problem(tmp_path, minilm_vocab, bad_row, match):
    """One bad row (line 3): the error, raised before any batch, names the file, the line and what is wrong."""
    lines = BAD_CSV.splitlines()
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([lines[0], lines[1], bad_row, *lines[6:]]) + "\n")
    config = make_config(minilm_vocab, train_files=str(path), label_names=NAMES)
    with pytest.raises(ValueError, match=match) as error:
        TextClassificationData(config)
    assert "config.on_bad_example='skip'" in str(error.value)


def test_jsonl_bad_lines(tmp_path, minilm_vocab):
    path = tmp_path / "bad.jsonl"
    write(path, make_rows(20))
    lines = path.read_text().splitlines()
    lines[2] = '{"text": "no label here"}'
    lines[4] = "not json"
    lines[6] = '["a", "list"]'
    path.write_text("\n".join(lines) + "\n")
    config = make_config(minilm_vocab, train_files=str(path), label_names=NAMES)
    with pytest.raises(ValueError, match=r"bad.jsonl line 3: no column 'label' \(config.data.label_field\)"):
        TextClassificationData(config)
    config.on_bad_example = "skip"
    data = TextClassificationData(config)
    assert data.skipped_examples == {"train_files": 3}
    assert sum(data.num_examples(s) for s in ("train", "validation", "test")) == 17


def test_skip_counts_bad_rows_logs_once_and_serves_the_rest(bad_csv, minilm_vocab, caplog):
    config = make_config(minilm_vocab, train_files=str(bad_csv), label_names=NAMES)
    config.on_bad_example = "skip"
    with caplog.at_level(logging.WARNING):
        data = TextClassificationData(config)
    assert data.skipped_examples == {"train_files": 4}
    assert sum(data.num_examples(s) for s in ("train", "validation", "test")) == 21
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 4 bad example(s) of config.data.train_files" in warnings[0]
    assert f"{bad_csv} (4)" in warnings[0] and "line 3: the text" in warnings[0]
    assert len(list(itertools.islice(data.train_iterator(), 8))) == 8
    assert sum(b["weight"].sum() for b in data.eval_batches("test")) == data.num_examples("test")
    # Other hosts count the same rows but do not log them again.
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        assert TextClassificationData(config, process_index=1, process_count=2).skipped_examples == {
            "train_files": 4
        }
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]


def test_all_rows_bad_is_an_error_that_says_so(tmp_path, minilm_vocab):
    path = tmp_path / "all_bad.csv"
    path.write_text("text,label\n,positive\nabc,neutral\n")
    config = make_config(minilm_vocab, train_files=str(path), label_names=NAMES)
    config.on_bad_example = "skip"
    with pytest.raises(ValueError, match=r"the files hold no examples \(2 bad example\(s\) were skipped\)"):
        TextClassificationData(config)


def test_unknown_policy_is_a_config_error(tmp_path, minilm_vocab, small_vocab):
    config = make_config(minilm_vocab, train_files=write(tmp_path / "t.csv", make_rows(20)), label_names=NAMES)
    config.on_bad_example = "ignore"
    with pytest.raises(ValueError, match=r"config.on_bad_example='ignore': use 'error' .* or 'skip'"):
        TextClassificationData(config)
    csv_path = text_data.write_csv(tmp_path / "reviews.csv", text_data.sentiment_rows(64))
    with pytest.raises(ValueError, match=r"config.on_bad_example='drop'"):
        lm.run(files_config(small_vocab, csv_path, on_bad_example="drop"), str(tmp_path / "run"), "train")


def test_training_skips_bad_rows_and_evaluates(tmp_path, small_vocab):
    rows = text_data.sentiment_rows(120)
    path = text_data.write_csv(tmp_path / "reviews.csv", rows)
    with path.open("a") as f:
        f.write(",positive\nthe movie was great,meh\nonly text\n")
    config = files_config(small_vocab, path, num_train_steps=2, eval_every=2, checkpoint_every=2)
    with pytest.raises(ValueError, match=r"reviews.csv line 122: the text \('review'\) is empty"):
        lm.run(config, str(tmp_path / "error"), "train")
    config.on_bad_example = "skip"
    result = lm.run(config, str(tmp_path / "skip"), "train")
    assert result["test"]["num_examples"] == 12 and result["test"]["step"] == 2


# ----------------------------------------------------------------------------------------------------
# Image folders.


@pytest.fixture
def broken_folder(tmp_path):
    """2 classes x 6 images; cat/02.png is truncated, dog/03.jpg is not an image at all."""
    root = tmp_path / "images"
    for k, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for j in range(6):
            image = Image.new("RGB", (12, 12), (40 * k + 10 * j,) * 3)
            image.save(root / name / f"{j:02d}.{'jpg' if j % 2 else 'png'}")
    png = (root / "cat" / "02.png").read_bytes()
    (root / "cat" / "02.png").write_bytes(png[: len(png) // 2])
    (root / "dog" / "03.jpg").write_text("this is not a JPEG")
    return root


def test_broken_image_names_the_file(broken_folder):
    config = folder_config(broken_folder, validation_fraction=0.2, test_fraction=0.2)
    config.model.num_classes = 2
    with pytest.raises(ValueError, match=r"images/cat/02.png: the image does not decode \(.+\)") as error:
        ImageClassificationData(config)
    assert "Traceback" not in str(error.value) and "config.on_bad_example='skip'" in str(error.value)


def test_broken_images_are_skipped_and_counted(broken_folder, caplog):
    config = folder_config(broken_folder, validation_fraction=0.2, test_fraction=0.2)
    config.model.num_classes = 2
    config.on_bad_example = "skip"
    config.global_batch_size = 2
    with caplog.at_level(logging.WARNING):
        data = ImageClassificationData(config)
    assert data.skipped_examples == {"train_dir": 2}
    assert sum(data.num_examples(s) for s in ("train", "validation", "test")) == 10
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "cat/02.png (1)" in warnings[0] and "dog/03.jpg (1)" in warnings[0]
    # Two epochs of training batches and every eval split decode: the broken files are gone.
    batches = list(itertools.islice(data.train_iterator(), 2 * data.steps_per_epoch))
    assert all(np.isfinite(b["image"]).all() for b in batches)
    for split in ("validation", "test"):
        assert sum(b["weight"].sum() for b in data.eval_batches(split)) == data.num_examples(split)
